"""Strangers as first-class (issue 15 part 2) and explainable decisions (part 4), on the real
models (det_500m + w600k_mbf_fp32) and the real photos of faces/people."""

import itertools

import numpy as np
import pytest

from facefleet.config import PipelineConfig
from facefleet.errors import FacefleetError
from facefleet.events import StatusEvent, to_json
from facefleet.recognition.gallery import Gallery
from facefleet.recognition.loader import gallery_index
from facefleet.recognition.pipeline import FacePipeline
from facefleet.recognition.strangers import StrangerBook, UnknownsConfig
from facefleet.sources import open_source


@pytest.fixture
def rec(load_recognizer):
    return load_recognizer("w600k_mbf_fp32")


def _gallery(tmp_path, people, names):
    """One photo enrolled per named identity (the first of each)."""
    labels, crops = people
    g = Gallery.open(tmp_path / "g", create=True)
    for n in names:
        g.add(n, [crops[int(np.flatnonzero(labels == n)[0])]])
    return g


def _largest(events):
    return max(events, key=lambda e: e.quality.face_px) if events else None


def _run(p, assets, person, skip=0, stop=None):
    """The largest face's event of each photo of ``person`` (stills)."""
    out = []
    for frame in itertools.islice(open_source(str(assets / "faces" / "people" / person)), skip, stop):
        out.append(_largest(p.process(frame)))
    return out


def _pipeline(g, rec, load_detector, **unknowns):
    cfg = PipelineConfig(device="t", unknowns=UnknownsConfig(**unknowns))
    return FacePipeline(load_detector(), rec, gallery_index(g, rec), cfg)


def test_one_stranger_seen_five_times_is_one_id_with_a_count(tmp_path, people, rec, load_detector, assets):
    p = _pipeline(_gallery(tmp_path, people, ["id00", "id07"]), rec, load_detector)
    seen = _run(p, assets, "id04")  # 5 photos of someone not enrolled
    assert len(seen) == 5 and all(e.decision == "unknown" for e in seen)
    assert len({e.unknown_id for e in seen}) == 1 and seen[0].unknown_id
    assert [e.unknown_count for e in seen] == [1, 2, 3, 4, 5]
    other = _run(p, assets, "id10")
    assert {e.unknown_id for e in other}.isdisjoint({seen[0].unknown_id}) and len({e.unknown_id for e in other}) == 1
    assert len(p.strangers) == 2
    # identified events carry no stranger id
    named = _run(p, assets, "id00", skip=1)
    assert named and all(e.identity == "id00" and e.unknown_id is None for e in named)


def test_memory_is_bounded_lru_and_keeps_no_image_by_default(people, rec):
    labels, crops = people
    people_emb = {n: rec.embed(crops[labels == n][:1])[0][0] for n in ("id04", "id05", "id06")}
    book = StrangerBook(UnknownsConfig(max_clusters=2), threshold=0.3, fingerprint=rec.fingerprint)
    a = book.observe(people_emb["id04"], "cam", crops[labels == "id04"][0])
    b = book.observe(people_emb["id05"], "cam")
    assert book.observe(people_emb["id04"], "cam").unknown_id == a.unknown_id  # id04 is now the most recent
    book.observe(people_emb["id06"], "cam")
    assert len(book) == 2 and book.evicted == 1
    ids = [s["unknown_id"] for s in book.list()]
    assert a.unknown_id in ids and b.unknown_id not in ids  # the least recently seen went
    assert all(s["crops"] == 0 for s in book.list())  # keep_crops off: no image
    with pytest.raises(FacefleetError, match="no kept crops"):
        book.promote(a.unknown_id, None, "x")
    book.use_space("another-model", 0.3)  # a recognizer swap: other embedding space
    assert len(book) == 0


def test_promote_a_stranger_to_a_named_identity(tmp_path, people, rec, load_detector, assets):
    g = _gallery(tmp_path, people, ["id00"])
    p = _pipeline(g, rec, load_detector, keep_crops=True, max_crops=2)
    seen = _run(p, assets, "id08", stop=3)
    uid = seen[0].unknown_id
    assert all(e.unknown_id == uid for e in seen)
    assert p.strangers.get(uid).count == 3 and len(p.strangers.get(uid).crops) == 2  # bounded
    assert p.strangers.promote(uid, g, "visitor-1") == "visitor-1"
    assert "visitor-1" in g and len(g.crop_files("visitor-1")) == 2 and len(p.strangers) == 0
    p.set_models(p.detector, rec, gallery_index(g, rec))  # what the component does after a gallery change
    later = _run(p, assets, "id08", skip=3)
    assert later and all(e.decision == "identified" and e.identity == "visitor-1" for e in later)
    with pytest.raises(FacefleetError, match="no stranger"):
        p.strangers.promote(uid, g, "again")


def _all_events(p, assets, person):
    return [e for frame in open_source(str(assets / "faces" / "people" / person)) for e in p.process(frame)]


def test_promote_to_ignore_raises_no_more_events(tmp_path, people, rec, load_detector, assets):
    g = _gallery(tmp_path, people, ["id00"])
    p = _pipeline(g, rec, load_detector, keep_crops=True, max_crops=8)
    first = _all_events(p, assets, "id09")  # 6 photos; one has two bystanders
    uid = first[0].unknown_id
    faces = {(e.source_name, round(e.quality.face_px)) for e in first if e.unknown_id == uid}
    assert len(faces) == 6 and len(first) == 8
    p.strangers.promote(uid, g, "poster-lobby", ignore=True)
    assert g.ignored() == {"poster-lobby"}
    with pytest.raises(FacefleetError, match="already enrolled as an ignore anchor"):
        g.add("poster-lobby", [people[1][0]])  # an anchor never silently becomes a person
    p.set_models(p.detector, rec, gallery_index(g, rec))
    again = _all_events(p, assets, "id09")
    assert len(again) == 2 and not faces & {(e.source_name, round(e.quality.face_px)) for e in again}
    assert all(e.decision == "unknown" for e in again)  # the bystanders are still reported
    assert p.face_stats.snapshot().ignored_tracks == 6
    assert _run(p, assets, "id00", skip=1)[0].identity == "id00"  # everyone else as before


def test_config_ignore_list_is_a_negative_anchor(tmp_path, people, rec, load_detector, assets):
    g = _gallery(tmp_path, people, ["id00", "id07"])
    p = _pipeline(g, rec, load_detector, ignore=["id07"])
    assert _run(p, assets, "id07", skip=1) == [None] * 7
    assert all(e.identity == "id00" for e in _run(p, assets, "id00", skip=1))


def test_events_carry_the_margin_over_the_runner_up(tmp_path, people, rec, load_detector, assets):
    g = _gallery(tmp_path, people, ["id00", "id07", "id08"])
    p = _pipeline(g, rec, load_detector)
    labels, crops = people
    events = _run(p, assets, "id00", skip=1) + _run(p, assets, "id05")
    queries = np.concatenate([crops[labels == "id00"][1:], crops[labels == "id05"]])
    emb, _ = rec.embed(queries)
    sims = emb @ p.index.templates.T  # recomputed apart from the pipeline: photo crop vs each identity
    assert len(events) == len(sims)
    for e, row in zip(events, sims, strict=True):
        top = e.identity or e.best_candidate.identity
        runner_up = max(s for n, s in zip(p.index.names, row, strict=True) if n != top)
        assert e.margin == pytest.approx(row[p.index.names.index(top)] - runner_up, abs=2e-3)
    assert {e.decision for e in events} == {"identified", "unknown"}
    one = _gallery(tmp_path / "one", people, ["id00"])
    p1 = _pipeline(one, rec, load_detector)
    assert all(e.margin is None for e in _run(p1, assets, "id00", skip=1))  # no runner-up


@pytest.mark.parametrize(("recognition", "reason"), [
    ({"min_face_px": 10_000}, "too_small"),
    ({"min_sharpness": 1e9}, "too_blurred"),
    ({"pre_norm_gate": 1e9}, "below_pre_norm_gate"),
    ({}, "usable"),
])
def test_frames_with_no_usable_face_are_counted_by_reason(tmp_path, people, rec, load_detector, assets, recognition, reason):
    g = _gallery(tmp_path, people, ["id00"])
    cfg = PipelineConfig(device="t", recognition=recognition)
    p = FacePipeline(load_detector(), rec, gallery_index(g, rec), cfg)
    for frame in open_source(str(assets / "faces" / "people" / "id07")):
        p.process(frame)
    snap = p.face_stats.snapshot(reset=True)
    assert snap.frames == 8 and snap.no_face == 0
    assert getattr(snap, reason) == 8
    assert snap.unusable_share == (0.0 if reason == "usable" else 1.0)
    assert p.face_stats.snapshot().frames == 0  # reset starts a new interval
    # what a status event carries, per camera
    status = StatusEvent(fps={"cam0": 1.0}, stage_ms={}, models=p.models, gallery_identities=1,
                         face_usability={"cam0": snap})
    assert f'"{reason}":8' in to_json(status).replace(" ", "")


def test_ignore_anchors_survive_a_gallery_archive(tmp_path, people):
    """A packed gallery ships its anchors as anchors: a poster never becomes a person elsewhere."""
    _, crops = people
    g = Gallery.open(tmp_path / "a", create=True)
    g.add("alice", [crops[0]])
    g.add("poster-lobby", [crops[-1]], ignore=True)
    g.export_archive(tmp_path / "g.tar.gz")
    other = Gallery.open(tmp_path / "b", create=True)
    other.merge_archive(tmp_path / "g.tar.gz")
    assert other.names() == ["alice", "poster-lobby"] and other.ignored() == {"poster-lobby"}


def test_a_sighting_from_another_recognizer_space_is_not_clustered():
    """Cameras sharing a book switch recognizers one frame apart during a swap: a 512-d sighting
    must never meet 128-d centroids (it crashed every camera's frame with a matmul error)."""
    book = StrangerBook(UnknownsConfig(), 0.5)
    book.use_space("new-128", 0.5)
    first = book.observe(np.ones(128, np.float32), "a", fingerprint="new-128")
    late = book.observe(np.ones(512, np.float32), "b", fingerprint="old-512")  # camera b still on the old model
    assert late.unknown_id != first.unknown_id and len(book) == 1
    again = book.observe(np.ones(128, np.float32), "a", fingerprint="new-128")
    assert again.unknown_id == first.unknown_id and again.count == 2


def test_poor_sightings_are_not_clustered_into_one_stranger(tmp_path, people, rec, load_detector, assets):
    """Low-quality faces embed close to one another whoever they are: in the Hamilton clip eight
    different small, blurred unknowns all joined one stranger. Below ``unknowns.min_quality`` of
    the model's pre_norm_ref a track gets no unknown_id; good sightings still cluster."""
    p = _pipeline(_gallery(tmp_path, people, ["id00", "id07"]), rec, load_detector, min_quality=10.0)  # nothing is good enough
    seen = _run(p, assets, "id04")
    assert len(seen) == 5 and all(e.decision == "unknown" and e.unknown_id is None for e in seen)
    assert len(p.strangers) == 0
    p = _pipeline(_gallery(tmp_path / "b", people, ["id00", "id07"]), rec, load_detector)  # the default gate
    seen = _run(p, assets, "id04")
    assert all(e.quality.pre_norm >= 0.75 * rec.rec.pre_norm_ref for e in seen) and len({e.unknown_id for e in seen}) == 1

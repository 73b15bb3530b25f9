"""End to end on the real clip and photos, default models (det_500m + w600k_mbf_fp32)."""

from collections import Counter

import pytest

from facefleet.events import MatchEvent
from facefleet.recognition.gallery import Gallery
from facefleet.recognition.loader import enroll_images, gallery_index
from facefleet.recognition.pipeline import FacePipeline
from facefleet.sources import Frame, open_source


@pytest.fixture(scope="session")
def clip_gallery(tmp_path_factory, assets, load_detector):
    g = Gallery.open(tmp_path_factory.mktemp("clip") / "gallery", create=True)
    for photo in sorted((assets / "enroll").iterdir()):
        enroll_images(g, load_detector(), photo.stem, [photo])
    return g


@pytest.fixture(scope="session")
def clip_run(clip_gallery, clip_frames, load_detector, load_recognizer):
    from facefleet.config import PipelineConfig

    rec = load_recognizer("w600k_mbf_fp32")
    p = FacePipeline(load_detector("det_500m"), rec, gallery_index(clip_gallery, rec), PipelineConfig(device="t"))
    events = []
    for i, img in enumerate(clip_frames):
        events += p.process(Frame(i, img, i * 40.0))
    events += p.flush()
    return p, events


def test_clip_identifies_miranda_and_obama(clip_run):
    _, events = clip_run
    assert all(isinstance(e, MatchEvent) for e in events)
    named = [e for e in events if e.decision == "identified"]
    assert {e.identity for e in named} == {"lin-manuel-miranda", "obama"}  # nobody else is named
    obama = [e for e in named if e.identity == "obama"]
    assert obama and all(190 <= e.first_frame <= e.frame_index <= 260 for e in obama)
    for e in named:
        assert e.similarity >= e.threshold and e.quality.evidence_frames >= 1
        assert e.models.recognizer == "c4c390b65477ed53" and e.models.detector == "5e4447f50245bbd7"


def test_each_track_announced_once_unknowns_per_track(clip_run):
    p, events = clip_run
    per_track = Counter(e.track_id for e in events)
    assert per_track and max(per_track.values()) == 1
    unknown = [e for e in events if e.decision == "unknown"]
    assert unknown and all(e.identity is None for e in unknown)
    assert len(unknown) < p.counters.frames / 5  # per track, not per frame


def test_confirmed_tracks_are_not_embedded_every_frame(clip_run):
    p, _ = clip_run
    c = p.counters
    assert c.frames == 275 and c.faces > 400
    assert c.embedded < 0.5 * c.faces
    assert c.recognizer_calls <= c.frames  # at most one batched call per frame


def test_photos_are_stills_every_face_decided(assets, clip_gallery, load_detector, load_recognizer, cfg):
    rec = load_recognizer("w600k_mbf_fp32")
    p = FacePipeline(load_detector(), rec, gallery_index(clip_gallery, rec), cfg)
    source = open_source(str(assets / "faces"))
    per_photo: dict[str, list] = {}
    for frame in source:
        assert frame.still
        per_photo[frame.name] = p.process(frame)
    assert p.flush() == []  # stills leave no open tracks
    assert len(per_photo["selfie-many-people.jpg"]) == 6
    assert len(per_photo["couple.jpg"]) == 2
    assert len(per_photo) == 64  # 61 people photos + 3 scenes
    # every photo is its own scene: track ids never repeat across photos
    ids = [e.track_id for evs in per_photo.values() for e in evs]
    assert len(ids) == len(set(ids))
    # nobody in faces/ is Miranda or Obama
    assert all(e.decision == "unknown" for evs in per_photo.values() for e in evs)


def test_people_as_stills_identify_against_a_gallery(tmp_path, people, load_detector, load_recognizer, cfg, assets):
    """Enroll one photo per identity; every other photo of faces/people is identified correctly."""
    labels, crops = people
    g = Gallery.open(tmp_path / "g", create=True)
    first = {}
    for i, lab in enumerate(labels):
        first.setdefault(lab, i)
    for lab, i in first.items():
        g.add(lab, [crops[i]])
    rec = load_recognizer("w600k_mbf_fp32")
    p = FacePipeline(load_detector(), rec, gallery_index(g, rec), cfg)
    wrong = 0
    for frame in open_source(str(assets / "faces" / "people")):
        events = p.process(frame)
        truth = frame.name.split("/")[0]
        best = max(events, key=lambda e: e.quality.face_px)
        wrong += best.identity not in (truth, None)
        assert all(e.identity in (truth, None) for e in events)  # never a false accept
    assert wrong == 0


def test_shot_cuts_end_tracks(clip_frames, clip_run):
    """The clip cuts at frames 20, 82 and 211; a track never spans one."""
    from facefleet.vision.scene import CutDetector

    det = CutDetector(20.0)
    cuts = [i for i, f in enumerate(clip_frames) if det.is_cut(f)]
    assert cuts == [20, 82, 211]
    p, events = clip_run
    assert p.cut_count == 3
    for e in events:
        assert not any(e.first_frame < c <= e.last_frame for c in cuts)
    assert not CutDetector(0).is_cut(clip_frames[0]) and not CutDetector(0).is_cut(clip_frames[20])


def test_new_recognizer_restarts_open_evidence(clip_gallery, clip_frames, load_detector, load_recognizer, cfg):
    """After a swap to another embedding space (512-d -> 128-d) open tracks keep their boxes but
    collect evidence anew: old and new embeddings never mix."""
    w600k, mfn = load_recognizer("w600k_mbf_fp32"), load_recognizer("mobilefacenet_128")
    p = FacePipeline(load_detector(), w600k, gallery_index(clip_gallery, w600k), cfg)
    for i in range(215, 218):
        p.process(Frame(i, clip_frames[i], None))
    open_ids = {t.id for t in p.tracker.open_tracks()}
    assert any(t.evidence_frames for t in p.tracker.open_tracks())
    p.set_models(p.detector, mfn, gallery_index(clip_gallery, mfn))
    assert all(t.evidence is None and t.evidence_frames == 0 for t in p.tracker.open_tracks())
    events = []
    for i in range(218, 240):
        events += p.process(Frame(i, clip_frames[i], None))
    assert {t.id for t in p.tracker.open_tracks()} & open_ids  # the same tracks continue
    assert all(t.evidence is None or t.evidence.shape == (128,) for t in p.tracker.open_tracks())
    assert all(e.models.recognizer == mfn.fingerprint for e in events)

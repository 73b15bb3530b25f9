"""The foundation's end-to-end clip run, through the Hailo backend (double): only the backend differs."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from facefleet.config import PipelineConfig
from facefleet.events import MatchEvent
from facefleet.modelspec import resolve_model
from facefleet.recognition.gallery import Gallery
from facefleet.recognition.loader import enroll_images, gallery_index, load_models
from facefleet.recognition.pipeline import FacePipeline
from facefleet.runtime.hailo import HailoBackend
from facefleet.sources import Frame


@pytest.fixture(scope="module")
def hailo_clip(tmp_path_factory, hefs, assets, clip_frames):
    """One backend (one VDevice) for the module; the gallery is enrolled through the Hailo models too."""
    backend = HailoBackend()
    cfg = PipelineConfig(device="t")
    pair = load_models(backend, cfg, hefs["det"], hefs["rec"])
    g = Gallery.open(tmp_path_factory.mktemp("hailo_clip") / "gallery", create=True)
    for photo in sorted((assets / "enroll").iterdir()):
        enroll_images(g, pair.detector, photo.stem, [photo])
    index = gallery_index(g, pair.recognizer)
    p = FacePipeline(pair.detector, pair.recognizer, index, cfg)
    events = []
    for i, img in enumerate(clip_frames):
        events += p.process(Frame(i, img, i * 40.0))
    events += p.flush()
    yield backend, pair, index, p, events
    backend.close()


def test_clip_identifies_miranda_and_obama_on_hailo(hailo_clip, hefs):
    _, pair, _, p, events = hailo_clip
    assert all(isinstance(e, MatchEvent) for e in events)
    named = [e for e in events if e.decision == "identified"]
    assert {e.identity for e in named} == {"lin-manuel-miranda", "obama"}  # nobody else is named
    obama = [e for e in named if e.identity == "obama"]
    assert obama and all(190 <= e.first_frame <= e.frame_index <= 260 for e in obama)
    for e in named:
        assert e.similarity >= e.threshold and e.quality.evidence_frames >= 1
    # the events name the HEFs, not the ONNX twins
    assert e.models.detector == resolve_model(hefs["det"]).spec.fingerprint
    assert e.models.recognizer == resolve_model(hefs["rec"]).spec.fingerprint
    per_track = Counter(e.track_id for e in events)
    assert per_track and max(per_track.values()) == 1  # each track announced once
    assert p.counters.recognizer_calls <= p.counters.frames  # one batched call per frame at most
    assert pair.detector.model.calls >= p.counters.frames and pair.detector.model.infer_seconds > 0


def test_two_cameras_share_one_vdevice(hailo_clip, hefs, clip_frames):
    """Two cameras, each with its own pipeline, in two threads, on the one backend."""
    backend, _, index, _, _ = hailo_clip
    before = backend.vdevice
    configured = len(before.loaded_network_groups)
    cfg = PipelineConfig(device="t")
    cams = [load_models(backend, cfg, hefs["det"], hefs["rec"]) for _ in range(2)]
    assert backend.vdevice is before and len(before.loaded_network_groups) == configured  # shared, not reconfigured
    frames = clip_frames[200:240]
    results: dict[int, list] = {}

    def camera(k: int) -> None:
        p = FacePipeline(cams[k].detector, cams[k].recognizer, index, cfg.model_copy(update={"camera_id": f"cam{k}"}))
        ev = []
        for i, img in enumerate(frames):
            ev += p.process(Frame(200 + i, img, (200 + i) * 40.0))
        results[k] = ev + p.flush()

    threads = [threading.Thread(target=camera, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    # same frames, same models: both cameras see the same people (their requests did not mix)
    key = [sorted((e.identity or "", e.first_frame) for e in results[k]) for k in range(2)]
    assert key[0] == key[1] and any(e.identity == "obama" for e in results[0])
    for pair in cams:
        pair.close()
    assert backend.vdevice is before and len(before.loaded_network_groups) == configured  # the module's pair still holds them

"""Issue 13 item 3: cameras process in parallel (no process-wide lock around frames); a model
swap under load switches each camera between two of its frames, never within one."""

from __future__ import annotations

import threading

from facefleet.recognition.models import Detector, Recognizer
from facefleet.recognition.pipeline import FacePipeline

from .helpers import MBF128, base_config, make_gallery, video_camera, wait_until


def test_a_camera_blocked_in_inference_does_not_stop_the_other(tmp_path, greengrass, assets, load_detector, monkeypatch):
    make_gallery(tmp_path, assets, load_detector())
    inside, release = threading.Event(), threading.Event()
    real = Detector.detect

    def detect(self, *a, **k):  # the device never answers camera a's frame (until released)
        if threading.current_thread().name == "camera-a":
            inside.set()
            release.wait(120)
        return real(self, *a, **k)

    monkeypatch.setattr(Detector, "detect", detect)
    cfg = base_config(assets, cameras=[video_camera(assets, cam_id="a"), video_camera(assets, cam_id="b")])
    comp, _ = greengrass(cfg)
    try:
        a, b = comp.cameras["a"], comp.cameras["b"]
        assert inside.wait(60)
        # with one lock around every camera's frame, b would wait for a's frame forever
        assert wait_until(lambda: b.frames >= 10, 120), f"camera b processed {b.frames} frames while a was blocked"
        assert a.frames == 0
        status = comp.status({})
        assert status.cameras["b"].processed >= 10 and status.cameras["b"].decoded >= status.cameras["b"].processed
        assert status.cameras["a"].processed == 0 and status.cameras["b"].latency_ms_p99 is not None
        release.set()
        assert wait_until(lambda: a.frames >= 5, 120)
    finally:
        release.set()
        comp.stop()


def test_a_swap_under_load_never_mixes_models_within_a_frame(tmp_path, greengrass, assets, load_detector, long_video,
                                                              monkeypatch):
    make_gallery(tmp_path, assets, load_detector())
    local = threading.local()
    frames: list[tuple[str, set, set, int, int]] = []
    real_process, real_detect, real_embed = FacePipeline.process, Detector.detect, Recognizer.embed

    def process(self, frame):
        local.seen = (set(), set())
        start = (id(self.detector.model), id(self.recognizer))
        try:
            return real_process(self, frame)
        finally:
            frames.append((self.camera_id, local.seen[0], local.seen[1], *start))
            del local.seen

    def detect(self, *a, **k):
        if getattr(local, "seen", None) is not None:
            local.seen[0].add(id(self.model))
        return real_detect(self, *a, **k)

    def embed(self, crops):
        if getattr(local, "seen", None) is not None:
            local.seen[1].add(id(self))
        return real_embed(self, crops)

    monkeypatch.setattr(FacePipeline, "process", process)
    monkeypatch.setattr(Detector, "detect", detect)
    monkeypatch.setattr(Recognizer, "embed", embed)
    cams = [{"id": c, "source": str(long_video), "detect_fps": None} for c in ("a", "b")]
    cfg = base_config(assets, cameras=cams)
    comp, nucleus = greengrass(cfg)
    try:
        old = comp.models  # held: the ids below stay unique
        assert wait_until(lambda: all(w.frames >= 10 for w in comp.cameras.values()), 120)
        new_cfg = dict(cfg, models=dict(cfg["models"], recognizer=MBF128))
        assert nucleus.push_validation(new_cfg).status == "ACCEPTED"
        nucleus.set_configuration(new_cfg)
        assert wait_until(lambda: comp.models is not old, 120)
        new = comp.models
        marks = {c: w.frames for c, w in comp.cameras.items()}
        assert wait_until(lambda: all(w.frames >= marks[c] + 10 for c, w in comp.cameras.items()), 120)
    finally:
        comp.stop()
    pairs = {(id(old.detector.model), id(old.recognizer)): "old", (id(new.detector.model), id(new.recognizer)): "new"}
    seen = {"a": set(), "b": set()}
    for cam, dets, recs, det0, rec0 in frames:
        assert (det0, rec0) in pairs, "a frame started on a pair that was never served"
        assert dets <= {det0} and recs <= {rec0}, f"camera {cam}: a frame ran on two models"
        seen[cam].add(pairs[(det0, rec0)])
    assert seen == {"a": {"old", "new"}, "b": {"old", "new"}}  # both cameras switched, under load
    errors = [e for e in nucleus.events("error") if e["source"] == "camera"]
    assert errors == []

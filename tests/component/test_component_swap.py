"""Hot model swap while the video plays: 512-d w600k -> 128-d mobilefacenet, no frame dropped,
gallery re-embedded from its crops, matches continue with the new model."""

from __future__ import annotations

import cv2

from facefleet.recognition.gallery import Gallery

from .helpers import MBF128, base_config, make_gallery, wait_until


def test_swap_recognizer_while_the_video_plays(tmp_path, greengrass, assets, load_detector, load_recognizer, long_video,
                                               clip_frames):
    make_gallery(tmp_path, assets, load_detector())
    total = 3 * len(clip_frames)
    cap = cv2.VideoCapture(str(long_video))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == total
    cap.release()
    cfg = base_config(assets, cameras=[{"id": "stage", "source": str(long_video), "fps_cap": None}])
    comp, ipc = greengrass(cfg)
    try:
        worker = comp.cameras["stage"]
        old_fp = comp.models.recognizer.fingerprint
        assert comp.index.templates.shape == (2, 512)
        assert wait_until(lambda: worker.frames >= 40, 120)
        new_cfg = dict(cfg, models=dict(cfg["models"], recognizer=MBF128))
        assert ipc.push_validation(new_cfg).status == "ACCEPTED"
        ipc.set_configuration(new_cfg)            # the swap runs in the component, beside the serving models
        assert wait_until(lambda: comp.models.recognizer.fingerprint != old_fp, 120)
        swapped_at = worker.frames
        assert swapped_at < total, "the video ended before the swap: nothing proven"
        new_fp = comp.models.recognizer.fingerprint
        assert new_fp == load_recognizer("mobilefacenet_128").fingerprint != old_fp
        assert comp.index.templates.shape == (2, 128) and comp.index.fingerprint == new_fp
        assert (Gallery.open(tmp_path / "gallery").root / "cache" / f"{new_fp}.npz").is_file()
        assert worker.finished.wait(180)
        comp.forwarder.drain(10)
        assert worker.frames == worker.pipeline.counters.frames == total  # every frame processed, none dropped
        changed = ipc.events("model_changed")
        assert [(e["role"], e["old"], e["new"], e["gallery_identities"]) for e in changed] == [("recognizer", old_fp, new_fp, 2)]
        assert 0 < changed[0]["swap_ms"] < 60_000
        matches = ipc.events("match")
        after = [e for e in matches if e["models"]["recognizer"] == new_fp]
        assert after, "no decision was made with the new model"
        assert {e["identity"] for e in after if e["decision"] == "identified"} >= {"miranda"}
        assert all(e["frame_index"] >= swapped_at - 1 for e in after if e["models"]["recognizer"] == new_fp)
        # events went to IoT Core (QoS 1) on the component's topic, and a local copy to pub/sub
        topics = {t for t, _, _ in ipc.cloud}
        assert "facefleet/thing-1/events/match" in topics and "facefleet/thing-1/events/model_changed" in topics
        assert {q for _, q, _ in ipc.cloud} == {"1"}
        assert len(ipc.local) == len([t for t, _, _ in ipc.cloud if not t.startswith("$aws/")])  # jobs API: no local copy
    finally:
        comp.stop()

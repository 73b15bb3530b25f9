"""Hostile commands and faults against the running component (issue 12: 1, 2, 3, 7, 9, 10, 15, 19).

The component runs on the real models with one live camera (an endless MJPEG stream over HTTP),
talking through the real IPC client to the wire-level nucleus stand-in of tests/greengrass;
every case checks the camera is still processing afterwards."""

from __future__ import annotations

import base64
import json
import threading
import time

import cv2
import numpy as np
import pytest

from component.helpers import base_config, jpeg_between, wait_until
from facefleet.recognition import loader

from .conftest import component_on_nucleus, maxrss

CMD = "facefleet/thing-1/commands"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def live(tmp_path_factory, assets, mjpeg_camera):
    """(component, nucleus) for the whole module."""
    cam = {"id": "door", "source": mjpeg_camera, "fps_cap": 10}
    with component_on_nucleus(base_config(assets, cameras=[cam]), tmp_path_factory.mktemp("comp"), assets / "models") as live:
        yield live


def push(nucleus, payload, kind: str = "error") -> list[dict]:
    """Send a command; wait for the event it must cause (IPC callbacks run on the SDK's pool)."""
    n = len(nucleus.events(kind))
    nucleus.push_iot_message(CMD, payload)
    assert wait_until(lambda: len(nucleus.events(kind)) > n, 30), f"no {kind} event"
    return nucleus.events(kind)[n:]


@pytest.fixture(scope="module")
def obama_jpg(assets) -> bytes:
    return jpeg_between(assets / "enroll" / "obama.jpg", 10_000, 60_000)


@pytest.fixture(scope="module")
def miranda_jpg(assets) -> bytes:
    return jpeg_between(assets / "enroll" / "lin-manuel-miranda.png", 10_000, 60_000)


def camera_running(comp, timeout: float = 20) -> bool:
    w = comp.cameras["door"]
    start = w.frames
    return w._thread.is_alive() and wait_until(lambda: w.frames > start, timeout)


def _small_bomb() -> bytes:
    import tempfile
    from pathlib import Path

    from .conftest import png_bomb

    with tempfile.TemporaryDirectory() as d:
        return png_bomb(Path(d) / "b.png", 7000).read_bytes()  # 49 MP, ~60 KB encoded


BLANK = cv2.imencode(".png", np.full((200, 200, 3), 127, np.uint8))[1].tobytes()
BAD_COMMANDS = [
    ("not json", b"\xff\xfe not json", "not JSON"),
    ("json array", "[1, 2]", "JSON object"),
    ("deep json", "[" * 50_000 + "]" * 50_000, "nested too deeply"),
    ("unknown command", json.dumps({"command": "explode", "request_id": "r-unknown"}), "command"),
    ("no name", json.dumps({"command": "enroll", "image_b64": _b64(BLANK), "request_id": "r-noname"}), "name"),
    ("bad base64", json.dumps({"command": "enroll", "name": "x", "image_b64": "!!!not base64!!!"}), "base64"),
    ("garbage image", json.dumps({"command": "enroll", "name": "x", "image_b64": _b64(b"garbage" * 10)}), "could not be decoded"),
    ("pixel bomb", json.dumps({"command": "enroll", "name": "x", "image_b64": _b64(_small_bomb()), "request_id": "r-bomb"}),
     "over the limit"),
    ("no face", json.dumps({"command": "enroll", "name": "x", "image_b64": _b64(BLANK)}), "no face"),
    ("name ESC", json.dumps({"command": "enroll", "name": "x\x1b[2J", "image_b64": _b64(BLANK)}), "invalid identity name"),
    ("name padded", json.dumps({"command": "enroll", "name": " bob ", "image_b64": _b64(BLANK)}), "invalid identity name"),
    ("name bidi", json.dumps({"command": "remove", "name": "a\u202eb"}), "invalid identity name"),
    ("name slash", json.dumps({"command": "remove", "name": "../x"}), "invalid identity name"),
    ("remove nobody", json.dumps({"command": "remove", "name": "nobody"}), "no identity"),
    ("extra field", json.dumps({"command": "list", "extra": 1, "request_id": "r-extra"}), "extra"),
    ("oversize image", json.dumps({"command": "enroll", "name": "x", "image_b64": "A" * 130_000}), "over the limit"),
    ("request_id too long", json.dumps({"command": "list", "request_id": "r" * 500}), "request_id"),
]


@pytest.mark.parametrize(("label", "payload", "expected"), BAD_COMMANDS, ids=[c[0] for c in BAD_COMMANDS])
def test_bad_command_is_one_error_event(live, label, payload, expected):
    comp, nucleus = live
    names = comp.gallery.names()
    before = maxrss()
    errors = push(nucleus, payload)
    assert maxrss() - before < 200 << 20  # memory bounded
    comp.forwarder.drain(10)
    assert len(errors) == 1 and expected in errors[0]["message"], errors
    assert "Traceback" not in errors[0]["message"] and "\n" not in errors[0]["message"]
    rid = json.loads(payload).get("request_id") if isinstance(payload, str) and payload.startswith("{") else None
    if rid and len(rid) <= 128:  # the caller gets its answer even when the command did not parse
        assert wait_until(lambda: any(e["request_id"] == rid for e in nucleus.events("command_result")), 10)
        results = [e for e in nucleus.events("command_result") if e["request_id"] == rid]
        assert results and results[-1]["ok"] is False
    assert comp.gallery.names() == names
    assert camera_running(comp)


def test_mime_wrapped_base64_is_accepted(live, obama_jpg):
    comp, nucleus = live
    b64 = base64.encodebytes(obama_jpg).decode()  # 76-char lines
    assert "\n" in b64
    res = push(nucleus, json.dumps({"command": "enroll", "name": "mime", "image_b64": b64, "request_id": "r-mime"}),
               "command_result")
    assert res[-1]["request_id"] == "r-mime" and res[-1]["ok"], res
    push(nucleus, json.dumps({"command": "remove", "name": "mime"}), "command_result")
    assert "mime" not in comp.gallery.names()


def test_pixel_bomb_enroll_costs_no_memory(live):
    """High 1: the bomb is refused from its header; the process's peak RSS does not move."""
    from .conftest import maxrss, png_bomb

    comp, nucleus = live
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        data = png_bomb(Path(d) / "b.png", 9000).read_bytes()  # 81 MP: 243 MB decoded, ~80 KB encoded
    assert len(data) < comp.cfg.commands.effective_max_image_bytes  # passes the byte limit: only pixels stop it
    before = maxrss()
    res = push(nucleus, json.dumps({"command": "enroll", "name": "bomb", "image_b64": _b64(data), "request_id": "r-b2"}),
               "command_result")
    assert maxrss() - before < 100 << 20
    assert not res[-1]["ok"] and "9000x9000 pixels, over the limit" in res[-1]["message"], res
    assert camera_running(comp)


def test_cameras_keep_running_during_a_slow_enroll(live, obama_jpg, monkeypatch):
    """High 2: enrollment detection does not hold the cameras' infer_lock."""
    comp, nucleus = live
    real = loader.largest_face_crop
    inside = threading.Event()
    counted: list[int] = []

    def slow(detector, image, size=112):
        inside.set()
        w = comp.cameras["door"]
        f0 = w.frames
        time.sleep(2.0)  # a slow enroll (a big photo on a busy Pi)
        counted.append(w.frames - f0)
        return real(detector, image, size)

    monkeypatch.setattr(loader, "largest_face_crop", slow)
    push(nucleus, json.dumps({"command": "enroll", "name": "slow", "image_b64": _b64(obama_jpg), "request_id": "r-slow"}),
         "command_result")
    assert inside.is_set()
    assert counted[0] > 0, "no camera frame was processed while the enroll detected"
    push(nucleus, json.dumps({"command": "remove", "name": "slow"}), "command_result")


def test_enroll_updates_the_index_incrementally(live, obama_jpg, miranda_jpg, monkeypatch):
    """Medium 9: an enroll embeds its own crops only, and the result equals a full re-embed."""
    comp, nucleus = live
    rec = comp.models.recognizer
    loaded: list[str] = []
    real = comp.gallery.load_crops

    def counting(name):  # the recognizer is shared with the camera: count what the gallery embeds
        loaded.append(name)
        return real(name)

    push(nucleus, json.dumps({"command": "enroll", "name": "inc-a", "image_b64": _b64(obama_jpg)}), "command_result")
    monkeypatch.setattr(comp.gallery, "load_crops", counting)
    push(nucleus, json.dumps({"command": "enroll", "name": "inc-b", "image_b64": _b64(miranda_jpg)}), "command_result")
    assert loaded == ["inc-b"]  # inc-b's crops only, not the whole gallery
    monkeypatch.undo()
    full = comp.gallery.index_for(rec.fingerprint, lambda c: rec.embed(c)[0], use_cache=False)
    assert comp.index.names == full.names
    assert np.allclose(comp.index.templates, full.templates, atol=1e-5)
    for n in ("inc-a", "inc-b"):
        push(nucleus, json.dumps({"command": "remove", "name": n}), "command_result")
    assert "inc-a" not in comp.index.names


def test_enroll_refused_for_a_full_disk_is_not_kept(live, obama_jpg, monkeypatch):
    """Medium 10: a failed save leaves memory, gallery.json and crops as before; the next write does not revive it."""
    from facefleet.recognition import gallery as gallery_mod

    comp, nucleus = live
    crops_before = sorted(p.name for p in (comp.gallery.root / "crops").iterdir())
    real = gallery_mod._atomic_write

    def full(path, data):
        if path.name == "gallery.json":
            raise OSError(28, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(gallery_mod, "_atomic_write", full)
    img = _b64(obama_jpg)
    res = push(nucleus, json.dumps({"command": "enroll", "name": "ghost", "image_b64": img, "request_id": "r-full"}),
               "command_result")
    monkeypatch.undo()
    assert res[-1]["request_id"] == "r-full" and not res[-1]["ok"] and "No space left" in res[-1]["message"], res
    assert "ghost" not in comp.gallery.names()
    assert sorted(p.name for p in (comp.gallery.root / "crops").iterdir()) == crops_before  # no orphan crop
    push(nucleus, json.dumps({"command": "enroll", "name": "next", "image_b64": img}), "command_result")
    from facefleet.recognition.gallery import Gallery

    assert Gallery.open(comp.gallery.root).names() == sorted({*comp.gallery.names()} - {"ghost"})
    assert "ghost" not in Gallery.open(comp.gallery.root).names()
    push(nucleus, json.dumps({"command": "remove", "name": "next"}), "command_result")
    assert camera_running(comp)


def test_spool_full_disk_cameras_keep_running_and_recover(live):
    """High 3: SQLite's own SQLITE_FULL (max_page_count) under a running camera."""
    comp, nucleus = live
    spool = comp.spool
    comp.forwarder.drain(10)
    pages = spool._db.execute("PRAGMA page_count").fetchone()[0]
    with spool._lock:
        spool._db.execute(f"PRAGMA max_page_count = {pages}")
    nucleus.set_online(False)  # the nucleus's own spooler fills and refuses: events pile up in ours
    spool_bytes, nucleus.spool_bytes = nucleus.spool_bytes, 1
    n_before = len(nucleus.events())
    for i in range(300):
        comp.error("test", f"filler {i} " + "x" * 2000)  # forces new pages
    assert spool.disk_error and "full" in spool.disk_error
    assert "rollback" not in spool.disk_error.lower()
    assert spool.held_in_memory > 0 and spool.held_in_memory <= spool.memory_max
    assert camera_running(comp)
    status = comp.status({})
    assert status.spool_error and status.held_in_memory == spool.held_in_memory
    with spool._lock:
        spool._db.execute("PRAGMA max_page_count = 1073741823")
    nucleus.spool_bytes = spool_bytes
    nucleus.set_online(True)
    assert wait_until(lambda: spool.disk_error is None and spool.held_in_memory == 0, 20)
    assert comp.forwarder.drain(30)
    got = nucleus.events()[n_before:]
    fillers = {e["message"].split()[1] for e in got if e["type"] == "error" and e["message"].startswith("filler")}
    assert fillers == {str(i) for i in range(300)}  # nothing lost
    assert any(e["type"] == "error" and "spool cannot write" in e["message"] for e in got)
    assert camera_running(comp)


def test_device_with_wildcards_is_refused_before_anything_is_spooled(live):
    """Medium 7: a device name that would make every topic invalid never gets in."""
    comp, nucleus = live
    for bad in ("pi+1", "pi#", "site/pi"):
        cfg = dict(nucleus.config[nucleus.component], device=bad)
        report = nucleus.push_validation(cfg)
        assert report.status == "REJECTED" and "must not contain" in report.message
    assert camera_running(comp)


@pytest.mark.parametrize(("plan", "expected"), [
    ({"zones": [{"name": "far", "x": 5000, "y": 100, "width": 300, "height": 200}]}, "outside"),
    ({"grid": True, "overlap": 700}, "overlap 700"),
], ids=["zone outside the frame", "overlap over the detector tile"])
def test_plan_that_does_not_fit_the_frame_is_reported_once(live, plan, expected):
    """Low 15: the plan validates but cannot run on this camera's frames: one error event, the
    camera keeps processing on what fits."""
    import copy

    comp, nucleus = live
    raw = copy.deepcopy(nucleus.config[nucleus.component])
    n_err = len(nucleus.events("error"))
    nucleus.set_configuration(dict(raw, detection={"plan": plan}))
    try:
        assert wait_until(lambda: comp.cfg.detection.plan.tiled, 60), "the plan was not applied"
        assert camera_running(comp) and camera_running(comp)  # many frames after the change
        comp.forwarder.drain(10)
        errors = [e["message"] for e in nucleus.events("error")[n_err:] if e["source"] == "camera"]
        assert len(errors) == 1 and expected in errors[0], errors
    finally:
        nucleus.set_configuration(raw)
        assert wait_until(lambda: not comp.cfg.detection.plan.tiled, 60)

"""Building a component on the real models, fed by the in-memory IPC client."""

from __future__ import annotations

import json
import time
from pathlib import Path

from facefleet.component.service import Component
from facefleet.recognition.gallery import Gallery
from facefleet.recognition.loader import enroll_images

from .fake_ipc import FakeIpcClient

W600K, MBF128, DET = "w600k_mbf_fp32.onnx", "mobilefacenet_128.onnx", "det_500m.onnx"


def base_config(assets: Path, cameras: list[dict] | None = None, **over) -> dict:
    """Relative model names: resolved against the artifacts folder (shared/assets/models here)."""
    cfg = {
        "models": {"backend": "onnx", "detector": DET, "recognizer": W600K},
        "cameras": cameras if cameras is not None else [],
        "status_interval_s": 1,
        "spool": {"path": "spool.sqlite", "max_events": 100000, "batch": 100},
    }
    cfg.update(over)
    return json.loads(json.dumps(cfg))


def video_camera(assets: Path, fps_cap: float | None = None, cam_id: str = "stage") -> dict:
    return {"id": cam_id, "source": str(assets / "video" / "hamilton_clip.mp4"), "fps_cap": fps_cap}


def make_gallery(work: Path, assets: Path, detector) -> None:
    gallery = Gallery.open(work / "gallery", create=True)
    enroll_images(gallery, detector, "miranda", [assets / "enroll" / "lin-manuel-miranda.png"])
    enroll_images(gallery, detector, "obama", [assets / "enroll" / "obama.jpg"])


def start_component(tmp_path: Path, assets: Path, config: dict, environ: dict | None = None) -> tuple[Component, FakeIpcClient]:
    ipc = FakeIpcClient(config)
    comp = Component(ipc, tmp_path, artifacts=assets / "models", thing="thing-1", environ=environ or {})
    comp.start()
    return comp, ipc


def wait_until(cond, timeout: float, step: float = 0.02) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return cond()

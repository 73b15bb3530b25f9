"""Building a component on the real models, talking to the wire-level nucleus stand-in
(tests/greengrass/nucleus.py) through the REAL GreengrassCoreIPCClientV2 and awscrt."""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from facefleet.recognition.gallery import Gallery
from facefleet.recognition.loader import enroll_images

W600K, MBF128, DET = "w600k_mbf_fp32.onnx", "mobilefacenet_128.onnx", "det_500m.onnx"
RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "com.facefleet.FaceRecognition.yaml"


def recipe_defaults() -> dict:
    return yaml.safe_load(RECIPE.read_text())["ComponentConfiguration"]["DefaultConfiguration"]


def base_config(assets: Path, cameras: list[dict] | None = None, **over) -> dict:
    """Relative model names: resolved against the artifacts folder (shared/assets/models here).
    The recipe's own accessControl is part of it: the stand-in authorizes IoT Core and pub/sub
    calls against it, as a default nucleus would."""
    cfg = {
        "models": {"backend": "onnx", "detector": DET, "recognizer": W600K},
        "cameras": cameras if cameras is not None else [],
        "status_interval_s": 1,
        "spool": {"path": "spool.sqlite", "max_events": 100000, "batch": 100},
        "accessControl": recipe_defaults()["accessControl"],
    }
    cfg.update(over)
    return json.loads(json.dumps(cfg))


def video_camera(assets: Path, fps_cap: float | None = None, cam_id: str = "stage") -> dict:
    return {"id": cam_id, "source": str(assets / "video" / "hamilton_clip.mp4"), "fps_cap": fps_cap}


def make_gallery(work: Path, assets: Path, detector) -> None:
    gallery = Gallery.open(work / "gallery", create=True)
    enroll_images(gallery, detector, "miranda", [assets / "enroll" / "lin-manuel-miranda.png"])
    enroll_images(gallery, detector, "obama", [assets / "enroll" / "obama.jpg"])


def jpeg_between(path: Path, low: int, high: int) -> bytes:
    """The photo re-encoded (made at run time) to a JPEG of low..high bytes: enroll images must
    fit an IoT Core payload, the shipped photos are larger."""
    import cv2

    img = cv2.imread(str(path))
    for side in (1600, 1200, 900, 700, 500, 400, 300):
        scale = side / max(img.shape[:2])
        small = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else img
        for q in (95, 90, 80, 70, 60, 50):
            data = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, q])[1].tobytes()
            if low <= len(data) <= high:
                return data
    raise AssertionError(f"cannot make a {low}..{high}-byte JPEG of {path}")


def wait_until(cond, timeout: float, step: float = 0.02) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return cond()

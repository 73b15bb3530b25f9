"""Faces found per detector family: the two shared group photos, and faces/people placed at
112/56/28 px in a 1280x720 frame (the distance benchmark's placement), letterboxed full frame
and with a grid of native-resolution tiles.

Why: score scales and small-face recall differ by family; an operator choosing a detector (or
a threshold) needs the figures side by side, measured, not asserted.

    PYTHONPATH=src python benchmarks/detectors.py [--assets DIR] [--heights 112,56,28] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from facefleet.assets import assets_dir
from facefleet.distance import load_faces, place
from facefleet.modelspec import resolve_model
from facefleet.recognition.models import Detector
from facefleet.runtime.onnx import OnnxBackend
from facefleet.sources import read_image
from facefleet.vision.nms import iou_matrix
from facefleet.vision.tiling import DetectionPlan

FAMILIES = {
    "SCRFD-500M (decoded, det_500m)": "det_500m",
    "SCRFD-2.5G (decoded)": "scrfd_2.5g_kps",
    "SCRFD-2.5G (raw heads)": "scrfd_2.5g_rawheads",
    "YuNet 2023mar": "yunet_2023mar",
    "RetinaFace mnet0.25": "retinaface_mobilenet0.25",
    "YOLOv8-lite-t face": "yolov8_lite_t_face",
}
PLANS = {"letterbox": None, "grid tiles": DetectionPlan(grid=True, tile_size=640, overlap=96)}


def found_at(det: Detector, photos, height: float, plan) -> int:
    """Placed faces the detector finds (a detection overlapping the placed box, IoU >= 0.3)."""
    hits = 0
    for slot, p in enumerate(photos):
        frame, box = place(p, height, 1280, 720, slot)
        d = det.detect(frame, plan)
        hits += bool(len(d)) and float(iou_matrix(box[None], d.boxes).max()) >= 0.3
    return hits


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--assets", type=Path, default=None)
    ap.add_argument("--heights", default="112,56,28")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    assets = args.assets or assets_dir()
    heights = [float(h) for h in args.heights.split(",")]
    backend = OnnxBackend()
    load = lambda name: Detector(backend.load(resolve_model(assets / "models" / f"{name}.onnx")))  # noqa: E731
    photos = load_faces(assets / "faces" / "people", load("det_500m"))  # faces placed by the default detector's box
    group = {n: read_image(assets / "faces" / n) for n in ("couple.jpg", "selfie-many-people.jpg")}
    rows = []
    for label, name in FAMILIES.items():
        det = load(name)
        t0 = time.perf_counter()
        row = {"family": label, "model": name, "score_threshold": det.score_threshold,
               "couple": len(det.detect(group["couple.jpg"])),
               "selfie": len(det.detect(group["selfie-many-people.jpg"])), "people": len(photos)}
        for plan_name, plan in PLANS.items():
            for h in heights:
                row[f"{plan_name} {h:g}px"] = found_at(det, photos, h, plan)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(f"{label:<32} thr {row['score_threshold']:.2f}  couple {row['couple']}  selfie {row['selfie']}  " +
              "  ".join(f"{p} " + "/".join(str(row[f'{p} {h:g}px']) for h in heights) for p in PLANS) +
              f"  (of {len(photos)} at {'/'.join(f'{h:g}' for h in heights)} px; {row['seconds']} s)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``facefleet build probes``: the quality canary's probe set of a model, made at build time.

Recognizer: a few aligned 112x112 crops of the operator's photos (round-robin over identities)
and the FLOAT recognizer's embeddings of them. Detector: a few frames with a face placed at the
fidelity gate's sizes and the float detector's boxes. Tolerances come from the fidelity gate:
with ``--fidelity fidelity.json``, ``min_cosine`` is the lowest 5th-percentile float-vs-quantized
cosine at the face sizes the gate covers, less the gate's margin (the quantized model the gate
passed would pass its own canary); without a report, the options' defaults. The file is written
atomically as ``<model>.probes.npz`` beside the model; publish ships it with the model.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from facefleet.errors import FacefleetError
from facefleet.modelspec import resolve_model
from facefleet.recognition.canary import PROBES_SCHEMA, probes_path
from facefleet.recognition.models import Detector, Recognizer
from facefleet.vision.align import align_faces

log = logging.getLogger(__name__)


def tolerance_from_fidelity(report_path: Path) -> float:
    """``min(cos_float_quant_p5 at sizes >= gate.min_face_px) - gate.margin`` of a fidelity report."""
    try:
        rep = json.loads(report_path.read_text())
        gate = rep["gate"]
        cos = [s["cos_float_quant_p5"] for s in rep["sizes"]
               if s["face_px"] >= gate["min_face_px"] and s.get("cos_float_quant_p5") is not None]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FacefleetError(f"fidelity report {report_path}: unreadable ({type(e).__name__}: {e})") from None
    if not cos:
        raise FacefleetError(f"fidelity report {report_path}: no cosine figures at sizes >= {gate['min_face_px']} px")
    return round(min(cos) - float(gate["margin"]), 4)


def _photos(faces: Path, backend, count: int):
    from facefleet.assets import default_model
    from facefleet.cloud.compiler.faces import face_photos

    det = Detector(backend.load(resolve_model(default_model("detector"), kind="detector")))
    photos = face_photos(faces, det)
    if not photos:
        raise FacefleetError(f"{faces}: no face photos")
    by_label: dict[str, list] = {}
    for p in photos:
        by_label.setdefault(p.label, []).append(p)
    picked, i = [], 0
    while len(picked) < count and any(i < len(v) for v in by_label.values()):
        picked += [v[i] for v in by_label.values() if i < len(v)][:count - len(picked)]
        i += 1
    return picked


def recognizer_probes(float_model: Path, faces: Path, backend, count: int, min_cosine: float) -> dict:
    rec = Recognizer(backend.load(resolve_model(float_model, kind="recognizer")))
    photos = _photos(faces, backend, count)
    crops = np.stack([align_faces(p.image, p.kps[None].astype(np.float32), rec.size)[0] for p in photos])
    unit, _ = rec.embed(crops)
    return {"kind": "recognizer", "crops": crops, "reference": unit.astype(np.float32),
            "min_cosine": np.float64(min_cosine), "labels": np.array([p.label for p in photos])}


def detector_probes(float_model: Path, faces: Path, backend, count: int, min_iou: float,
                    sizes: tuple[int, ...] = (112, 56), frame: tuple[int, int] = (640, 360), max_side: int = 640) -> dict:
    from facefleet.cloud.compiler.fidelity import place_in_frame

    det = Detector(backend.load(resolve_model(float_model, kind="detector")), max_side=max_side)
    photos = _photos(faces, backend, count)
    frames, boxes, frame_of = [], [], []
    for i, p in enumerate(photos):
        img, _ = place_in_frame(p, sizes[i % len(sizes)], frame)
        got = det.detect(img)
        frames.append(img)
        boxes.append(got.boxes)
        frame_of += [len(frames) - 1] * len(got)
    return {"kind": "detector", "frames": np.stack(frames), "boxes": np.concatenate(boxes).astype(np.float32),
            "frame_of": np.asarray(frame_of, np.int32), "min_iou": np.float64(min_iou), "max_side": np.int32(max_side),
            "score_threshold": np.float32(det.score_threshold), "nms_iou": np.float32(det.nms_iou)}


def build_probes(model: Path, faces: Path, *, float_model: Path | None = None, out: Path | None = None, count: int = 8,
                 min_cosine: float = 0.9, min_iou: float = 0.5, fidelity: Path | None = None) -> tuple[Path, dict]:
    """Write the probe set of ``model`` (references from ``float_model``, default the model itself)."""
    from facefleet.runtime.onnx import OnnxBackend

    if count < 1:
        raise FacefleetError("--count must be >= 1")
    spec = resolve_model(model).spec
    ref = float_model or model
    backend = OnnxBackend()
    if spec.kind == "recognizer":
        tol = tolerance_from_fidelity(fidelity) if fidelity is not None else min_cosine
        data = recognizer_probes(ref, faces, backend, count, tol)
    else:
        data = detector_probes(ref, faces, backend, count, min_iou)
    ref_spec = resolve_model(ref, kind=spec.kind).spec
    data.update(schema=np.array(PROBES_SCHEMA), model=np.array(spec.name), reference_model=np.array(ref_spec.name),
                reference_sha256=np.array(ref_spec.sha256))
    out = out or probes_path(model)
    part = out.with_name(out.name + ".part")
    with open(part, "wb") as f:
        np.savez_compressed(f, **data)
    os.replace(part, out)
    summary = {"probes": str(out), "kind": spec.kind, "count": len(data.get("crops", data.get("frames", []))),
               "reference": ref_spec.name,
               **({"min_cosine": float(data["min_cosine"])} if spec.kind == "recognizer" else {"min_iou": min_iou})}
    return out, summary

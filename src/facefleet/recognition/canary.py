"""The quality canary: before a model serves (start, every swap), run its probe set through it.

A probe set (``<model>.probes.npz`` beside the model, made by ``facefleet build probes``) holds
what the FLOAT model computed at build time -- unit embeddings of a few aligned crops for a
recognizer, the boxes of a few frames for a detector -- and the tolerances the fidelity gate
allows. A model that crashes is caught by Greengrass; one that quietly computes something else
(a wrong normalization in its spec, a bad quantization) is caught here: the figures fall out of
tolerance and the caller refuses the model. No probes file: no canary (warned once), never a failure.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facefleet.errors import FacefleetError

log = logging.getLogger(__name__)
PROBES_SCHEMA = "facefleet.probes/1"
SUFFIX = ".probes.npz"


class CanaryFailed(FacefleetError):
    """A model's probe figures are out of tolerance: it must not serve."""


def probes_path(model_path: str | Path) -> Path:
    """``det_500m.onnx`` -> ``det_500m.probes.npz`` (beside the model, shipped with it)."""
    p = Path(model_path)
    return p.with_name(p.stem + SUFFIX)


@dataclass
class CanaryResult:
    role: str
    model: str  # fingerprint of the model that was probed
    passed: bool
    figures: dict = field(default_factory=dict)
    failed: str | None = None  # the figure that failed, one line

    def as_dict(self) -> dict:
        return {"model": self.model, "passed": self.passed, **self.figures}


def load_probes(path: Path) -> dict[str, np.ndarray]:
    """The probe arrays; a file that is not a probe set is a clear error (it was shipped on purpose)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as e:
        raise FacefleetError(f"probe set {path.name} unreadable: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if str(data.get("schema", "")) != PROBES_SCHEMA:
        raise FacefleetError(f"probe set {path.name}: not a {PROBES_SCHEMA} file")
    need = {"recognizer": ("crops", "reference", "min_cosine"), "detector": ("frames", "boxes", "frame_of", "min_iou")}
    kind = str(data.get("kind", ""))
    if kind not in need or any(k not in data for k in need[kind]):
        raise FacefleetError(f"probe set {path.name}: kind {kind!r} or its arrays missing")
    if kind == "recognizer":
        c, r = data["crops"], data["reference"]
        ok = c.ndim == 4 and c.dtype == np.uint8 and c.shape[-1] == 3 and r.ndim == 2 and len(r) == len(c) > 0
    else:
        f, b, i = data["frames"], data["boxes"], data["frame_of"]
        ok = (f.ndim == 4 and f.dtype == np.uint8 and f.shape[-1] == 3 and len(f) > 0 and b.ndim == 2 and b.shape[1] == 4
              and i.shape == (len(b),) and (i < len(f)).all())
    if not ok:
        raise FacefleetError(f"probe set {path.name}: arrays of the wrong shape or type for a {kind}")
    return data


def check_recognizer(rec, probes: dict[str, np.ndarray]) -> CanaryResult:
    """Cosine of the served embedding to the float one, per probe crop; the MIN must reach ``min_cosine``."""
    crops, ref = probes["crops"], probes["reference"].astype(np.float32)
    tol = round(float(probes["min_cosine"]), 4)
    if ref.shape[1] != rec.rec.embedding_size or crops.shape[1] != rec.size:
        raise CanaryFailed(f"recognizer {rec.spec.name}: probe set is for {crops.shape[1]} px crops / {ref.shape[1]}-d "
                           f"embeddings, the model has {rec.size} px / {rec.rec.embedding_size}-d")
    unit = np.concatenate([rec.embed(crops[i:i + 8])[0] for i in range(0, len(crops), 8)])
    cos = (unit * (ref / np.linalg.norm(ref, axis=1, keepdims=True))).sum(1)
    figs = {"probes": len(cos), "cos_min": round(float(cos.min()), 4), "cos_mean": round(float(cos.mean()), 4),
            "min_cosine": tol}
    ok = bool(np.isfinite(cos).all() and cos.min() >= tol)
    failed = None if ok else (f"recognizer {rec.spec.name} ({rec.fingerprint}): probe cosine to the float model min "
                              f"{figs['cos_min']:.4f} < tolerance {tol:.4f} (mean {figs['cos_mean']:.4f}, {len(cos)} probes)")
    return CanaryResult("recognizer", rec.fingerprint, ok, figs, failed)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of boxes ``a [n,4]`` x ``b [m,4]``."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda r: (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def check_detector(det, probes: dict[str, np.ndarray]) -> CanaryResult:
    """Each float box must be found again (best IoU >= ``min_iou``) and no frame may gain or lose faces."""
    import copy

    frames, boxes, frame_of = probes["frames"], probes["boxes"].astype(np.float32), probes["frame_of"]
    tol = round(float(probes["min_iou"]), 4)
    probe_det = copy.copy(det)  # the served model and backend; the build's thresholds, own scratch buffers
    probe_det._canvas, probe_det._tiles = None, None
    for attr in ("max_side", "score_threshold", "nms_iou"):
        if attr in probes:
            setattr(probe_det, attr, type(getattr(det, attr))(probes[attr]))
    probe_det.min_face_px = 0.0
    ious, count_ref, count_served = [], 0, 0
    for i, frame in enumerate(frames):
        ref = boxes[frame_of == i]
        got = probe_det.detect(frame)
        count_ref += len(ref)
        count_served += len(got)
        if len(ref):
            ious.extend((_iou(ref, got.boxes).max(axis=1) if len(got) else np.zeros(len(ref))).tolist())
    iou = np.asarray(ious, np.float32)
    figs = {"frames": len(frames), "iou_min": round(float(iou.min()), 4) if len(iou) else None,
            "iou_mean": round(float(iou.mean()), 4) if len(iou) else None, "faces_float": count_ref,
            "faces_served": count_served, "min_iou": tol}
    ok = count_ref == count_served and (not len(iou) or bool(iou.min() >= tol))
    failed = None
    if not ok:
        failed = (f"detector {det.spec.name} ({det.spec.fingerprint}): probe box IoU to the float model min "
                  f"{figs['iou_min']} (tolerance {tol:.2f}), faces {count_served} vs float {count_ref}")
    return CanaryResult("detector", det.spec.fingerprint, ok, figs, failed)


class Canary:
    """Probe a model pair before it serves. Keeps which probe files were missing so that is warned once."""

    def __init__(self) -> None:
        self._warned: set[Path] = set()

    def check(self, pair, detector_path: Path | None, recognizer_path: Path | None) -> dict:
        """Figures per role (for status events); raises CanaryFailed with the failing figure."""
        figures: dict = {}
        for role, model, path, fn in (("detector", pair.detector, detector_path, check_detector),
                                      ("recognizer", pair.recognizer, recognizer_path, check_recognizer)):
            if path is None:
                continue
            pp = probes_path(path)
            if not pp.is_file():
                if pp not in self._warned:
                    self._warned.add(pp)
                    log.warning("no probe set %s: the %s is not canaried (facefleet build probes makes one)", pp.name, role)
                continue
            result = fn(model, load_probes(pp))
            log.info("canary %s: %s", role, result.as_dict())
            if not result.passed:
                raise CanaryFailed(f"quality canary: {result.failed}")
            figures[role] = result.as_dict()
        return figures

"""``facefleet build fidelity``: does the quantized recognizer still recognize people far away?

Each photo is scaled so its face is 112/80/56/40/28 px tall and placed in a 1280x720 frame, the
way a camera sees a person walking away; the facefleet detector finds and aligns it, and the
float and quantized recognizers embed it. Matching is leave-one-photo-out against a gallery of
the other photos, enrolled by the SAME quantized model (what a device must do) and by the float
model (what went wrong in the field). The gate fails when the quantized match rate drops more
than ``margin`` below float at any size >= ``gate_min_px``: publishing reads ``gate.passed``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from facefleet.cloud.compiler.faces import FacePhoto, face_photos, scaled_region
from facefleet.errors import FacefleetError
from facefleet.modelspec import ModelSpec, ResolvedModel, resolve_model, sha256_file
from facefleet.recognition.models import Detector, Recognizer
from facefleet.vision.align import align_faces

log = logging.getLogger(__name__)
REPORT_SCHEMA = "facefleet.fidelity/1"
GATE_EXIT = 3  # distinct from errors (1) and usage (2): "the model is not fit to ship"


@dataclass
class FidelityOptions:
    sizes: tuple[int, ...] = (112, 80, 56, 40, 28)
    frame: tuple[int, int] = (1280, 720)
    margin: float = 0.05
    gate_min_px: int = 40
    activations: Literal["int8", "int16"] = "int8"
    float_nodes: tuple[str, ...] = ()
    calib_size: int = 128
    calib_scales: tuple[int, ...] = (112, 80, 56, 40, 28)
    det_max_side: int = 1280
    match_threshold: float | None = None  # None: the float model's spec


@dataclass
class Embeddings:
    unit: np.ndarray
    norm: np.ndarray

    @property
    def raw(self) -> np.ndarray:
        return self.unit * self.norm[:, None]


@dataclass
class SizeResult:
    face_px: int
    detected: np.ndarray  # bool per photo
    float_probe: Embeddings
    quant_probe: Embeddings
    metrics: dict = field(default_factory=dict)


class EmulatorModel:
    """A LoadedModel over the DFC emulator (``InferenceContext.SDK_QUANTIZED``) of a quantized HAR."""

    def __init__(self, sdk, har: Path, spec: ModelSpec):
        self.spec = spec
        self.infer_seconds = 0.0
        self.calls = 0
        self._runner = sdk.ClientRunner(har=str(har))
        self._stack = contextlib.ExitStack()
        self._ctx = self._stack.enter_context(self._runner.infer_context(sdk.InferenceContext.SDK_QUANTIZED))

    def input_size(self):
        return self.spec.input.width, self.spec.input.height

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        x = images[..., ::-1] if self.spec.input.color == "RGB" else images
        t0 = time.perf_counter()
        out = self._runner.infer(self._ctx, np.ascontiguousarray(x, dtype=np.float32))
        self.infer_seconds += time.perf_counter() - t0
        self.calls += 1
        out = out[0] if isinstance(out, list) else out
        return {self.spec.recognizer.output: np.asarray(out, np.float32).reshape(len(images), -1)}

    def close(self) -> None:
        self._stack.close()


def _embed(rec: Recognizer, crops: np.ndarray) -> Embeddings:
    parts = [rec.embed(crops[i:i + 16]) for i in range(0, len(crops), 16)]  # small batches stay in cache
    return Embeddings(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x1, y1 = np.maximum(a[:, 0], b[0]), np.maximum(a[:, 1], b[1])
    x2, y2 = np.minimum(a[:, 2], b[2]), np.minimum(a[:, 3], b[3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda r: (r[..., 2] - r[..., 0]) * (r[..., 3] - r[..., 1])  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


def place_in_frame(photo: FacePhoto, face_px: int, frame_wh: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A grey frame with the photo scaled so its face is ``face_px`` tall, face centred; returns (frame, face box)."""
    fw, fh = frame_wh
    frame = np.full((fh, fw, 3), 96, np.uint8)
    region, box, _ = scaled_region(photo, face_px, margin=4.0)
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    dx, dy = int(np.rint(fw / 2 - cx)), int(np.rint(fh / 2 - cy))
    x0, y0 = max(0, dx), max(0, dy)
    x1, y1 = min(fw, dx + region.shape[1]), min(fh, dy + region.shape[0])
    frame[y0:y1, x0:x1] = region[y0 - dy:y1 - dy, x0 - dx:x1 - dx]
    return frame, box + np.array([dx, dy, dx, dy], np.float32)


def probe_crops(photos: list[FacePhoto], detector: Detector, face_px: int, frame_wh) -> tuple[np.ndarray, np.ndarray]:
    """Aligned crops of each photo's face as found in the frame (zeros where not detected)."""
    crops = np.zeros((len(photos), 112, 112, 3), np.uint8)
    found = np.zeros(len(photos), bool)
    for i, p in enumerate(photos):
        frame, box = place_in_frame(p, face_px, frame_wh)
        det = detector.detect(frame)
        if len(det) == 0:
            continue
        iou = _iou(det.boxes, box)
        j = int(np.argmax(iou))
        if iou[j] < 0.3:
            continue
        crops[i] = align_faces(frame, det.kps[j:j + 1], 112)[0]
        found[i] = True
    return crops, found


def _match(probe: Embeddings, gallery: Embeddings, labels: np.ndarray, found: np.ndarray, thr: float) -> dict:
    """Leave-one-photo-out top-1 against the other photos; undetected faces count as misses."""
    sims = probe.unit @ gallery.unit.T
    np.fill_diagonal(sims, -np.inf)
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    top = np.argmax(sims, axis=1)
    best = sims[np.arange(len(labels)), top]
    ok = found & (labels[top] == labels) & (best >= thr)
    genuine = np.where(same, sims, np.nan)[found]
    other = ~same
    np.fill_diagonal(other, False)
    impostor = np.where(other, sims, np.nan)[found]
    imp_top = np.nanmax(impostor, axis=1) if found.any() else np.zeros(0)
    return {
        "_correct": ok,
        "match_rate": float(ok.mean()),
        "same_mean": float(np.nanmean(genuine)) if found.any() else math.nan,
        "different_mean": float(np.nanmean(impostor)) if found.any() else math.nan,
        "impostor_top_max": float(imp_top.max()) if len(imp_top) else math.nan,
        "_impostor_top": imp_top,
    }


def _clean(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items() if not k.startswith("_")}


def recommend(results: list[SizeResult], quant_sizes: list[dict], opts: FidelityOptions) -> dict:
    """Gate and threshold for the QUANTIZED model (the device sees its pre_norm, not the float one).

    pre_norm_gate: 5th percentile of the quantized pre_norm of correctly matched faces >= gate_min_px
    (below it, faces look like the small ones that fail). match_threshold: the highest impostor top-1
    score among those faces + 0.02 (no false accept on this set). The noise floor E and the cos it
    implies at the gate, n/sqrt(n^2+E^2) (dfc_api.md §8), are reported to explain the numbers.
    """
    big = [(r, m) for r, m in zip(results, quant_sizes, strict=True) if r.face_px >= opts.gate_min_px]
    norms = np.concatenate([r.quant_probe.norm[m["_correct"]] for r, m in big]) if big else np.zeros(0)
    gate = round(float(np.percentile(norms, 5)), 2) if len(norms) else 0.0
    e = np.concatenate([np.linalg.norm(r.quant_probe.raw - r.float_probe.raw, axis=1)[r.detected] for r in results])
    e_ref = float(np.percentile(e, 90)) if len(e) else 0.0
    imp = np.concatenate([m["_impostor_top"] for _, m in big]) if big else np.zeros(0)
    thr = round(math.ceil((float(imp.max()) + 0.02) * 100) / 100, 2) if len(imp) else None
    return {"pre_norm_gate": gate, "match_threshold": thr, "noise_floor_E_p90": round(e_ref, 3),
            "noise_floor_E_median": round(float(np.median(e)), 3) if len(e) else 0.0,
            "cos_float_quant_at_gate": round(gate / math.hypot(gate, e_ref), 3) if gate > 0 else None,
            "why": f"gate = 5th percentile of quantized pre_norm of correct matches at >= {opts.gate_min_px} px; "
                   f"threshold = highest impostor top-1 (quantized, faces >= {opts.gate_min_px} px) + 0.02"}


def quantized_recognizer(float_model: ResolvedModel, backend, calib_bgr: np.ndarray, opts: FidelityOptions, work: Path,
                         har: Path | None = None) -> tuple[Recognizer, dict]:
    """The DFC emulator on a quantized HAR when given (needs hailo_sdk_client), else onnxruntime QDQ."""
    if har is not None:
        try:
            import hailo_sdk_client as sdk
        except ImportError:
            raise FacefleetError("--har needs hailo_sdk_client (the DFC emulator); leave it out to use onnxruntime") from None
        if not har.is_file():
            raise FacefleetError(f"HAR not found: {har}")
        spec = float_model.spec.model_copy(update={"sha256": sha256_file(har), "name": f"{float_model.spec.name}@emulator"})
        return Recognizer(EmulatorModel(sdk, har, spec)), {"method": "dfc-emulator", "har": str(har), "sha256": spec.sha256,
                                                          "dfc_version": str(getattr(sdk, "__version__", "unknown"))}
    from facefleet.cloud.compiler.quantize import quantize_static_onnx

    out = work / f"{float_model.path.stem}.q{opts.activations}.onnx"
    quantize_static_onnx(float_model.path, float_model.spec, calib_bgr, out, opts.activations, list(opts.float_nodes))
    spec = float_model.spec.model_copy(update={"sha256": sha256_file(out), "file": out.name,
                                               "name": f"{float_model.spec.name}-ort-{opts.activations}"})
    rec = Recognizer(backend.load(ResolvedModel(spec=spec, path=out)))
    return rec, {"method": "onnxruntime-qdq", "activations": opts.activations, "weights": "int8 per-channel",
                 "float_nodes": list(opts.float_nodes), "calibration_faces": len(calib_bgr), "file": str(out),
                 "sha256": spec.sha256}


def run_fidelity(float_path: Path, faces: Path, out_dir: Path, *, detector_path: Path, opts: FidelityOptions,
                 calib_folder: Path | None = None, har: Path | None = None, model_json: Path | None = None) -> dict:
    from facefleet.cloud.compiler.calibration import _pick
    from facefleet.cloud.compiler.faces import aligned_at
    from facefleet.cloud.compiler.report import write_report
    from facefleet.runtime.onnx import OnnxBackend

    t0 = time.perf_counter()
    backend = OnnxBackend()
    det_model = backend.load(resolve_model(detector_path, kind="detector"))
    det = Detector(det_model, max_side=opts.det_max_side)  # frames: native resolution, small faces
    photo_det = Detector(det_model)  # photos: the spec's default size, whose anchors fit close-ups
    float_model = resolve_model(float_path, kind="recognizer")
    frec = Recognizer(backend.load(float_model))
    photos = face_photos(faces, photo_det)
    labels = np.array([p.label for p in photos])
    if len(set(labels)) < 2:
        raise FacefleetError(f"{faces}: fidelity needs photos of at least 2 identities (one folder each)")
    cal_photos = photos if calib_folder is None else face_photos(calib_folder, photo_det)
    items = [(p, s) for s in opts.calib_scales for p in cal_photos]
    calib = np.stack([aligned_at(p, s) for p, s in _pick(items, opts.calib_size)])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "fidelity.json").unlink(missing_ok=True)  # a failed run must not leave an older verdict behind
    qrec, qinfo = quantized_recognizer(float_model, backend, calib, opts, out_dir, har)
    t_prep = time.perf_counter() - t0
    thr = opts.match_threshold if opts.match_threshold is not None else frec.rec.match_threshold

    gallery_crops = np.stack([align_faces(p.image, p.kps[None].astype(np.float32), 112)[0] for p in photos])
    fg, qg = _embed(frec, gallery_crops), _embed(qrec, gallery_crops)
    results, float_m, quant_m, cross_m = [], [], [], []
    for s in opts.sizes:
        crops, found = probe_crops(photos, det, s, opts.frame)
        r = SizeResult(s, found, _embed(frec, crops), _embed(qrec, crops))
        fm = _match(r.float_probe, fg, labels, found, thr)
        qm = _match(r.quant_probe, qg, labels, found, thr)
        xm = _match(r.quant_probe, fg, labels, found, thr)
        cos = (r.float_probe.unit * r.quant_probe.unit).sum(1)[found]
        e = np.linalg.norm(r.quant_probe.raw - r.float_probe.raw, axis=1)[found]
        pn = r.float_probe.norm[found]
        r.metrics = {
            "face_px": s, "faces": len(photos), "detection_rate": float(found.mean()),
            "float": _clean(fm), "quantized_same_gallery": _clean(qm), "quantized_float_gallery": _clean(xm),
            "cos_float_quant_mean": float(cos.mean()) if len(cos) else None,
            "cos_float_quant_p5": float(np.percentile(cos, 5)) if len(cos) else None,
            "E_mean": float(e.mean()) if len(e) else None, "E_p90": float(np.percentile(e, 90)) if len(e) else None,
            "pre_norm_float_mean": float(pn.mean()) if len(pn) else None,
            "pre_norm_quant_mean": float(r.quant_probe.norm[found].mean()) if found.any() else None,
            "corr_E_pre_norm": float(np.corrcoef(e, pn)[0, 1]) if len(e) > 2 else None,
        }
        results.append(r)
        float_m.append(fm)
        quant_m.append(qm)
        cross_m.append(xm)
        log.info("%3d px: detected %.2f, match float %.2f / quant %.2f (float gallery %.2f), cos %.3f",
                 s, found.mean(), fm["match_rate"], qm["match_rate"], xm["match_rate"], r.metrics["cos_float_quant_mean"] or 0)
    failures = [{"face_px": r.face_px, "float": fm["match_rate"], "quantized": qm["match_rate"]}
                for r, fm, qm in zip(results, float_m, quant_m, strict=True)
                if r.face_px >= opts.gate_min_px and qm["match_rate"] < fm["match_rate"] - opts.margin]
    rec = recommend(results, quant_m, opts)
    report = {
        "schema": REPORT_SCHEMA,
        "model": {"name": float_model.spec.name, "file": str(float_path), "sha256": float_model.spec.sha256},
        "quantized": qinfo,
        "faces": {"folder": str(faces), "photos": len(photos), "identities": len(set(labels))},
        "frame": list(opts.frame), "match_threshold": thr, "detector": str(detector_path),
        "sizes": [r.metrics for r in results],
        "recommended": rec,
        "gate": {"passed": not failures, "rule": f"quantized (same-model gallery) match rate >= float - {opts.margin} "
                 f"at every face size >= {opts.gate_min_px} px", "margin": opts.margin, "min_face_px": opts.gate_min_px,
                 "failures": failures},
        "seconds": {"prepare": round(t_prep, 2), "total": None},
    }
    write_report(report, results, out_dir)
    report["seconds"]["total"] = round(time.perf_counter() - t0, 2)
    part = out_dir / "fidelity.json.part"
    part.write_text(json.dumps(report, indent=1) + "\n")
    part.replace(out_dir / "fidelity.json")
    if model_json is not None:
        apply_recommendation(model_json, report)
    return report


def apply_recommendation(model_json: Path, report: dict) -> None:
    """Write the derived gate/threshold into a recognizer ModelSpec JSON (atomically) with the verdict."""
    import os

    if not model_json.is_file():
        raise FacefleetError(f"model JSON not found: {model_json}")
    try:
        data = json.loads(model_json.read_text())
        spec = ModelSpec.model_validate(data)
    except Exception as e:
        raise FacefleetError(f"invalid model JSON {model_json}: {str(e).splitlines()[0]}") from None
    if spec.recognizer is None:
        raise FacefleetError(f"{model_json}: not a recognizer spec")
    rec = report["recommended"]
    update = {"pre_norm_gate": rec["pre_norm_gate"]}
    if rec["match_threshold"] is not None:
        update["match_threshold"] = rec["match_threshold"]
    prov = dict(spec.provenance)
    prov["fidelity"] = {"schema": report["schema"], "passed": report["gate"]["passed"], "recommended": rec,
                        "quantized": report["quantized"].get("method")}
    new = spec.model_copy(update={"recognizer": spec.recognizer.model_copy(update=update), "provenance": prov})
    ModelSpec.model_validate(new.model_dump())  # values still in range
    tmp = model_json.with_suffix(".json.part")
    tmp.write_text(json.dumps(new.model_dump(mode="json"), indent=1) + "\n")
    os.replace(tmp, model_json)

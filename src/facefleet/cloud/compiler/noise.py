"""Where does the quantization noise come from? Per-layer SNR, proposed 16-bit overrides, their effect.

onnxruntime's QDQ debugging (``qdq_loss_debug``) runs the float and the quantized graph on the same
aligned faces and records every activation; the SNR of each quantized tensor against its float
twin shows where the signal is lost. A layer's *drop* is the SNR of its input minus the SNR of its
output: the few layers with the largest drops are the candidates for ``a16_w16`` (the DFC's
``hailo analyze-noise`` answers the same question on the real quantizer). Their effect is then
measured by re-quantizing with those layers kept in float (the 16-bit analogue).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from facefleet.cloud.compiler.quantize import model_input, prepared_float, quantize_static_onnx
from facefleet.modelspec import ResolvedModel

log = logging.getLogger(__name__)


_WEIGHT_OPS = ("Conv", "Gemm", "MatMul")  # what the DFC turns into conv/dw/fc layers with a precision mode


def _reader(name: str, data: np.ndarray):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(range(len(data)))

        def get_next(self):
            i = next(self._it, None)
            return None if i is None else {name: data[i:i + 1]}

    return Reader()


def layer_snr(model: ResolvedModel, calib_bgr: np.ndarray, probe_bgr: np.ndarray, activations: str = "int8") -> list[dict]:
    """Per-node SNR (dB) of the quantized output vs float, with the drop it causes, in graph order."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    spec = model.spec
    data = model_input(spec, probe_bgr)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        fp = prepared_float(model.path, t / "float.onnx")
        q = quantize_static_onnx(model.path, spec, calib_bgr, t / "q.onnx", activations)  # type: ignore[arg-type]
        modify_model_output_intermediate_tensors(fp, t / "float_aug.onnx")
        modify_model_output_intermediate_tensors(q, t / "q_aug.onnx")
        f_act = collect_activations(str(t / "float_aug.onnx"), _reader(spec.input.name, data))
        q_act = collect_activations(str(t / "q_aug.onnx"), _reader(spec.input.name, data))
        errors = compute_activation_error(create_activation_matching(q_act, f_act))
        graph = onnx.load(str(fp)).graph
    snr = {k: float(v["xmodel_err"]) for k, v in errors.items() if "xmodel_err" in v and np.isfinite(v["xmodel_err"])}
    rows = []
    for n in graph.node:
        out = n.output[0]
        if out not in snr:
            continue
        ins = [snr[i] for i in n.input if i in snr]
        before = max(ins) if ins else None
        rows.append({"node": n.name or out, "op": n.op_type, "tensor": out, "weights": n.op_type in _WEIGHT_OPS,
                     "snr_db": round(snr[out], 2), "drop_db": round(before - snr[out], 2) if before is not None else None})
    return rows


def propose(rows: list[dict], top: int) -> list[dict]:
    """The ``top`` weight layers (conv/dw/fc) with the largest SNR drops."""
    cands = [r for r in rows if r["weights"] and r["drop_db"] is not None]
    return sorted(cands, key=lambda r: -r["drop_db"])[:top]


def spec_lines(chosen: list[dict]) -> str:
    nodes = ", ".join(r["node"] for r in chosen)
    # ONNX node names: the build looks their HAR layers up in the parsed HAR (Hailo's parser numbers
    # layers its own way, so a HAR name guessed from ONNX order would hit another layer)
    return f"precision:\n  - {{onnx_nodes: [{nodes}], mode: a16_w16}}\n"


def plot_snr(rows: list[dict], chosen: list[dict], out: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["drop_db"] is not None]  # activations only, not weight-side constants
    fig, ax = plt.subplots(figsize=(11, 4), dpi=110)
    x = np.arange(len(rows))
    ax.plot(x, [r["snr_db"] for r in rows], "-", lw=1, color="tab:blue", label="SNR of quantized vs float activation")
    picked = {r["node"] for r in chosen}
    for i, r in enumerate(rows):
        if r["node"] in picked:
            ax.plot(i, r["snr_db"], "o", color="red")
            ax.annotate(r["node"], (i, r["snr_db"]), textcoords="offset points", xytext=(3, 6), fontsize=8, color="red")
    ax.set(xlabel="tensor (graph order)", ylabel="SNR (dB)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "layer_snr.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def effect(model: ResolvedModel, backend, calib_bgr: np.ndarray, faces_by_scale: dict[int, np.ndarray],
           float_nodes: list[str], activations: str, work: Path) -> dict[int, dict]:
    """cos(float, quantized) and E per face scale, quantized with ``float_nodes`` kept in float."""
    from facefleet.modelspec import sha256_file
    from facefleet.recognition.models import Recognizer

    out = work / f"q_{len(float_nodes)}.onnx"
    quantize_static_onnx(model.path, model.spec, calib_bgr, out, activations, float_nodes)  # type: ignore[arg-type]
    q = Recognizer(backend.load(ResolvedModel(spec=model.spec.model_copy(update={"sha256": sha256_file(out)}), path=out)))
    f = Recognizer(backend.load(model))
    res = {}
    for px, crops in faces_by_scale.items():
        fu, fn = f.embed(crops)
        qu, qn = q.embed(crops)
        e = np.linalg.norm(fu * fn[:, None] - qu * qn[:, None], axis=1)
        res[px] = {"cos_mean": round(float((fu * qu).sum(1).mean()), 4), "E_mean": round(float(e.mean()), 3)}
    out.unlink(missing_ok=True)
    return res


def run_noise(model_path: Path, faces: Path, out_dir: Path, *, detector_path: Path, top: int = 4, activations: str = "int8",
              calib_size: int = 64, probes: int = 8, scales: tuple[int, ...] = (112, 56, 28)) -> dict:
    """Rank layers, propose ``top`` overrides as spec lines, and measure before/after on faces per scale."""
    import json
    import os

    from facefleet.cloud.compiler.calibration import _pick
    from facefleet.cloud.compiler.faces import aligned_at, face_photos
    from facefleet.modelspec import resolve_model
    from facefleet.recognition.models import Detector
    from facefleet.runtime.onnx import OnnxBackend

    backend = OnnxBackend()
    det = Detector(backend.load(resolve_model(detector_path, kind="detector")))
    model = resolve_model(model_path, kind="recognizer")
    photos = face_photos(faces, det)
    calib = np.stack([aligned_at(p, s) for p, s in _pick([(p, s) for s in scales for p in photos], calib_size)])
    probe = calib[np.linspace(0, len(calib) - 1, min(probes, len(calib))).round().astype(int)]
    rows = layer_snr(model, calib, probe, activations)
    chosen = propose(rows, top)
    out_dir.mkdir(parents=True, exist_ok=True)
    by_scale = {s: np.stack([aligned_at(p, s) for p in photos]) for s in scales}
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        before = effect(model, backend, calib, by_scale, [], activations, Path(tmp))
        after = effect(model, backend, calib, by_scale, [r["node"] for r in chosen], activations, Path(tmp))
    png = plot_snr(rows, chosen, out_dir, f"{model.spec.name}: per-layer SNR, {activations} activations (red: proposed a16_w16)")
    report = {"model": model.spec.name, "activations": activations, "probe_faces": len(probe), "calibration_faces": len(calib),
              "layers": rows, "proposed": [{k: r[k] for k in ("node", "snr_db", "drop_db")} for r in chosen],
              "spec_lines": spec_lines(chosen) if chosen else "",
              "fidelity_args": " ".join(f"--float-node {r['node']}" for r in chosen),
              "effect": {"baseline": before, "with_overrides": after}, "plot": str(png)}
    tmp_json = out_dir / "noise.json.part"
    tmp_json.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp_json, out_dir / "noise.json")
    return report

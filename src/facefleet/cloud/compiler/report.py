"""Fidelity report pages: PNG plots (matplotlib, headless) and one self-contained HTML page."""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np


def _plots(report: dict, results, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [m["face_px"] for m in report["sizes"]]
    name = report["model"]["name"]
    files = []

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.plot(sizes, [m["float"]["match_rate"] for m in report["sizes"]], "o-", label="float / float gallery")
    ax.plot(sizes, [m["quantized_same_gallery"]["match_rate"] for m in report["sizes"]], "s-", label="quantized / quantized gallery")
    ax.plot(sizes, [m["quantized_float_gallery"]["match_rate"] for m in report["sizes"]], "^--", label="quantized / float gallery")
    ax.plot(sizes, [m["detection_rate"] for m in report["sizes"]], ":", color="grey", label="detection rate")
    ax.axvline(report["gate"]["min_face_px"], color="red", lw=0.8, ls="--", label=f"gate from {report['gate']['min_face_px']} px")
    ax.set(xlabel="face height in a 1280x720 frame (px)", ylabel="rate", ylim=(-0.02, 1.05),
           title=f"{name}: match rate vs face size ({'PASS' if report['gate']['passed'] else 'FAIL'})")
    ax.invert_xaxis()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(out / "match_rate.png")
    files.append("match_rate.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for key, label, style in (("float", "float", "o-"), ("quantized_same_gallery", "quantized", "s-")):
        ax.plot(sizes, [m[key]["same_mean"] for m in report["sizes"]], style, label=f"{label}: same identity")
        ax.plot(sizes, [m[key]["different_mean"] for m in report["sizes"]], style.replace("-", "--"), label=f"{label}: different")
    ax.plot(sizes, [m["cos_float_quant_mean"] for m in report["sizes"]], "k.-", label="cos(float, quantized)")
    ax.axhline(report["match_threshold"], color="red", lw=0.8, ls="--", label=f"threshold {report['match_threshold']}")
    ax.set(xlabel="face height (px)", ylabel="cosine", title=f"{name}: similarities vs face size")
    ax.invert_xaxis()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "similarity.png")
    files.append("similarity.png")
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    cmap = plt.get_cmap("viridis")
    for i, r in enumerate(results):
        f = r.detected
        pn = r.float_probe.norm[f]
        e = np.linalg.norm(r.quant_probe.raw - r.float_probe.raw, axis=1)[f]
        cos = (r.float_probe.unit * r.quant_probe.unit).sum(1)[f]
        c = cmap(i / max(1, len(results) - 1))
        axes[0].scatter(pn, e, s=10, color=c, label=f"{r.face_px} px")
        axes[1].scatter(pn, cos, s=10, color=c, label=f"{r.face_px} px")
    e_ref = report["recommended"]["noise_floor_E_median"]
    norms = np.concatenate([r.float_probe.norm[r.detected] for r in results])
    if len(norms):
        n = np.linspace(norms.min() * 0.9, norms.max() * 1.05, 100)
        axes[1].plot(n, n / np.sqrt(n ** 2 + e_ref ** 2), "r-", lw=1, label=f"n/sqrt(n²+E²), median E={e_ref:.1f}")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.set_xlabel("float pre_norm ||f_float||")
    axes[0].set(ylabel="E = ||f_q - f_float||", title="quantization error vs embedding norm")
    axes[1].set(ylabel="cos(float, quantized)", title="agreement vs embedding norm")
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "noise.png")
    files.append("noise.png")
    plt.close(fig)
    return files


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def write_report(report: dict, results, out: Path) -> None:
    """PNG plots and ``fidelity.html`` into ``out``; the plot names go into ``report['plots']``."""
    files = _plots(report, results, out)
    report["plots"] = [str(out / f) for f in files]
    cols = [("face px", lambda m: m["face_px"]), ("detected", lambda m: m["detection_rate"]),
            ("match float", lambda m: m["float"]["match_rate"]),
            ("match quant (quant gallery)", lambda m: m["quantized_same_gallery"]["match_rate"]),
            ("match quant (float gallery)", lambda m: m["quantized_float_gallery"]["match_rate"]),
            ("same float", lambda m: m["float"]["same_mean"]), ("same quant", lambda m: m["quantized_same_gallery"]["same_mean"]),
            ("diff quant", lambda m: m["quantized_same_gallery"]["different_mean"]),
            ("cos(f,q)", lambda m: m["cos_float_quant_mean"]), ("E mean", lambda m: m["E_mean"]),
            ("pre_norm float", lambda m: m["pre_norm_float_mean"])]
    rows = "".join("<tr>" + "".join(f"<td>{_fmt(fn(m))}</td>" for _, fn in cols) + "</tr>" for m in report["sizes"])
    gate = report["gate"]
    verdict = "PASS" if gate["passed"] else "FAIL"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>fidelity {html.escape(report['model']['name'])}</title>
<style>body{{font-family:sans-serif;max-width:1150px;margin:2em auto}}td,th{{border:1px solid #ccc;padding:3px 7px;text-align:right}}
table{{border-collapse:collapse}}.PASS{{color:green}}.FAIL{{color:#c00}}</style></head><body>
<h1>Quantization fidelity: {html.escape(report['model']['name'])} <span class="{verdict}">{verdict}</span></h1>
<p>Float <code>{html.escape(report['model']['file'])}</code> vs quantized ({html.escape(str(report['quantized']))}).
Faces: {report['faces']['photos']} photos, {report['faces']['identities']} identities, placed in a
{report['frame'][0]}x{report['frame'][1]} frame. Threshold {report['match_threshold']}.</p>
<p>Gate: {html.escape(gate['rule'])}. Failures: {html.escape(str(gate['failures']) or 'none')}</p>
<p>Recommended: pre_norm_gate <b>{report['recommended']['pre_norm_gate']}</b>, match_threshold
<b>{report['recommended']['match_threshold']}</b> ({html.escape(report['recommended']['why'])}).</p>
<table><tr>{''.join(f'<th>{html.escape(c)}</th>' for c, _ in cols)}</tr>{rows}</table>
{''.join(f'<p><img src="{f}" alt="{f}"></p>' for f in files)}
</body></html>"""
    (out / "fidelity.html").write_text(page)

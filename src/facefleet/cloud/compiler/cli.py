"""``facefleet build hef|fidelity|probes|alls|calib``: argparse wiring for the operator build tools.

Heavy imports (onnxruntime quantization, matplotlib, rich, the DFC) happen inside the handlers.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from facefleet.errors import FacefleetError

log = logging.getLogger(__name__)


def _roots(args):
    from facefleet.cloud.compiler.spec import Roots

    return Roots(assets=Path(args.assets_root) if args.assets_root else None,
                 models=Path(args.models_root) if args.models_root else None)


def cmd_hef(args) -> int:
    from facefleet.cloud.compiler.hef import build_hef

    res = build_hef(args.spec, args.out, roots=_roots(args), smoke=args.smoke, prefer=args.dfc,
                    container=args.container, progress=not args.no_progress)
    print(json.dumps({"hef": str(res.hef), "json": str(res.json), "har": str(res.har), "sha256": res.sha256,
                      "seconds": res.seconds}))
    return 0


def cmd_alls(args) -> int:
    from facefleet.cloud.compiler.alls import render_alls
    from facefleet.cloud.compiler.spec import load_build_spec

    sys.stdout.write(render_alls(load_build_spec(args.spec)))
    return 0


def cmd_check(args) -> int:
    from facefleet.cloud.compiler.hef import check_nodes, check_onnx
    from facefleet.cloud.compiler.spec import load_build_spec

    roots = _roots(args)
    for path in args.specs:
        spec = load_build_spec(path)
        onnx_path = roots.resolve(spec.onnx.path, Path(path).resolve().parent)
        check_onnx(spec, onnx_path)
        check_nodes(spec, onnx_path)
        print(f"{path}: ok ({onnx_path})")
    return 0


def cmd_calib(args) -> int:
    import numpy as np

    from facefleet.cloud.compiler.calibration import build_calibration
    from facefleet.cloud.compiler.hef import default_detector
    from facefleet.cloud.compiler.spec import load_build_spec

    spec = load_build_spec(args.spec)
    det = default_detector() if spec.calibration.source == "faces" and not args.smoke else None
    cal = build_calibration(spec, _roots(args), Path(args.spec).resolve().parent, detector=det, smoke=args.smoke)
    out = Path(args.out)
    tmp = out.with_name(out.name + ".part.npy")
    np.save(tmp, cal.data)
    tmp.replace(out)
    print(json.dumps({"file": str(out), "shape": list(cal.data.shape), "sha256": cal.sha256, "source": cal.source}))
    return 0


def cmd_fidelity(args) -> int:
    from facefleet.assets import default_model
    from facefleet.cloud.compiler.fidelity import GATE_EXIT, FidelityOptions, run_fidelity

    sizes = tuple(int(s) for s in args.sizes.split(","))
    if any(s < 8 for s in sizes):
        raise FacefleetError("--sizes: face sizes must be >= 8 px")
    faces = Path(args.faces) if args.faces else _roots(args).resolve("${assets}/faces/people", Path.cwd())
    opts = FidelityOptions(sizes=sizes, margin=args.margin, gate_min_px=args.gate_min_px, activations=args.activations,
                           float_nodes=tuple(args.float_node or ()), calib_size=args.calib_size,
                           det_max_side=args.det_max_side, match_threshold=args.threshold)
    report = run_fidelity(Path(args.model), faces, Path(args.out), detector_path=Path(args.detector or default_model("detector")),
                          opts=opts, calib_folder=Path(args.calib) if args.calib else None,
                          har=Path(args.har) if args.har else None, model_json=Path(args.model_json) if args.model_json else None)
    gate = report["gate"]
    print(json.dumps({"passed": gate["passed"], "report": str(Path(args.out) / "fidelity.json"),
                      "html": str(Path(args.out) / "fidelity.html"), "recommended": report["recommended"],
                      "seconds": report["seconds"]["total"]}))
    if not gate["passed"]:
        sys.stderr.write(f"facefleet: fidelity gate FAILED: {gate['failures']}\n")
        return GATE_EXIT
    return 0


def cmd_probes(args) -> int:
    from facefleet.cloud.compiler.probes import build_probes

    faces = Path(args.faces) if args.faces else _roots(args).resolve("${assets}/faces/people", Path.cwd())
    _, summary = build_probes(Path(args.model), faces, float_model=Path(args.float) if args.float else None,
                              out=Path(args.out) if args.out else None, count=args.count, min_cosine=args.min_cosine,
                              min_iou=args.min_iou, fidelity=Path(args.fidelity) if args.fidelity else None)
    print(json.dumps(summary))
    return 0


def cmd_noise(args) -> int:
    from facefleet.assets import default_model
    from facefleet.cloud.compiler.noise import run_noise

    if args.top < 1:
        raise FacefleetError("--top must be >= 1")
    faces = Path(args.faces) if args.faces else _roots(args).resolve("${assets}/faces/people", Path.cwd())
    r = run_noise(Path(args.model), faces, Path(args.out), detector_path=Path(args.detector or default_model("detector")),
                  top=args.top, activations=args.activations, calib_size=args.calib_size)
    print(f"# proposed for the build spec ({r['model']}):")
    print(r["spec_lines"], end="")
    print(f"# onnxruntime analogue: facefleet build fidelity MODEL {r['fidelity_args']}")
    for name, res in r["effect"].items():
        print(f"# {name}: " + ", ".join(f"{px}px cos {v['cos_mean']:.3f} E {v['E_mean']:.2f}" for px, v in res.items()))
    print(f"# report: {Path(args.out) / 'noise.json'}, plot: {r['plot']}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("build", help="operator builds: ONNX -> HEF, quantization fidelity gate")
    sub = p.add_subparsers(dest="build_cmd", required=True)

    def roots(sp):
        sp.add_argument("--assets-root", help="what ${assets} means in specs (default: $FACEFLEET_ASSETS or ../shared/assets)")
        sp.add_argument("--models-root", help="what ${models} means in specs (default: $FACEFLEET_MODELS)")

    h = sub.add_parser("hef", help="build spec -> calibration -> parse -> optimize -> compile -> <model>.hef + .json")
    h.add_argument("spec", help="build spec YAML (build/specs/*.yaml)")
    h.add_argument("--out", default="artifacts/hef", help="output folder")
    h.add_argument("--smoke", action="store_true", help="random calibration (smoke builds only; never ship)")
    h.add_argument("--dfc", choices=["auto", "sdk", "cli"], default="auto", help="hailo_sdk_client API or the hailo CLI")
    h.add_argument("--container", help="run the hailo CLI inside this Software Suite image (docker)")
    h.add_argument("--no-progress", action="store_true", help="no progress display")
    roots(h)
    h.set_defaults(func=cmd_hef)

    a = sub.add_parser("alls", help="print the model script a spec renders to")
    a.add_argument("spec")
    a.set_defaults(func=cmd_alls)

    c = sub.add_parser("check", help="validate specs: schema, ONNX present with its sha256, node names")
    c.add_argument("specs", nargs="+")
    roots(c)
    c.set_defaults(func=cmd_check)

    k = sub.add_parser("calib", help="write a spec's calibration set as .npy (uint8 NHWC)")
    k.add_argument("spec")
    k.add_argument("--out", required=True)
    k.add_argument("--smoke", action="store_true")
    roots(k)
    k.set_defaults(func=cmd_calib)

    f = sub.add_parser("fidelity", help="float vs quantized on real faces at 112..28 px; exit 3 when the gate fails")
    f.add_argument("model", help="float recognizer ONNX (with its ModelSpec: sidecar or catalog)")
    f.add_argument("--faces", help="folder of <identity>/<photo> (default: ${assets}/faces/people)")
    f.add_argument("--out", default="artifacts/fidelity", help="report folder (JSON, PNG, HTML)")
    f.add_argument("--detector", help="detector ONNX (default: the assets' det_500m)")
    f.add_argument("--har", help="quantized HAR: use the DFC emulator (SDK_QUANTIZED) instead of onnxruntime")
    f.add_argument("--activations", choices=["int8", "int16"], default="int8", help="onnxruntime stand-in activations")
    f.add_argument("--float-node", action="append", help="ONNX node kept in float (repeatable): the 16-bit analogue")
    f.add_argument("--calib", help="calibration face folder (default: the --faces photos)")
    f.add_argument("--calib-size", type=int, default=128)
    f.add_argument("--sizes", default="112,80,56,40,28", help="face heights, px")
    f.add_argument("--margin", type=float, default=0.05, help="allowed match-rate drop vs float")
    f.add_argument("--gate-min-px", type=int, default=40, help="the gate applies to faces at least this tall")
    f.add_argument("--threshold", type=float, help="match threshold (default: the model's spec)")
    f.add_argument("--det-max-side", type=int, default=1280, help="detector input long side for the 1280x720 frames")
    f.add_argument("--model-json", help="write the recommended pre_norm_gate/threshold into this recognizer ModelSpec JSON")
    roots(f)
    f.set_defaults(func=cmd_fidelity)

    pr = sub.add_parser("probes", help="the quality canary's probe set of a model: <model>.probes.npz beside it")
    pr.add_argument("model", help="the model to ship (recognizer or detector ONNX, with its ModelSpec)")
    pr.add_argument("--float", help="the float model whose outputs are the reference (default: MODEL itself)")
    pr.add_argument("--faces", help="folder of <identity>/<photo> (default: ${assets}/faces/people)")
    pr.add_argument("--out", help="probe file (default: <model>.probes.npz beside the model)")
    pr.add_argument("--count", type=int, default=8, help="probe crops (recognizer) or frames (detector)")
    pr.add_argument("--fidelity", help="fidelity.json: min_cosine = lowest p5 float-vs-quantized cosine at gated sizes - margin")
    pr.add_argument("--min-cosine", type=float, default=0.9, help="recognizer tolerance without --fidelity")
    pr.add_argument("--min-iou", type=float, default=0.5, help="detector tolerance: IoU of each float box")
    roots(pr)
    pr.set_defaults(func=cmd_probes)

    n = sub.add_parser("noise", help="rank layers by quantization SNR, propose 16-bit overrides, show their effect")
    n.add_argument("model", help="float recognizer ONNX (with its ModelSpec)")
    n.add_argument("--faces", help="face folder (default: ${assets}/faces/people)")
    n.add_argument("--out", default="artifacts/noise")
    n.add_argument("--detector", help="detector ONNX (default: the assets' det_500m)")
    n.add_argument("--top", type=int, default=4, help="how many layers to propose")
    n.add_argument("--activations", choices=["int8", "int16"], default="int8")
    n.add_argument("--calib-size", type=int, default=64)
    roots(n)
    n.set_defaults(func=cmd_noise)

"""``facefleet models canary MODEL...``: run a model's probe set on this machine, as the component
does before serving it; prints the figures (JSON, one line per model); exit 3 when one fails."""

from __future__ import annotations

import json
from pathlib import Path

from facefleet.errors import FacefleetError

CANARY_EXIT = 3  # as the fidelity gate: "the model is not fit to serve"


def cmd_canary(args) -> int:
    from facefleet.modelspec import resolve_model
    from facefleet.recognition.canary import check_detector, check_recognizer, load_probes, probes_path
    from facefleet.recognition.models import Detector, Recognizer
    from facefleet.runtime import create_backend

    backend = create_backend(args.backend)
    failed = 0
    for m in map(Path, args.models):
        pp = probes_path(m)
        if not pp.is_file():
            raise FacefleetError(f"no probe set {pp} (facefleet build probes makes one)")
        probes = load_probes(pp)
        model = backend.load(resolve_model(m))
        try:
            obj = Recognizer(model) if model.spec.kind == "recognizer" else Detector(model)
            result = (check_recognizer if model.spec.kind == "recognizer" else check_detector)(obj, probes)
        finally:
            model.close()
        print(json.dumps({"file": str(m), "role": result.role, **result.as_dict(), "failed": result.failed}))
        failed += not result.passed
    return CANARY_EXIT if failed else 0


def register(models_sub) -> None:
    c = models_sub.add_parser("canary", help="run models' probe sets (<model>.probes.npz) as the component does before "
                              "serving; exit 3 when one is out of tolerance")
    c.add_argument("models", nargs="+", metavar="MODEL")
    c.add_argument("--backend", default="onnx", choices=["onnx", "hailo"])
    c.set_defaults(func=cmd_canary)

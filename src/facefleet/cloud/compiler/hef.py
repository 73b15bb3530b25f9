"""``facefleet build hef``: build spec -> calibration -> parse -> optimize -> compile -> HEF + ModelSpec.

Everything is written into a temporary folder beside the outputs and renamed into place at the
end (HEF first, its JSON last), so a failed build leaves nothing a device could pick up.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from facefleet import __version__
from facefleet.cloud.compiler.alls import render_alls
from facefleet.cloud.compiler.calibration import build_calibration
from facefleet.cloud.compiler.dfc import Compiler, net_name, open_compiler
from facefleet.cloud.compiler.resolve import resolve
from facefleet.cloud.compiler.spec import BuildSpec, Roots, load_build_spec
from facefleet.errors import FacefleetError
from facefleet.modelspec import sha256_file

log = logging.getLogger(__name__)
STAGES = ("calibration", "parse", "optimize", "compile", "write")


@dataclass
class BuildResult:
    hef: Path
    json: Path
    har: Path | None
    sha256: str
    seconds: dict[str, float] = field(default_factory=dict)


def check_onnx(spec: BuildSpec, path: Path) -> str:
    """The ONNX exists and is the one the spec pins; returns its sha256."""
    if not path.is_file():
        raise FacefleetError(f"{spec.name}: ONNX not found: {path}")
    digest = sha256_file(path)
    if spec.onnx.sha256 is None:
        log.warning("%s: spec pins no sha256; recording %s", spec.name, digest)
    elif digest != spec.onnx.sha256:
        raise FacefleetError(f"{spec.name}: {path.name} sha256 {digest[:12]}... does not match the spec ({spec.onnx.sha256[:12]}...)")
    return digest


def check_nodes(spec: BuildSpec, path: Path) -> None:
    """Start/end names exist in the graph: caught here in one line instead of deep in the DFC."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as e:
        raise FacefleetError(f"{spec.name}: cannot read ONNX {path}: {type(e).__name__}") from None
    nodes = {n.name for n in graph.node}
    inputs = {i.name for i in graph.input} - {i.name for i in graph.initializer}
    bad_start = [n for n in spec.start_nodes if n not in nodes and n not in inputs]
    bad_end = [n for n in spec.end_nodes if n not in nodes]
    if bad_start:
        raise FacefleetError(f"{spec.name}: start node(s) {bad_start} not in {path.name} (inputs: {sorted(inputs)})")
    if bad_end:
        raise FacefleetError(f"{spec.name}: end node(s) {bad_end} not in {path.name}")
    if spec.input.name not in inputs and spec.input.name not in nodes:
        raise FacefleetError(f"{spec.name}: input {spec.input.name!r} not in {path.name} (inputs: {sorted(inputs)})")
    det = spec.device.detector
    muls = [n.name for n in graph.node if n.name in spec.end_nodes and n.op_type == "Mul"]
    if det is not None and det.model_dump().get("bbox_scales") is not None and muls:
        raise FacefleetError(f"{spec.name}: end nodes {muls} keep SCRFD's bbox scale inside the HEF (as the zoo's do); "
                             f"device.detector.bbox_scales would scale the boxes twice: set it to null")


def default_detector():
    from facefleet.assets import default_model
    from facefleet.modelspec import resolve_model
    from facefleet.recognition.models import Detector
    from facefleet.runtime.onnx import OnnxBackend

    return Detector(OnnxBackend().load(resolve_model(default_model("detector"), kind="detector")))


class _Stages:
    """Per-stage progress on stderr (rich), and the time each stage took."""

    def __init__(self, name: str, show: bool):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.seconds: dict[str, float] = {}
        self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                                  console=Console(stderr=True), disable=not show, transient=False)
        self._task = self._progress.add_task(f"{name}: starting", total=len(STAGES))
        self._name = name

    def __enter__(self):
        self._progress.start()
        return self

    def __exit__(self, *exc):
        self._progress.stop()

    def run(self, stage: str, fn: Callable, *a, **kw):
        self._progress.update(self._task, description=f"{self._name}: {stage}")
        t0 = time.perf_counter()
        out = fn(*a, **kw)
        self.seconds[stage] = round(time.perf_counter() - t0, 3)
        log.info("%s: %s done in %.1f s", self._name, stage, self.seconds[stage])
        self._progress.advance(self._task)
        return out


def _device_json(spec: BuildSpec, hef_name: str, hef_sha: str, provenance: dict, names: dict) -> dict:
    ms = spec.device_spec(hef_name, hef_sha, provenance, names)
    if ms is not None:
        return ms.model_dump(mode="json")
    if spec.device.outputs and spec.device.outputs != names["outputs"]:
        log.warning("%s: device.outputs %s are %s in the parsed HAR: using the HAR's", spec.name, spec.device.outputs,
                    names["outputs"])
    return {"name": spec.name, "kind": "generic", "format": "hef", "file": hef_name, "sha256": hef_sha,
            "outputs": names["outputs"], "host_postprocess": spec.device.host_postprocess,
            "provenance": provenance, "notes": spec.notes}


def build_hef(spec_path: str | Path, out_dir: str | Path, *, roots: Roots | None = None,
              compiler: Callable[[str], Compiler] | None = None, smoke: bool = False, detector=None,
              prefer: str = "auto", container: str | None = None, progress: bool = True) -> BuildResult:
    spec_path = Path(spec_path)
    spec = load_build_spec(spec_path)
    roots = roots or Roots()
    base = spec_path.resolve().parent
    onnx_path = roots.resolve(spec.onnx.path, base)
    onnx_sha = check_onnx(spec, onnx_path)
    check_nodes(spec, onnx_path)
    out = Path(out_dir)
    make = compiler or (lambda arch: open_compiler(arch, prefer=prefer, container=container))
    dfc = make(spec.hw_arch)  # before any work: "no DFC here" is the commonest failure
    if spec.calibration.source == "faces" and detector is None and not smoke:
        detector = default_detector()
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", dir=out))
    try:
        with _Stages(spec.name, progress) as st:
            calib = st.run("calibration", build_calibration, spec, roots, base, detector=detector, smoke=smoke)
            st.run("parse", dfc.parse, onnx_path, net_name(spec.name), spec.start_nodes, spec.end_nodes,
                   {spec.input.name: list(spec.input.shape)}, tmp)
            har = dfc.har_info()
            resolved = resolve(spec, har)  # layer names from the parsed HAR, never from the spec
            alls = render_alls(spec, resolved).replace(f"calibset_size={spec.calibration.size}",
                                                       f"calibset_size={calib.size}")
            st.run("optimize", dfc.optimize, alls, calib.data, tmp)
            hef_bytes = st.run("compile", dfc.compile, tmp)
            if not hef_bytes:
                raise FacefleetError(f"{spec.name}: the DFC returned an empty HEF")

            def write() -> tuple[Path, Path, Path, str]:
                hef_tmp = tmp / f"{spec.name}.hef.part"
                hef_tmp.write_bytes(hef_bytes)
                har_tmp = tmp / f"{spec.name}.q.har.part"
                dfc.save_har(har_tmp)
                hef_sha = sha256_file(hef_tmp)
                provenance = {
                    "built_by": f"facefleet {__version__}",
                    "built_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "hw_arch": spec.hw_arch,
                    "har": {"net": har.net, "input": har.input, "outputs": {k: list(v) for k, v in har.outputs.items()}},
                    "onnx": {"file": onnx_path.name, "sha256": onnx_sha},
                    "build_spec_file": spec_path.name,
                    "build_spec": spec.model_dump(mode="json"),
                    "alls": alls,
                    "calibration": {"sha256": calib.sha256, "size": calib.size, "source": calib.source, "smoke": smoke},
                    "dfc": {"backend": dfc.name, "version": dfc.version},
                    "stage_seconds": dict(st.seconds),
                }
                json_tmp = tmp / f"{spec.name}.json.part"
                json_tmp.write_text(json.dumps(_device_json(spec, f"{spec.name}.hef", hef_sha, provenance, resolved.names),
                                                 indent=1) + "\n")
                return hef_tmp, har_tmp, json_tmp, hef_sha

            hef_tmp, har_tmp, json_tmp, hef_sha = st.run("write", write)
        hef, har, js = out / f"{spec.name}.hef", out / f"{spec.name}.q.har", out / f"{spec.name}.json"
        os.replace(hef_tmp, hef)
        os.replace(har_tmp, har)
        os.replace(json_tmp, js)  # last: a device only trusts a HEF whose JSON exists
        return BuildResult(hef, js, har, hef_sha, st.seconds)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created and not any(out.iterdir()):
            out.rmdir()
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

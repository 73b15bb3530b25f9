"""The Hailo Dataflow Compiler behind one small interface: its Python API, or its CLI.

``hailo_sdk_client.ClientRunner`` is used when importable (the Software Suite's venv); otherwise
the ``hailo`` command, optionally run inside the Software Suite container. Calls and flags are
the ones Hailo's own code uses (shared/reference/dfc_api.md §1-2).
"""

from __future__ import annotations

import importlib
import logging
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from facefleet.cloud.compiler.har import HarInfo, from_hn_model, read_har
from facefleet.errors import FacefleetError

log = logging.getLogger(__name__)


class Compiler(Protocol):
    name: str
    version: str

    def parse(self, onnx_path: Path, net_name: str, start: list[str], end: list[str], shapes: dict[str, list[int]],
              work_dir: Path) -> None: ...
    def optimize(self, alls: str, calib: np.ndarray, work_dir: Path) -> None: ...
    def compile(self, work_dir: Path) -> bytes: ...
    def save_har(self, path: Path) -> None: ...
    def har_info(self) -> HarInfo: ...


def net_name(name: str) -> str:
    """The network name as the DFC keeps it: the zoo parses ``scrfd_2.5g`` (cfg/networks/scrfd_2.5g.yaml)
    and its HEF's vstreams are ``scrfd_2_5g/...`` (hailo-apps scrfd.cpp:33-51): '.' becomes '_'.
    Passing it already so keeps the HAR's file name and the layer prefix predictable."""
    return name.replace(".", "_")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


class SdkCompiler:
    """Through ``hailo_sdk_client.ClientRunner``."""

    name = "hailo_sdk_client"

    def __init__(self, sdk, hw_arch: str):
        self._sdk = sdk
        self.version = str(getattr(sdk, "__version__", "unknown"))
        self.runner = sdk.ClientRunner(hw_arch=hw_arch)

    def _call(self, stage: str, fn: Callable, *a, **kw):
        try:
            return fn(*a, **kw)
        except Exception as e:  # the DFC raises its own exception zoo; the operator needs one line
            raise FacefleetError(f"DFC {stage} failed: {_first_line(e)}") from None

    def parse(self, onnx_path, net_name, start, end, shapes, work_dir) -> None:
        self._call("parse", self.runner.translate_onnx_model, str(onnx_path), net_name,
                   start_node_names=start, end_node_names=end, net_input_shapes=shapes)

    def optimize(self, alls, calib, work_dir) -> None:
        self._call("model script", self.runner.load_model_script, alls)
        self._call("optimize", self.runner.optimize, calib)

    def compile(self, work_dir) -> bytes:
        return self._call("compile", self.runner.compile)

    def save_har(self, path) -> None:
        self._call("save_har", self.runner.save_har, str(path))

    def har_info(self) -> HarInfo:
        return self._call("get_hn_model", lambda: from_hn_model(self.runner.get_hn_model()))


class CliCompiler:
    """Through the ``hailo`` command (``parser onnx`` -> ``optimize`` -> ``compiler``), optionally in a container."""

    name = "hailo-cli"

    def __init__(self, hw_arch: str, container: str | None = None, run: Callable = subprocess.run,
                 docker: str = "docker"):
        self.hw_arch = hw_arch
        self.container = container
        self._run = run
        self._docker = docker
        self._har: Path | None = None
        self._mounts: list[Path] = []
        out = self._exec(["--version"], Path.cwd(), check=False)
        self.version = (out or "unknown").strip().splitlines()[-1] if out else "unknown"

    def _exec(self, args: Sequence[str], cwd: Path, check: bool = True) -> str:
        cmd = ["hailo", *args]
        if self.container:
            mounts = [x for m in {cwd, *self._mounts} for x in ("-v", f"{m}:{m}")]
            cmd = [self._docker, "run", "--rm", *mounts, "-w", str(cwd), self.container, *cmd]
        log.info("running %s", " ".join(cmd))
        try:
            proc = self._run(cmd, cwd=str(cwd), capture_output=True, text=True)
        except FileNotFoundError:
            raise FacefleetError(f"{cmd[0]} not found: install the Hailo DFC or pass --container") from None
        if check and proc.returncode != 0:
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()
            raise FacefleetError(f"`hailo {args[0]}` failed (exit {proc.returncode}): {tail[-1] if tail else 'no output'}")
        return proc.stdout

    def _newest(self, work_dir: Path, pattern: str, stage: str) -> Path:
        found = sorted(work_dir.glob(pattern), key=lambda p: p.stat().st_mtime)
        if not found:
            raise FacefleetError(f"`hailo {stage}` wrote no {pattern} in {work_dir}")
        return found[-1]

    def parse(self, onnx_path, net_name, start, end, shapes, work_dir) -> None:
        """``hailo parser onnx`` on a copy of the ONNX whose inputs have the spec's static shapes:
        the ``--tensor-shapes`` syntax is not documented in Hailo's public sources, a static input is."""
        static = _static_onnx(Path(onnx_path), shapes, Path(work_dir))
        self._mounts = [Path(onnx_path).parent.resolve()]
        args = ["parser", "onnx", static.name, "--net-name", net_name, "--start-node-names", *start,
                "--end-node-names", *end, "--hw-arch", self.hw_arch, "-y"]
        before = set(Path(work_dir).glob("*.har"))
        self._exec(args, work_dir)
        new = sorted(set(Path(work_dir).glob("*.har")) - before)
        if not new:
            raise FacefleetError(f"`hailo parser` wrote no .har in {work_dir}")
        self._har = new[-1]

    def optimize(self, alls, calib, work_dir) -> None:
        (work_dir / "model.alls").write_text(alls)
        np.save(work_dir / "calib.npy", calib)
        before = set(work_dir.glob("*.har"))
        self._exec(["optimize", self._har.name, "--calib-set-path", "calib.npy", "--model-script", "model.alls",
                    "--hw-arch", self.hw_arch], work_dir)
        new = sorted(set(work_dir.glob("*.har")) - before) or [self._newest(work_dir, "*optimized*.har", "optimize")]
        self._har = new[-1]

    def compile(self, work_dir) -> bytes:
        self._exec(["compiler", self._har.name, "--hw-arch", self.hw_arch], work_dir)
        return self._newest(work_dir, "*.hef", "compiler").read_bytes()

    def save_har(self, path) -> None:
        shutil.copyfile(self._har, path)

    def har_info(self) -> HarInfo:
        return read_har(self._har)


def _static_onnx(path: Path, shapes: dict[str, list[int]], work_dir: Path) -> Path:
    """``work_dir/<stem>.static.onnx``: the model with each named input fixed to its shape."""
    import onnx

    try:
        model = onnx.load(str(path))
    except Exception as e:
        raise FacefleetError(f"cannot read ONNX {path}: {type(e).__name__}") from None
    for vi in model.graph.input:
        if vi.name in shapes:
            for d, v in zip(vi.type.tensor_type.shape.dim, shapes[vi.name], strict=True):
                d.ClearField("dim_param")
                d.dim_value = int(v)
    out = work_dir / f"{path.stem}.static.onnx"
    onnx.save(model, str(out))
    return out


def open_compiler(hw_arch: str, prefer: str = "auto", container: str | None = None) -> Compiler:
    """The SDK when importable (unless ``prefer='cli'``), else the CLI (on PATH, or in ``container``)."""
    if prefer in ("auto", "sdk") and not container:
        try:
            sdk = importlib.import_module("hailo_sdk_client")
        except ImportError:
            if prefer == "sdk":
                raise FacefleetError("hailo_sdk_client is not importable: run inside the Hailo AI Software Suite") from None
        else:
            return SdkCompiler(sdk, hw_arch)
    if not container and shutil.which("hailo") is None:
        raise FacefleetError("no Hailo Dataflow Compiler here: neither hailo_sdk_client nor the `hailo` command "
                             "(install the AI Software Suite, or pass --container IMAGE)")
    return CliCompiler(hw_arch, container)

"""Hailo-8 backend on HailoRT's InferModel API (``hailo_platform`` 4.18-4.23).

One ``VDevice`` per process, created with the ROUND_ROBIN scheduler (the Python default is
NONE, with which nothing runs), shared by every model this backend loads: the detector, the
recognizer and every camera's pipeline use ONE ``HailoBackend``. Each HEF becomes one
``InferModel``, configured once; loading the same HEF again shares it.

At this boundary, and only here, the pipeline's uint8 BGR frames become the HEF's input (UINT8
NHWC in the colour order the spec names; normalization lives in the HEF) in preallocated
buffers; outputs are asked as FLOAT32, so HailoRT dequantizes them. A batch of faces is one
``run_async`` with a list of bindings. ``infer_seconds`` is the time spent waiting for the
device, so benchmarks can tell host time from device time.

``hailo_platform`` comes from the OS package (``hailo-all`` / ``python3-hailort``) and is
imported lazily.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pydantic import BaseModel, ValidationError

from facefleet.errors import FacefleetError
from facefleet.modelspec import InputSpec, ModelSpec, ResolvedModel, load_catalog
from facefleet.vision.detectors import OutputMismatch

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_MS = 10_000


def _import():
    """(hailo_platform, hailo_platform.pyhailort.pyhailort): the exceptions live in the latter."""
    try:
        import hailo_platform
        from hailo_platform.pyhailort import pyhailort
    except ImportError as e:
        raise FacefleetError(
            f"the hailo backend needs HailoRT's python bindings (apt install hailo-all or python3-hailort; "
            f"the venv must see system packages): {e}") from None
    return hailo_platform, pyhailort


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")


# --- HEF introspection -----------------------------------------------------------------------


@dataclass(frozen=True)
class HefIO:
    """What a HEF says about its edges: input (name, (h, w, c)) and outputs by name -> shape."""

    network: str
    input_name: str
    input_shape: tuple[int, ...]
    outputs: dict[str, tuple[int, ...]]


def hef_io(hef) -> HefIO:
    """Read the edges of a ``hailo_platform.HEF`` (first network group)."""
    inputs = hef.get_input_vstream_infos()
    if len(inputs) != 1:
        raise FacefleetError(f"HEF {hef.path}: expected one input, found {[i.name for i in inputs]}")
    outs = {o.name: tuple(int(d) for d in o.shape) for o in hef.get_output_vstream_infos()}
    return HefIO(hef.get_network_group_names()[0], inputs[0].name, tuple(int(d) for d in inputs[0].shape), outs)


def scrfd_heads_by_shape(outputs: dict[str, tuple[int, ...]], in_h: int, in_w: int, strides: tuple[int, ...],
                         anchors: int) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Map SCRFD raw heads (channel-last ``(H, W, C)``) to (scores, bbox, kps) per stride.

    By shape, not by name: the grid gives the stride (H = in_h / stride), the channels give the
    head (anchors x 1 scores, x 4 box distances, x 10 landmarks). Layer names change with every
    compile; shapes do not.
    """
    per = {anchors: 0, anchors * 4: 1, anchors * 10: 2}
    found: dict[tuple[int, int], list[str]] = {}
    for name, shape in outputs.items():
        if len(shape) != 3:
            continue
        h, w, c = shape
        for si, s in enumerate(strides):
            if (h, w) == (-(-in_h // s), -(-in_w // s)) and c in per:
                found.setdefault((si, per[c]), []).append(name)
    heads: list[list[str]] = [[], [], []]
    for kind in range(3):
        for si, s in enumerate(strides):
            names = found.get((si, kind), [])
            if len(names) != 1:
                what = ("scores", "bbox", "kps")[kind]
                raise FacefleetError(
                    f"HEF outputs do not fit SCRFD: {len(names)} {what} heads for stride {s} "
                    f"(outputs: {', '.join(f'{n} {list(sh)}' for n, sh in outputs.items())})")
            heads[kind].append(names[0])
    return tuple(heads[0]), tuple(heads[1]), tuple(heads[2])


def spec_from_hef(io: HefIO, template: ModelSpec, file: str, name: str | None = None) -> ModelSpec:
    """The ModelSpec of a HEF: edges from the HEF, everything else from ``template``.

    The template is the spec of the model the HEF was compiled from (its ONNX catalog entry)
    or a zoo entry: it holds what a HEF does not (strides, anchors, bbox scales, whether scores
    are logits, the match threshold, the colour order it was trained in).
    """
    if len(io.input_shape) != 3 or io.input_shape[2] != 3:
        raise FacefleetError(f"HEF {file}: input {io.input_name} has shape {list(io.input_shape)}, expected (h, w, 3)")
    h, w, _ = io.input_shape
    inp = InputSpec(name=io.input_name, width=w, height=h, layout="NHWC", color=template.input.color, dtype="uint8",
                    max_batch=template.input.max_batch if template.kind == "recognizer" else 1,
                    size_multiple=template.input.size_multiple, letterbox=template.input.letterbox)
    update: dict = {"name": name or template.name, "format": "hef", "file": file, "sha256": None, "input": inp,
                    "normalization": None,
                    "provenance": {**template.provenance, "spec_from_hef": {"template": template.name}}}
    if template.kind == "detector":
        try:  # each detector family maps the HEF's heads itself (vision/detectors/<family>.py)
            update["detector"] = template.detector.bind_hef(io.outputs, h, w)
        except OutputMismatch as e:
            raise FacefleetError(f"HEF {file}: {e}") from None
    else:
        flat = {n: s for n, s in io.outputs.items() if len(s) == 1}
        if len(flat) != 1:
            raise FacefleetError(f"HEF {file}: expected one embedding output, found {sorted(io.outputs)}")
        (out, (size,)), = flat.items()
        update["recognizer"] = template.recognizer.model_copy(update={"output": out, "embedding_size": size})
    data = template.model_dump()
    data.update({k: v.model_dump() if isinstance(v, BaseModel) else v for k, v in update.items()})
    return ModelSpec.model_validate(data)


def check_spec(spec: ModelSpec, io: HefIO) -> None:
    """Refuse a spec that does not describe this HEF (raises FacefleetError naming the mismatch)."""
    where = f"model {spec.name}"
    if spec.format != "hef":
        raise FacefleetError(f"{where} is a {spec.format} file; the hailo backend runs HEF files")
    i = spec.input
    if i.dtype != "uint8" or i.layout != "NHWC" or spec.normalization is not None:
        raise FacefleetError(f"{where}: a HEF spec needs input dtype uint8, layout NHWC and normalization null "
                             f"(normalization is inside the HEF)")
    if i.name != io.input_name:
        raise FacefleetError(f"{where}: input {i.name!r} is not in the HEF (it has {io.input_name!r})")
    h, w = io.input_shape[:2]
    if (i.width, i.height) != (w, h):
        raise FacefleetError(f"{where}: spec input {i.width}x{i.height}, the HEF takes {w}x{h}")
    if spec.kind == "detector":
        try:
            spec.detector.check_hef(io.outputs, h, w)
        except OutputMismatch as e:
            raise FacefleetError(f"{where}: {e}") from None
    else:
        r = spec.recognizer
        if r.output not in io.outputs:
            raise FacefleetError(f"{where}: output {r.output!r} named by its spec is not in the HEF "
                                 f"(has {sorted(io.outputs)})")
        if int(np.prod(io.outputs[r.output])) != r.embedding_size:
            raise FacefleetError(f"{where}: output {r.output!r} has shape {list(io.outputs[r.output])}, "
                                 f"spec says embedding_size {r.embedding_size}")


def hef_spec(hef_path: str | Path, template: ModelSpec, name: str | None = None) -> ModelSpec:
    """Build the spec of a HEF file from its introspection plus ``template`` (no device needed)."""
    hp, _ = _import()
    path = Path(hef_path)
    if not path.is_file():
        raise FacefleetError(f"HEF not found: {path}")
    try:
        hef = hp.HEF(str(path))
    except Exception as e:
        raise FacefleetError(f"cannot read HEF {path}: {_one_line(e)}") from None
    return spec_from_hef(hef_io(hef), template, path.name, name)


# --- the device -----------------------------------------------------------------------------


class _Configured:
    """One HEF on the device: its InferModel, configured once, shared by every camera that loads it."""

    def __init__(self, infer_model, configured, batch: int, io: HefIO, timeout_ms: int):
        self.infer_model = infer_model
        self.configured = configured
        self.io = io
        self.batch = batch
        self.timeout_ms = timeout_ms
        self.users = 0
        self.submit = threading.Lock()  # wait_for_async_ready + run_async as one step: cameras share the queue

    def close(self) -> None:
        if self.configured is not None:
            try:
                self.configured.shutdown()
            finally:
                self.configured.__exit__(None, None, None)
                self.configured = None


class HailoModel:
    """A spec'd HEF on the shared VDevice, behind the ``LoadedModel`` protocol.

    Each loaded model (one per camera) has its own input/output buffers and bindings, allocated
    once here and reused: cameras sharing a configured HEF never write into each other's arrays,
    and their requests simply queue on the device.
    """

    def __init__(self, spec: ModelSpec, backend: HailoBackend, cfg: _Configured):
        self.spec = spec
        self._backend = backend
        self._cfg: _Configured | None = cfg
        self.infer_seconds = 0.0
        self.calls = 0
        self._rgb = spec.input.color == "RGB"
        self._lock = threading.Lock()
        io = cfg.io
        self._inputs = np.zeros((cfg.batch, *io.input_shape), np.uint8)
        self._outputs = {n: np.zeros((cfg.batch, *s), np.float32) for n, s in io.outputs.items()}
        self._bindings = [
            cfg.configured.create_bindings(
                input_buffers={io.input_name: self._inputs[i]},
                output_buffers={n: buf[i] for n, buf in self._outputs.items()})
            for i in range(cfg.batch)]

    def input_size(self) -> tuple[int | None, int | None]:
        h, w = self._cfg.io.input_shape[:2] if self._cfg else (self.spec.input.height, self.spec.input.width)
        return w, h

    @property
    def output_names(self) -> list[str]:
        return list(self._outputs)

    def _to_input(self, images: np.ndarray, dst: np.ndarray) -> None:
        """BGR -> the HEF's colour order, once, into the preallocated buffer (no per-frame allocation)."""
        if self._rgb:
            for src, out in zip(images, dst, strict=True):
                cv2.cvtColor(src, cv2.COLOR_BGR2RGB, dst=out)  # in place: ~0.04 ms for 640x640, numpy ~0.4 ms
        else:
            np.copyto(dst, images)

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 ``[n,h,w,3]`` BGR -> FLOAT32 outputs ``[n, *shape]`` by name.

        The arrays returned are this model's reusable buffers: valid until its next run.
        """
        cfg = self._cfg
        if cfg is None:
            raise FacefleetError(f"model {self.spec.name} is closed")
        shape = cfg.io.input_shape
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != shape:
            raise ValueError(f"{self.spec.name}: expected uint8 [n,{shape[0]},{shape[1]},{shape[2]}], "
                             f"got {images.dtype} {list(images.shape)}")
        self._backend._check_owner()
        n = len(images)
        _, ph = _import()
        with self._lock:
            if n <= cfg.batch:
                self._to_input(images, self._inputs[:n])
                self._run_batch(cfg, n, ph)
                return {name: buf[:n] for name, buf in self._outputs.items()}
            # more faces than one batch: keep each chunk's results before the buffers are reused
            result = {name: np.empty((n, *buf.shape[1:]), np.float32) for name, buf in self._outputs.items()}
            for start in range(0, n, cfg.batch):
                k = min(cfg.batch, n - start)
                self._to_input(images[start:start + k], self._inputs[:k])
                self._run_batch(cfg, k, ph)
                for name, buf in self._outputs.items():
                    result[name][start:start + k] = buf[:k]
        return result

    def _run_batch(self, cfg: _Configured, k: int, ph) -> None:
        failures: list = []

        def done(completion_info) -> None:
            if completion_info.exception is not None:
                failures.append(completion_info.exception)

        t0 = time.perf_counter()
        try:
            with cfg.submit:
                cfg.configured.wait_for_async_ready(timeout_ms=cfg.timeout_ms, frames_count=k)
                job = cfg.configured.run_async(self._bindings[:k], done)
            job.wait(cfg.timeout_ms)
        except ph.HailoRTTimeout:
            raise FacefleetError(f"model {self.spec.name}: the Hailo device did not answer within {cfg.timeout_ms} ms") \
                from None
        except ph.HailoRTException as e:
            raise FacefleetError(f"model {self.spec.name}: inference failed on the Hailo device: {_one_line(e)}") \
                from None
        finally:
            self.infer_seconds += time.perf_counter() - t0
            self.calls += 1
        if failures:
            raise FacefleetError(f"model {self.spec.name}: inference failed on the Hailo device: {_one_line(failures[0])}")

    def close(self) -> None:
        if self._cfg is not None:
            cfg, self._cfg = self._cfg, None
            self._bindings = []
            self._backend._release(cfg)


class HailoBackend:
    """All Hailo models of a process, on one VDevice (create one, share it across cameras).

    ``max_batch``: faces per recognizer batch when the spec leaves ``input.max_batch`` open;
    ``group_id``: VDevice group (``"SHARED"`` lets other VDevices of this process share the chip).
    """

    name = "hailo"

    def __init__(self, max_batch: int = 8, timeout_ms: int = DEFAULT_TIMEOUT_MS, group_id: str | None = None):
        self._max_batch = max_batch
        self._timeout_ms = timeout_ms
        self._group_id = group_id
        self._vdevice = None
        self._pid: int | None = None
        self._models: dict[str, _Configured] = {}
        self._lock = threading.Lock()

    @property
    def vdevice(self):
        return self._vdevice

    def _device(self, hp, ph):
        if self._vdevice is not None:
            return self._vdevice
        params = hp.VDevice.create_params()
        params.scheduling_algorithm = hp.HailoSchedulingAlgorithm.ROUND_ROBIN
        if self._group_id:
            params.group_id = self._group_id
        try:
            self._vdevice = hp.VDevice(params)
        except ph.HailoRTException as e:
            text = str(e)
            if "IN_USE" in text or "in use" in text:
                raise FacefleetError(f"the Hailo device is busy (held by another process, or by another HailoBackend in this "
                                     f"process: create one backend and share it): {_one_line(e)}") \
                    from None
            if "OUT_OF_PHYSICAL_DEVICES" in text or isinstance(e, ph.HailoRTNotFoundException):
                raise FacefleetError(f"no Hailo device found (check the PCIe card and the hailo driver): {_one_line(e)}") \
                    from None
            raise FacefleetError(f"cannot open the Hailo device: {_one_line(e)}") from None
        self._pid = os.getpid()
        log.info("Hailo VDevice open (ROUND_ROBIN, devices %s)", self._vdevice.get_physical_devices_ids())
        return self._vdevice

    def load(self, model: ResolvedModel) -> HailoModel:
        hp, ph = _import()
        spec = model.spec
        path = Path(model.path)
        if not path.is_file():
            raise FacefleetError(f"HEF not found: {path}")
        if spec.format != "hef":
            raise FacefleetError(f"model {spec.name} is a {spec.format} file; the hailo backend runs HEF files")
        key = f"{path.resolve()}#{spec.sha256}"
        with self._lock:
            cfg = self._models.get(key)
            if cfg is not None:
                self._check_owner()
            if cfg is None:
                cfg = self._configure(hp, ph, path, spec)
                self._models[key] = cfg
            else:
                check_spec(spec, cfg.io)
            cfg.users += 1
        try:
            return HailoModel(spec, self, cfg)
        except BaseException:
            self._release(cfg)
            raise

    def _configure(self, hp, ph, path: Path, spec: ModelSpec) -> _Configured:
        vdevice = self._device(hp, ph)
        try:
            infer_model = vdevice.create_infer_model(str(path))
        except ph.HailoRTInvalidHEFException as e:
            raise FacefleetError(f"{path} is not a valid HEF: {_one_line(e)}") from None
        except ph.HailoRTHEFNotCompatibleWithDevice as e:  # depending on the version, raised here or at configure()
            raise FacefleetError(f"HEF {path.name} is not compatible with this Hailo device (compiled for another "
                                 f"architecture or HailoRT version): {_one_line(e)}") from None
        except ph.HailoRTException as e:
            if os.getpid() != self._pid:
                raise FacefleetError(f"the Hailo device belongs to process {self._pid}: {_one_line(e)}") from None
            raise FacefleetError(f"cannot load HEF {path}: {_one_line(e)}") from None
        io = hef_io(infer_model.hef)
        check_spec(spec, io)
        batch = 1 if spec.kind == "detector" else (spec.input.max_batch or self._max_batch)
        infer_model.input(io.input_name).set_format_type(hp.FormatType.UINT8)
        infer_model.input(io.input_name).set_format_order(hp.FormatOrder.NHWC)
        for name in io.outputs:
            infer_model.output(name).set_format_type(hp.FormatType.FLOAT32)
        infer_model.set_batch_size(batch)
        try:
            configured = infer_model.configure()
        except ph.HailoRTHEFNotCompatibleWithDevice as e:
            raise FacefleetError(f"HEF {path.name} is not compatible with this Hailo device (compiled for another "
                                 f"architecture or HailoRT version): {_one_line(e)}") from None
        except ph.HailoRTException as e:
            raise FacefleetError(f"cannot configure HEF {path.name} on the Hailo device (batch size {batch}): "
                                 f"{_one_line(e)}") from None
        configured.__enter__()
        queue = configured.get_async_queue_size()
        cfg = _Configured(infer_model, configured, max(1, min(batch, queue)), io, self._timeout_ms)
        log.debug("configured %s on the Hailo device: input %s %s, %d outputs, batch %d", spec.name, io.input_name,
                  list(io.input_shape), len(io.outputs), cfg.batch)
        return cfg

    def _check_owner(self) -> None:
        if self._pid is not None and os.getpid() != self._pid:
            raise FacefleetError(f"the Hailo device belongs to process {self._pid}; create a hailo backend in this "
                                 f"process ({os.getpid()})")

    def _release(self, cfg: _Configured) -> None:
        with self._lock:
            cfg.users -= 1
            if cfg.users > 0:
                return
            for key, value in list(self._models.items()):
                if value is cfg:
                    del self._models[key]
        cfg.close()

    def close(self) -> None:
        """Shut down every configured model and release the device (idempotent)."""
        with self._lock:
            models, self._models = list(self._models.values()), {}
        for cfg in models:
            cfg.close()
        if self._vdevice is not None:
            vdevice, self._vdevice = self._vdevice, None
            vdevice.release()


# --- CLI: facefleet hailo spec ----------------------------------------------------------------


def _template(value: str) -> ModelSpec:
    """A template spec: a spec JSON file, or a catalog entry by name."""
    path = Path(value)
    if path.suffix == ".json" and path.is_file():
        try:
            return ModelSpec.model_validate_json(path.read_text())
        except ValidationError as e:
            err = e.errors()[0]
            raise FacefleetError(f"invalid template spec {path}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    specs = load_catalog()
    for spec in specs:
        if spec.name == value:
            return spec
    raise FacefleetError(f"no template {value!r}: give a spec JSON file or one of {', '.join(s.name for s in specs)}")


def _cmd_spec(args) -> int:
    out = args.out or args.hef.with_suffix(".json")
    if out.exists() and not args.force:
        raise FacefleetError(f"{out} exists (use --force to replace it)")
    spec = hef_spec(args.hef, _template(args.template), args.name)
    out.write_text(spec.model_dump_json(indent=1, exclude={"sha256"}) + "\n")
    print(f"{out}: {spec.kind} {spec.name}, input {spec.input.name} {spec.input.width}x{spec.input.height}")
    return 0


def register(subparsers) -> None:
    """``facefleet hailo spec HEF --template T``: the sidecar spec of a HEF (needs hailo_platform, not a device)."""
    p = subparsers.add_parser("hailo", help="Hailo-8 helpers")
    sub = p.add_subparsers(dest="hailo_command", required=True)
    s = sub.add_parser("spec", help="write <hef>.json: the HEF's edges (heads mapped to strides by shape) + a template")
    s.add_argument("hef", type=Path)
    s.add_argument("--template", required=True,
                   help="spec of the model the HEF was compiled from: a catalog name (e.g. scrfd_2.5g_rawheads) or a JSON file")
    s.add_argument("--name", help="model name in the spec (default: the template's)")
    s.add_argument("--out", type=Path, help="where to write (default: the sidecar <hef>.json)")
    s.add_argument("--force", action="store_true", help="replace an existing file")
    s.set_defaults(func=_cmd_spec)


__all__ = ["HailoBackend", "HailoModel", "HefIO", "check_spec", "hef_io", "hef_spec", "register", "scrfd_heads_by_shape",
           "spec_from_hef"]

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

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
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
MULTI_PROCESS_ENV = "FACEFLEET_HAILO_MULTI_PROCESS"


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


def spec_from_hef(io: HefIO, template: ModelSpec, file: str, name: str | None = None,
                  bbox_scales_on_host: bool = False) -> ModelSpec:
    """The ModelSpec of a HEF: edges from the HEF, everything else from ``template``.

    The template is the spec of the model the HEF was compiled from (its ONNX catalog entry)
    or a zoo entry: it holds what a HEF does not (strides, anchors, whether scores are logits,
    the match threshold, the colour order it was trained in).

    SCRFD bbox scales are NOT taken from the template unless ``bbox_scales_on_host``: the zoo's
    HEFs end at the ``Mul`` after each box conv (hailo_model_zoo cfg/networks/scrfd_2.5g.yaml
    ``Mul_116``, scrfd_10g.yaml ``Mul_113``), so the scale is inside and applying it again
    shrinks/grows boxes by -12/-7/+14 % per stride. Only a HEF compiled from a raw-heads export
    cut at the box conv (e.g. ``facefleet build`` of scrfd_2.5g_rawheads, which writes its own
    spec) needs them on the host.
    """
    if len(io.input_shape) != 3 or io.input_shape[2] != 3:
        raise FacefleetError(f"HEF {file}: input {io.input_name} has shape {list(io.input_shape)}, expected (h, w, 3)")
    h, w, _ = io.input_shape
    inp = InputSpec(name=io.input_name, width=w, height=h, layout="NHWC", color=template.input.color, dtype="uint8",
                    max_batch=template.input.max_batch if template.kind == "recognizer" else 1,
                    size_multiple=template.input.size_multiple, letterbox=template.input.letterbox)
    provenance = {**template.provenance, "spec_from_hef": {"template": template.name}}
    update: dict = {"name": name or template.name, "format": "hef", "file": file, "sha256": None, "input": inp,
                    "normalization": None, "provenance": provenance}
    if template.kind == "detector":
        d = template.detector
        try:  # each detector family maps the HEF's heads itself (vision/detectors/<family>.py)
            bound = d.bind_hef(io.outputs, h, w)
        except OutputMismatch as e:
            raise FacefleetError(f"HEF {file}: {e}") from None
        if getattr(d, "bbox_scales", None) is not None:
            provenance["bbox_scale"] = "on_host" if bbox_scales_on_host else "in_hef"
            if not bbox_scales_on_host:
                bound = bound.model_copy(update={"bbox_scales": None})
        update["detector"] = bound
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
        d = spec.detector
        if getattr(d, "bbox_scales", None) is not None and spec.provenance.get("bbox_scale") == "in_hef":
            raise FacefleetError(f"{where}: the bbox scale is inside this HEF (provenance.bbox_scale: in_hef); "
                                 f"detector.bbox_scales must be null, or boxes are scaled twice")
        try:
            d.check_hef(io.outputs, h, w)
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


def hef_spec(hef_path: str | Path, template: ModelSpec, name: str | None = None,
             bbox_scales_on_host: bool = False) -> ModelSpec:
    """Build the spec of a HEF file from its introspection plus ``template`` (no device needed)."""
    hp, _ = _import()
    path = Path(hef_path)
    if not path.is_file():
        raise FacefleetError(f"HEF not found: {path}")
    try:
        hef = hp.HEF(str(path))
    except Exception as e:
        raise FacefleetError(f"cannot read HEF {path}: {_one_line(e)}") from None
    return spec_from_hef(hef_io(hef), template, path.name, name, bbox_scales_on_host)


# --- the device -----------------------------------------------------------------------------


class _Never(Exception):
    """Stands in for an exception class this HailoRT version does not have (never raised)."""


def _exc(ph, name: str) -> type[BaseException]:
    """``ph.<name>`` if this HailoRT has it, else a class nothing raises.

    ``HailoRTHEFNotCompatibleWithDevice`` exists only from HailoRT 4.21.0 (pyhailort.py v4.21.0:94):
    naming it in an ``except`` clause on 4.18-4.20 turns every error into an AttributeError.
    """
    return getattr(ph, name, _Never)


def _incompatible(ph) -> tuple[type[BaseException], ...]:
    """What configure() raises for a HEF the chip cannot run: HAILO_INVALID_HEF up to 4.20
    (device_internal.cpp v4.18.0:604), HAILO_HEF_NOT_COMPATIBLE_WITH_DEVICE from 4.21 (v4.21.0:604)."""
    return (_exc(ph, "HailoRTHEFNotCompatibleWithDevice"), ph.HailoRTInvalidHEFException)


_NOT_COMPATIBLE = ("is not compatible with this Hailo device (compiled for another architecture, e.g. hailo8 on a "
                   "Hailo-8L, or by a Dataflow Compiler newer than this HailoRT)")


class _Late(Exception):
    """A job did not answer in time (it may still write into its buffers)."""


class _Configured:
    """One HEF on the device: its InferModel, configured once, shared by every camera that loads it.

    After a failed job HailoRT's async pipeline is shut down for good (async_infer_runner.cpp
    v4.23.0:62-95, 284-286: "no resume"): ``generation`` counts the re-configurations that
    replaced it.
    """

    def __init__(self, path: Path, spec: ModelSpec, infer_model, configured, batch: int, io: HefIO, timeout_ms: int):
        self.path = path
        self.spec = spec
        self.infer_model = infer_model
        self.configured = configured
        self.io = io
        self.batch = batch
        self.timeout_ms = timeout_ms
        self.users = 0
        self.generation = 0
        self.submit = threading.Lock()  # wait_for_async_ready + run_async as one step: cameras share the queue

    def close(self) -> None:
        if self.configured is not None:
            configured, self.configured = self.configured, None
            try:
                configured.shutdown()  # explicit: __exit__ only drops the reference (pyhailort.py v4.23.0:3213)
            finally:
                configured.__exit__(None, None, None)


class _Buffers:
    """One job's preallocated input and output arrays (a batch)."""

    def __init__(self, cfg: _Configured):
        io = cfg.io
        self.inputs = np.zeros((cfg.batch, *io.input_shape), np.uint8)
        self.outputs = {n: np.zeros((cfg.batch, *s), np.float32) for n, s in io.outputs.items()}


class HailoModel:
    """A spec'd HEF on the shared VDevice, behind the ``LoadedModel`` protocol.

    Several cameras call ``run`` at once from their own threads: each call takes a free set of
    preallocated buffers, converts its images on the host, submits an async job and waits for it
    with no lock held, so the device works on one camera's frame while the host pre/post-processes
    another's (the VDevice's ROUND_ROBIN scheduler interleaves the models). At most
    ``max_in_flight`` calls per model are in flight (a semaphore: bounded buffers, bounded queue);
    the device queue itself is waited for with ``wait_for_async_ready``. Results are copied out
    of the buffers, which go back to the pool for the next call. Bindings are made per call:
    HailoRT 4.18.0 copies them shallowly (infer_model_api.hpp v4.18.0:133), so a reused Bindings
    points at a buffer freed after its first run (infer_model_api.cpp v4.18.0:270-299); Hailo's
    4.18 examples make them per frame too. After a timeout the job still runs and will write into
    its buffers: they are dropped from the pool, so a late write never lands in another result.
    """

    def __init__(self, spec: ModelSpec, backend: HailoBackend, cfg: _Configured):
        self.spec = spec
        self._backend = backend
        self._cfg: _Configured | None = cfg
        self.infer_seconds = 0.0
        self.calls = 0
        self.timeouts = 0
        self._rgb = spec.input.color == "RGB"
        self.max_in_flight = backend.max_in_flight
        self._slots = threading.BoundedSemaphore(self.max_in_flight)
        self._free: list[_Buffers] = []
        self._lock = threading.Lock()  # the free list and the counters, never held during a job
        self.in_flight = 0
        self.peak_in_flight = 0

    def input_size(self) -> tuple[int | None, int | None]:
        h, w = self._cfg.io.input_shape[:2] if self._cfg else (self.spec.input.height, self.spec.input.width)
        return w, h

    @property
    def output_names(self) -> list[str]:
        return list(self._cfg.io.outputs) if self._cfg else []

    def _to_input(self, images: np.ndarray, dst: np.ndarray) -> None:
        """BGR -> the HEF's colour order, once, into the preallocated buffer (no per-frame allocation)."""
        if self._rgb:
            for src, out in zip(images, dst, strict=True):
                cv2.cvtColor(src, cv2.COLOR_BGR2RGB, dst=out)  # in place: ~0.04 ms for 640x640, numpy ~0.4 ms
        else:
            np.copyto(dst, images)

    def _take(self, cfg: _Configured) -> _Buffers:
        with self._lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            return self._free.pop() if self._free else _Buffers(cfg)

    def _give(self, buf: _Buffers | None) -> None:
        with self._lock:
            self.in_flight -= 1
            if buf is not None:
                self._free.append(buf)

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 ``[n,h,w,3]`` BGR -> FLOAT32 outputs ``[n, *shape]`` by name (arrays of their own)."""
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
        with self._slots:  # bounded in-flight work per model
            buf: _Buffers | None = self._take(cfg)
            try:
                result = {name: np.empty((n, *b.shape[1:]), np.float32) for name, b in buf.outputs.items()}
                for start in range(0, n, cfg.batch):
                    k = min(cfg.batch, n - start)
                    self._to_input(images[start:start + k], buf.inputs[:k])
                    try:
                        self._run_batch(cfg, buf, k, ph)
                    except _Late:
                        buf = None  # a timed-out job may still write into these buffers
                        raise FacefleetError(f"model {self.spec.name}: the Hailo device did not answer within "
                                             f"{cfg.timeout_ms} ms") from None
                    for name, b in buf.outputs.items():
                        result[name][start:start + k] = b[:k]
            finally:
                self._give(buf)
        return result

    def _bindings(self, configured, buf: _Buffers, k: int) -> list:
        io = self._cfg.io
        return [configured.create_bindings(input_buffers={io.input_name: buf.inputs[i]},
                                           output_buffers={n: b[i] for n, b in buf.outputs.items()})
                for i in range(k)]

    def _attempt(self, cfg: _Configured, buf: _Buffers, k: int) -> BaseException | None:
        """One job on the device: None when it worked, else the HailoRT error (timeouts raise).
        Only the submission is serialized (the device queue is shared); the wait is not."""
        failures: list = []

        def done(completion_info) -> None:
            if completion_info.exception is not None:  # a job's status arrives here, never from wait()
                failures.append(completion_info.exception)

        with cfg.submit:
            configured = cfg.configured
            if configured is None:
                raise FacefleetError(f"model {self.spec.name} is closed")
            generation = cfg.generation
            configured.wait_for_async_ready(timeout_ms=cfg.timeout_ms, frames_count=k)
            job = configured.run_async(self._bindings(configured, buf, k), done)
        job.wait(cfg.timeout_ms)
        if failures:
            failures[0].generation = generation  # type: ignore[attr-defined]
            return failures[0]
        return None

    def _run_batch(self, cfg: _Configured, buf: _Buffers, k: int, ph) -> None:
        t0 = time.perf_counter()
        try:
            for attempt in range(self._backend.retries + 1):
                generation = cfg.generation
                try:
                    error = self._attempt(cfg, buf, k)
                except ph.HailoRTTimeout:
                    with self._lock:
                        self.timeouts += 1
                    self._backend._event("hailo_timeout", self.spec.name, f"no answer within {cfg.timeout_ms} ms")
                    raise _Late() from None
                except ph.HailoRTException as e:
                    error = e
                if error is None:
                    return
                self._backend._event("hailo_error", self.spec.name, _one_line(error))
                if attempt < self._backend.retries:
                    self._backend._recover(cfg, generation, _one_line(error))
            self._backend._recover(cfg, cfg.generation, _one_line(error))  # the next frame finds a live model
            raise FacefleetError(f"model {self.spec.name}: inference failed on the Hailo device "
                                 f"({self._backend.retries + 1} attempts): {_one_line(error)}")
        finally:
            with self._lock:
                self.infer_seconds += time.perf_counter() - t0
                self.calls += 1

    def close(self) -> None:
        if self._cfg is not None:
            cfg, self._cfg = self._cfg, None
            self._backend._release(cfg)


class HailoBackend:
    """All Hailo models of a process, on one VDevice (create one, share it across cameras).

    ``max_batch``: faces per recognizer batch when the spec leaves ``input.max_batch`` open;
    ``group_id``: VDevice group (``"SHARED"`` lets other VDevices of this process share the chip);
    ``multi_process_service``: go through HailoRT's service (``hailort.service``), so several
    processes (the component and ``facefleet gallery add``/``bench``) share the chip (default:
    env ``FACEFLEET_HAILO_MULTI_PROCESS=1``); ``retries``: re-configurations tried per failed
    call; ``on_event``: called with a dict for every device error, recovery and timeout (the
    component turns them into error events); ``max_in_flight``: calls per model in flight at once
    (cameras overlap host and device work up to this bound).
    """

    name = "hailo"

    def __init__(self, max_batch: int = 8, timeout_ms: int = DEFAULT_TIMEOUT_MS, group_id: str | None = None,
                 multi_process_service: bool | None = None, retries: int = 1,
                 on_event: Callable[[dict], None] | None = None, max_in_flight: int = 4):
        self._max_batch = max_batch
        self.max_in_flight = max(1, max_in_flight)
        self._timeout_ms = timeout_ms
        self._group_id = group_id
        if multi_process_service is None:
            multi_process_service = os.environ.get(MULTI_PROCESS_ENV, "") not in ("", "0")
        self._service = multi_process_service
        self.retries = max(0, retries)
        self._on_event = on_event
        self._vdevice = None
        self._devices: list = []
        self._arch: str | None = None
        self._pid: int | None = None
        self._models: dict[str, _Configured] = {}
        self._lock = threading.Lock()
        self.counters = {"errors": 0, "recoveries": 0, "failed_recoveries": 0, "timeouts": 0}

    @property
    def vdevice(self):
        return self._vdevice

    # -- events and health ------------------------------------------------------------------

    def _event(self, kind: str, model: str, message: str) -> None:
        key = {"hailo_error": "errors", "hailo_recovered": "recoveries", "hailo_recovery_failed": "failed_recoveries",
               "hailo_timeout": "timeouts"}.get(kind)
        if key:
            self.counters[key] += 1
        (log.info if kind == "hailo_recovered" else log.warning)("%s: %s: %s", kind, model, message)
        if self._on_event is not None:
            try:
                self._on_event({"type": kind, "model": model, "message": message})
            except Exception:  # a broken listener must not stop inference
                log.exception("hailo event listener failed")

    def health(self) -> dict:
        """Chip health for status events: temperature (C, the hotter of the two sensors), throttling,
        architecture, HailoRT version, error counters. Values the device cannot give are None
        (``Control.get_chip_temperature`` / ``get_throttling_state``, pyhailort.py v4.23.0:2202, 2453).
        Never raises and never opens the device."""
        out: dict = {"device": None, "arch": self._arch, "hailort": None, "temperature_c": None,
                     "throttling": None, **self.counters,
                     "models": {cfg.spec.name: {"generation": cfg.generation, "users": cfg.users}
                                for cfg in list(self._models.values())}}
        try:
            hp, _ = _import()
            out["hailort"] = getattr(hp, "__version__", None)
        except FacefleetError:
            return out
        if not self._devices:
            return out
        dev = self._devices[0]
        out["device"] = getattr(dev, "device_id", None)
        try:
            t = dev.control.get_chip_temperature()
            out["temperature_c"] = round(float(max(t.ts0_temperature, t.ts1_temperature)), 2)
        except Exception as e:
            log.debug("no chip temperature: %s", _one_line(e))
        try:
            out["throttling"] = bool(dev.control.get_throttling_state())
        except Exception as e:
            log.debug("no throttling state: %s", _one_line(e))
        return out

    # -- device -----------------------------------------------------------------------------

    def _device(self, hp, ph):
        if self._vdevice is not None:
            return self._vdevice
        params = hp.VDevice.create_params()
        params.scheduling_algorithm = hp.HailoSchedulingAlgorithm.ROUND_ROBIN
        if self._group_id:
            params.group_id = self._group_id
        if self._service:
            params.multi_process_service = True
        try:
            self._vdevice = hp.VDevice(params)
        except ph.HailoRTException as e:
            raise self._open_error(hp, ph, e) from None
        self._pid = os.getpid()
        self._physical()
        log.info("Hailo VDevice open (ROUND_ROBIN%s, devices %s, arch %s)", ", multi-process service" if self._service
                 else "", self._vdevice.get_physical_devices_ids(), self._arch)
        return self._vdevice

    def _open_error(self, hp, ph, e: BaseException) -> FacefleetError:
        """A clear line for a VDevice that would not open.

        HailoRT reports a chip held by another process (or by another VDevice of this process) as
        HAILO_OUT_OF_PHYSICAL_DEVICES (74), exactly like a missing chip (vdevice.cpp v4.23.0:853-864);
        only a chip asked for by id gives HAILO_DEVICE_IN_USE (73). ``Device.scan()`` tells them apart.
        """
        text = str(e)
        if "RPC_FAILED" in text:
            return FacefleetError(f"the HailoRT multi-process service is not running (sudo systemctl enable --now "
                                  f"hailort.service), or unset {MULTI_PROCESS_ENV}: {_one_line(e)}")
        if "OUT_OF_PHYSICAL_DEVICES" in text or "IN_USE" in text:
            try:
                present = list(hp.Device.scan())
            except Exception:
                present = []
            if not present:
                return FacefleetError(f"no Hailo device found (check the PCIe card and the hailo driver: "
                                      f"`hailortcli scan`): {_one_line(e)}")
            how = ("another process holds it without the service: stop it, or run it with the service too"
                   if self._service else
                   f"run every process that uses it (the component, `facefleet gallery add`, `bench`) through "
                   f"HailoRT's multi-process service: `sudo systemctl enable --now hailort.service` and "
                   f"{MULTI_PROCESS_ENV}=1; or stop the other process; inside one process create ONE backend and share it")
            return FacefleetError(f"the Hailo device {present[0]} is busy ({how}): {_one_line(e)}")
        if isinstance(e, ph.HailoRTNotFoundException):
            return FacefleetError(f"no Hailo device found (check the PCIe card and the hailo driver): {_one_line(e)}")
        return FacefleetError(f"cannot open the Hailo device: {_one_line(e)}")

    def _physical(self) -> None:
        """The physical chip behind the VDevice, for health and the architecture check (best effort)."""
        try:
            self._devices = list(self._vdevice.get_physical_devices())
            arch = self._devices[0].control.identify().device_architecture
            self._arch = str(getattr(arch, "name", arch)).lower()
        except Exception as e:
            log.debug("cannot identify the Hailo device: %s", _one_line(e))

    def _check_arch(self, path: Path, spec: ModelSpec) -> None:
        """Refuse a HEF the chip cannot run; warn when it runs slower (hailo8l HEF on a Hailo-8,
        device_internal.cpp v4.23.0:614-617). The HEF's architecture comes from its spec's
        provenance (``hw_arch``, written by ``facefleet build``); HailoRT checks it again at configure."""
        hef_arch = str(spec.provenance.get("hw_arch") or "").lower()
        dev = self._arch
        if not hef_arch or not dev or hef_arch == dev or dev == "hailo8_a0":
            return
        if dev == "hailo8" and hef_arch in ("hailo8l", "hailo8r", "hailo8p"):
            self._event("hailo_warning", spec.name, f"HEF {path.name} was compiled for {hef_arch}; it runs on this "
                                                    f"Hailo-8 at lower performance: build it for hailo8")
            return
        raise FacefleetError(f"HEF {path.name} was compiled for {hef_arch}; this device is a {dev}: build it with "
                             f"hw_arch {dev}")

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

    def _open_model(self, hp, ph, path: Path, spec: ModelSpec, batch: int | None):
        """create_infer_model + formats + configure: (infer_model, configured, io, batch)."""
        vdevice = self._device(hp, ph)
        self._check_arch(path, spec)
        try:
            infer_model = vdevice.create_infer_model(str(path))
        except ph.HailoRTInvalidHEFException as e:  # the file does not parse as a HEF
            raise FacefleetError(f"{path} is not a valid HEF: {_one_line(e)}") from None
        except _exc(ph, "HailoRTHEFNotCompatibleWithDevice") as e:
            raise FacefleetError(f"HEF {path.name} {_NOT_COMPATIBLE}: {_one_line(e)}") from None
        except ph.HailoRTException as e:
            if os.getpid() != self._pid:
                raise FacefleetError(f"the Hailo device belongs to process {self._pid}: {_one_line(e)}") from None
            raise FacefleetError(f"cannot load HEF {path}: {_one_line(e)}") from None
        io = hef_io(infer_model.hef)
        check_spec(spec, io)
        if batch is None:
            batch = 1 if spec.kind == "detector" else (spec.input.max_batch or self._max_batch)
        infer_model.input(io.input_name).set_format_type(hp.FormatType.UINT8)
        infer_model.input(io.input_name).set_format_order(hp.FormatOrder.NHWC)
        for name in io.outputs:
            infer_model.output(name).set_format_type(hp.FormatType.FLOAT32)
        infer_model.set_batch_size(batch)
        try:
            configured = infer_model.configure()
        except _incompatible(ph) as e:
            raise FacefleetError(f"HEF {path.name} {_NOT_COMPATIBLE}: {_one_line(e)}") from None
        except ph.HailoRTException as e:
            raise FacefleetError(f"cannot configure HEF {path.name} on the Hailo device (batch size {batch}): "
                                 f"{_one_line(e)}") from None
        configured.__enter__()
        return infer_model, configured, io, batch

    def _configure(self, hp, ph, path: Path, spec: ModelSpec) -> _Configured:
        infer_model, configured, io, batch = self._open_model(hp, ph, path, spec, None)
        queue = configured.get_async_queue_size()
        cfg = _Configured(path, spec, infer_model, configured, max(1, min(batch, queue)), io, self._timeout_ms)
        log.debug("configured %s on the Hailo device: input %s %s, %d outputs, batch %d", spec.name, io.input_name,
                  list(io.input_shape), len(io.outputs), cfg.batch)
        return cfg

    def _recover(self, cfg: _Configured, generation: int, reason: str) -> None:
        """Replace a configured model whose pipeline died (HailoRT shuts it down for good after a
        failed job): shut it down, configure the HEF again. Once per failure: a camera that saw the
        same dead generation does not re-configure twice."""
        hp, ph = _import()
        with cfg.submit:
            if cfg.generation != generation or cfg.configured is None:
                return
            old, cfg.configured = cfg.configured, None
            try:
                old.shutdown()
            except Exception as e:
                log.debug("shutdown of the failed model: %s", _one_line(e))
            try:
                infer_model, configured, _, _ = self._open_model(hp, ph, cfg.path, cfg.spec, cfg.batch)
            except FacefleetError as e:
                cfg.configured = old  # still dead: the next call fails fast and tries again
                self._event("hailo_recovery_failed", cfg.spec.name, f"{reason}; re-configure failed: {e}")
                return
            cfg.infer_model, cfg.configured = infer_model, configured
            cfg.generation += 1
        self._event("hailo_recovered", cfg.spec.name, f"re-configured after: {reason}")

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
        for dev in self._devices:
            with contextlib.suppress(Exception):
                dev.release()
        self._devices = []
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
    spec = hef_spec(args.hef, _template(args.template), args.name, args.bbox_scales_on_host)
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
    s.add_argument("--bbox-scales-on-host", action="store_true",
                   help="keep the template's SCRFD bbox_scales: only for a HEF cut at the box conv (the scale is NOT "
                        "inside it). Zoo HEFs have it inside: leave this off")
    s.set_defaults(func=_cmd_spec)


__all__ = ["HailoBackend", "HailoModel", "HefIO", "check_spec", "hef_io", "hef_spec", "register", "scrfd_heads_by_shape",
           "spec_from_hef"]

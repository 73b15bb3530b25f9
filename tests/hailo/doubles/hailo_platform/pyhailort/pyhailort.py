"""Double of ``hailo_platform.pyhailort.pyhailort`` (HailoRT 4.18-4.23), for tests only.

Follows shared/reference/hailort_api.md: same class, enum and exception names in the same
module, the same signatures, and the traps of the real library: the Python default scheduler
is NONE (nothing runs until ``activate()``), ``set_buffer`` refuses non C-contiguous arrays,
byte sizes are checked at ``run``/``run_async``, the ``run_async`` callback is called with the
keyword ``completion_info=``, a VDevice refuses calls from another process.

A "HEF" here is a JSON file written by the tests (``{"hailo_test_hef": 1, ...}``, see
``tests/hailo/hefs.py``). It names the ONNX twin of the compiled network, the normalization the
HEF holds, the channel-last output shapes and each output's quantization (qp_scale, qp_zp).
The device computes with the twin: UINT8 NHWC input -> normalization -> twin -> output
quantized to UINT8 with qp_scale/qp_zp (as the chip emits it) -> dequantized to FLOAT32 on
the host when the user asked for FLOAT32. ``"twin": null`` gives a zero-cost device (outputs
are the zero point) for host-side benchmarks; ``DOUBLE.compute_seconds`` counts the chip's share
(normalization, twin, output quantization); dequantization to FLOAT32 is host work in HailoRT
and is left out of it.
"""

from __future__ import annotations

import contextlib
import enum
import gc
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as _FutureTimeout
from dataclasses import dataclass, field

import numpy as np

# --- exceptions (names and hierarchy as in pyhailort.py) -------------------------------------


class HailoRTException(Exception):
    pass


class HailoRTTimeout(HailoRTException):
    pass


class HailoRTStreamAborted(HailoRTException):
    pass


class HailoRTStreamAbortedByUser(HailoRTException):
    pass


class HailoRTInvalidOperationException(HailoRTException):
    pass


class HailoRTInvalidArgumentException(HailoRTException):
    pass


class HailoRTNotFoundException(HailoRTException):
    pass


class HailoRTInvalidHEFException(HailoRTException):
    pass


class HailoRTHEFNotCompatibleWithDevice(HailoRTException):
    pass


class HailoRTEthException(HailoRTException):
    pass


class HailoRTDriverOperationFailedException(HailoRTException):
    pass


class HailoRTNetworkGroupNotActivatedException(HailoRTException):
    pass


class HailoCommunicationClosedException(HailoRTException):
    pass


def _status(code: int, name: str) -> HailoRTException:
    """What ExceptionWrapper raises for a status without a dedicated class."""
    return HailoRTException(f"libhailort failed with error: {code} ({name})")


# --- enums and plain structs ----------------------------------------------------------------

FormatType = enum.Enum("FormatType", ["AUTO", "UINT8", "UINT16", "FLOAT32"])
FormatOrder = enum.Enum("FormatOrder", [
    "AUTO", "NHWC", "NHCW", "FCR", "F8CR", "NHW", "NC", "BAYER_RGB", "12_BIT_BAYER_RGB", "RGB888", "NCHW", "YUY2",
    "NV12", "YYUV", "NV21", "YYVU", "RGB4", "I420", "YYYYUV", "HAILO_NMS_WITH_BYTE_MASK", "HAILO_NMS_ON_CHIP",
    "HAILO_NMS_BY_CLASS", "HAILO_NMS_BY_SCORE"])
HailoSchedulingAlgorithm = enum.Enum("HailoSchedulingAlgorithm", ["NONE", "ROUND_ROBIN"])
HailoStreamInterface = enum.Enum("HailoStreamInterface", ["PCIe", "INTEGRATED", "ETH"])
StreamDirection = enum.Enum("StreamDirection", ["H2D", "D2H"])
FormatFlags = enum.Enum("FormatFlags", ["NONE", "TRANSPOSED"])

_BYTES = {FormatType.UINT8: 1, FormatType.UINT16: 2, FormatType.FLOAT32: 4}
_NP = {FormatType.UINT8: np.uint8, FormatType.UINT16: np.uint16, FormatType.FLOAT32: np.float32}


class HailoFormat:
    def __init__(self, type: FormatType, order: FormatOrder, flags: FormatFlags = FormatFlags.NONE):
        self.type, self.order, self.flags = type, order, flags


class QuantInfo:
    def __init__(self, qp_zp: float = 0.0, qp_scale: float = 1.0, limvals_min: float = 0.0, limvals_max: float = 0.0):
        self.qp_zp, self.qp_scale, self.limvals_min, self.limvals_max = qp_zp, qp_scale, limvals_min, limvals_max


class VStreamInfo:
    def __init__(self, name: str, network_name: str, direction: StreamDirection, fmt: HailoFormat,
                 quant_info: QuantInfo, dims: tuple[int, ...]):
        self.name, self.network_name, self.direction = name, network_name, direction
        self.format, self.quant_info, self._dims = fmt, quant_info, dims

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._dims)

    @property
    def nms_shape(self):
        raise HailoRTInvalidOperationException("nms_shape is only for NMS outputs")

    def __repr__(self) -> str:
        return f'VStreamInfo("{self.name}")'


class VDeviceParams:
    """``VDevice.create_params()``: the PYTHON default scheduler is NONE (§2)."""

    def __init__(self):
        self.device_ids: list[str] = []
        self.device_count = 1
        self.scheduling_algorithm = HailoSchedulingAlgorithm.NONE
        self.group_id = "UNIQUE"
        self.multi_process_service = False


# --- the simulated machine ------------------------------------------------------------------


@dataclass
class _Machine:
    """What is plugged in. Tests change it to simulate a missing or foreign-held device."""

    devices: list[str] = field(default_factory=lambda: ["0000:01:00.0"])
    arch: str = "hailo8"
    held_by_other_process: bool = False
    open_vdevices: list = field(default_factory=list)
    vdevices_created: int = 0
    infer_models_created: int = 0
    configured: int = 0
    compute_seconds: float = 0.0
    latency_s: float = 0.0  # extra time each job takes: a stalled device for timeout tests
    last_inputs: dict = field(default_factory=dict)

    def reset(self) -> None:
        for v in list(self.open_vdevices):
            v.release()
        self.__init__()


DOUBLE = _Machine()


# --- HEF --------------------------------------------------------------------------------------


class HEF:
    def __init__(self, hef_source):
        if isinstance(hef_source, str):
            try:
                with open(hef_source, "rb") as f:
                    raw = f.read()
            except OSError:
                raise _status(13, "HAILO_OPEN_FILE_FAILURE") from None
            self._path = hef_source
        elif isinstance(hef_source, bytes):
            raw, self._path = hef_source, None
        else:
            raise ValueError("HEF can only be created from a file path (str) or a buffer (bytes)")
        try:
            data = json.loads(raw)
            assert isinstance(data, dict) and data.get("hailo_test_hef") == 1
            self._data = data
            self._ng = data["network_group"]
            inp = data["input"]
            self._inputs = [VStreamInfo(inp["name"], self._ng, StreamDirection.H2D,
                                        HailoFormat(FormatType.UINT8, FormatOrder.NHWC), QuantInfo(0.0, 1.0),
                                        tuple(inp["shape"]))]
            self._outputs = []
            for o in data["outputs"]:
                order = FormatOrder.NC if len(o["shape"]) == 1 else FormatOrder.NHWC
                self._outputs.append(VStreamInfo(o["name"], self._ng, StreamDirection.D2H,
                                                 HailoFormat(FormatType.UINT8, order),
                                                 QuantInfo(float(o["qp_zp"]), float(o["qp_scale"])), tuple(o["shape"])))
        except Exception:
            raise HailoRTInvalidHEFException("Invalid HEF. See hailort.log for more information") from None

    @property
    def path(self):
        return self._path

    def get_network_group_names(self) -> list[str]:
        return [self._ng]

    def get_networks_names(self, network_group_name=None) -> list[str]:
        return [self._ng]

    def _check(self, name):
        if name not in (None, "", self._ng):
            raise HailoRTNotFoundException("Item not found. See hailort.log for more information")

    def get_input_vstream_infos(self, name=None) -> list[VStreamInfo]:
        self._check(name)
        return list(self._inputs)

    def get_output_vstream_infos(self, name=None) -> list[VStreamInfo]:
        self._check(name)
        return list(self._outputs)

    def get_all_vstream_infos(self, name=None) -> list[VStreamInfo]:
        return self.get_input_vstream_infos(name) + self.get_output_vstream_infos(name)

    def get_sorted_output_names(self, network_group_name=None) -> list[str]:
        self._check(network_group_name)
        return [o.name for o in self._outputs]


class _Twin:
    """The device's arithmetic: the ONNX twin of the HEF plus the HEF's normalization and quantization."""

    def __init__(self, data: dict):
        self.data = data
        inp = data["input"]
        norm = inp.get("normalization")
        self.mean = np.array(norm["mean"], np.float32) if norm else None
        self.std = np.array(norm["std"], np.float32) if norm else None
        self.layout = inp.get("twin_layout", "NCHW")
        self.session = None
        if data.get("twin"):
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.session = ort.InferenceSession(data["twin"], opts, providers=["CPUExecutionProvider"])
            self.twin_input = self.session.get_inputs()[0].name
            n = self.session.get_inputs()[0].shape[0]
            self.fixed_batch = n if isinstance(n, int) else None

    def device_outputs(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 NHWC frames -> per output, the chip's UINT8 values ``[n, *shape]``."""
        outs = self.data["outputs"]
        n = len(frames)
        if self.session is None:
            return {o["name"]: np.full((n, *o["shape"]), int(o["qp_zp"]), np.uint8) for o in outs}
        t0 = time.perf_counter()  # normalization, network and output quantization are the chip's work
        x = frames.astype(np.float32)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        if self.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        x = np.ascontiguousarray(x)
        names = [o["twin_name"] for o in outs]
        step = self.fixed_batch or n
        chunks = [self.session.run(names, {self.twin_input: x[i:i + step]}) for i in range(0, n, step)]
        result = {}
        for k, o in enumerate(outs):
            v = np.concatenate([c[k] for c in chunks])
            if len(o["shape"]) == 3 and o.get("twin_layout", "NCHW") == "NCHW":
                v = v.reshape(n, -1, *v.shape[-2:]).transpose(0, 2, 3, 1)
            v = v.reshape(n, *o["shape"])
            q = np.round(v / o["qp_scale"] + o["qp_zp"])
            result[o["name"]] = np.clip(q, 0, 255).astype(np.uint8)
        DOUBLE.compute_seconds += time.perf_counter() - t0
        return result


# --- device, models ---------------------------------------------------------------------------


class VDevice:
    def __init__(self, params: VDeviceParams | None = None, *, device_ids=None):
        gc.collect()
        self._pid = os.getpid()
        self._params = params if params is not None else VDevice.create_params()
        self._released = False
        self._configured: list[ConfiguredInferModel] = []
        if not DOUBLE.devices:
            raise _status(74, "HAILO_OUT_OF_PHYSICAL_DEVICES")
        if device_ids is not None and not set(device_ids) <= set(DOUBLE.devices):
            raise HailoRTNotFoundException("Item not found. See hailort.log for more information")
        others = DOUBLE.open_vdevices
        shared = self._params.group_id != "UNIQUE" and all(v._params.group_id == self._params.group_id for v in others)
        if DOUBLE.held_by_other_process or (others and not shared):
            raise _status(90, "HAILO_DEVICE_IN_USE")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hailo-double")
        DOUBLE.open_vdevices.append(self)
        DOUBLE.vdevices_created += 1

    @staticmethod
    def create_params() -> VDeviceParams:
        return VDeviceParams()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
        return False

    def __del__(self):
        with contextlib.suppress(Exception):
            self.release()

    def _check_pid(self):
        if os.getpid() != self._pid:
            raise HailoRTException("VDevice can only be used by the process that created it")

    def release(self) -> None:
        if getattr(self, "_released", True):
            return
        self._released = True
        for c in list(self._configured):
            c.shutdown()
        self._executor.shutdown(wait=True)
        if self in DOUBLE.open_vdevices:
            DOUBLE.open_vdevices.remove(self)

    @property
    def released(self) -> bool:
        return self._released

    def create_infer_model(self, hef_source, name=""):
        self._check_pid()
        if self._released:
            raise HailoRTException("VDevice was released")
        hef = HEF(hef_source)
        if name and name not in hef.get_network_group_names():
            raise HailoRTNotFoundException("Item not found. See hailort.log for more information")
        DOUBLE.infer_models_created += 1
        return InferModel(self, hef)

    def configure(self, hef, configure_params_by_name=None):
        self._check_pid()
        raise HailoRTInvalidOperationException("the legacy configure() API is not simulated by this double")

    def get_physical_devices_ids(self) -> list[str]:
        return list(self._params.device_ids or DOUBLE.devices)

    @property
    def loaded_network_groups(self):
        return list(self._configured)


class _Stream:
    def __init__(self, info: VStreamInfo):
        self._info = info
        self._format = HailoFormat(info.format.type, info.format.order)

    @property
    def name(self) -> str:
        return self._info.name

    @property
    def shape(self) -> list[int]:
        return list(self._info.shape)

    @property
    def format(self) -> HailoFormat:
        return self._format

    @property
    def quant_infos(self) -> list[QuantInfo]:
        return [self._info.quant_info]

    @property
    def is_nms(self) -> bool:
        return False

    def set_format_type(self, format_type: FormatType) -> None:
        self._format.type = format_type

    def set_format_order(self, format_order: FormatOrder) -> None:
        self._format.order = format_order

    def _nms_only(self, *_):
        raise HailoRTInvalidOperationException(f"{self.name} is not an NMS output")

    set_nms_score_threshold = set_nms_iou_threshold = set_nms_max_proposals_per_class = _nms_only
    set_nms_max_accumulated_mask_size = _nms_only

    @property
    def frame_bytes(self) -> int:
        return int(np.prod(self._info.shape)) * _BYTES[self._format.type]


def _pick(streams: list[_Stream], name: str, kind: str) -> _Stream:
    if not name:
        if len(streams) != 1:
            raise HailoRTInvalidOperationException(f"Model has more than one {kind}!")
        return streams[0]
    for s in streams:
        if s.name == name:
            return s
    raise HailoRTNotFoundException(f"{kind.capitalize()} {name}, not found!")


class InferModel:
    InferStream = _Stream

    def __init__(self, vdevice: VDevice, hef: HEF):
        self._vdevice = vdevice
        self._hef = hef
        self._inputs = [_Stream(i) for i in hef.get_input_vstream_infos()]
        self._outputs = [_Stream(o) for o in hef.get_output_vstream_infos()]
        self._batch_size = 0

    @property
    def hef(self) -> HEF:
        return self._hef

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self._inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self._outputs]

    @property
    def inputs(self) -> list[_Stream]:
        return list(self._inputs)

    @property
    def outputs(self) -> list[_Stream]:
        return list(self._outputs)

    def input(self, name: str = "") -> _Stream:
        return _pick(self._inputs, name, "input")

    def output(self, name: str = "") -> _Stream:
        return _pick(self._outputs, name, "output")

    def set_batch_size(self, batch_size: int) -> None:
        self._batch_size = int(batch_size)

    def set_power_mode(self, power_mode) -> None:
        pass

    def configure(self):
        self._vdevice._check_pid()
        data = self._hef._data
        if data.get("hw_arch", "hailo8") != DOUBLE.arch:
            raise HailoRTHEFNotCompatibleWithDevice(
                "HEF file is not compatible with device. See hailort.log for more information")
        queue = int(data.get("async_queue_size", 4))
        if self._batch_size > queue:
            raise HailoRTInvalidArgumentException("Invalid argument. See hailort.log for more information")
        cim = ConfiguredInferModel(self, queue)
        self._vdevice._configured.append(cim)
        DOUBLE.configured += 1
        return cim


class AsyncInferCompletionInfo:
    def __init__(self, exception: HailoRTException | None):
        self._exception = exception

    @property
    def exception(self):
        return self._exception


class AsyncInferJob:
    def __init__(self, future):
        self._future = future

    def wait(self, timeout_ms: int) -> None:
        try:
            error = self._future.result(timeout=timeout_ms / 1000.0)
        except _FutureTimeout:
            raise HailoRTTimeout("Received a timeout - hailort has failed because a timeout had occurred") from None
        if error is not None:
            raise error


class _BindingStream:
    def __init__(self, stream: _Stream):
        self._stream = stream
        self._buffer: np.ndarray | None = None

    def set_buffer(self, buffer: np.ndarray) -> None:
        if not buffer.flags["C_CONTIGUOUS"]:
            raise HailoRTException("Buffer must be C_CONTIGUOUS")
        self._buffer = buffer

    def get_buffer(self, tf_format=False) -> np.ndarray:
        return self._buffer


class ConfiguredInferModel:
    def __init__(self, model: InferModel, queue_size: int):
        self._model = model
        self._queue = queue_size
        self._formats = {s.name: s.format.type for s in model.inputs + model.outputs}
        self._scheduled = model._vdevice._params.scheduling_algorithm != HailoSchedulingAlgorithm.NONE
        self._active = False
        self._shut = False
        self._inflight = 0
        self._cond = threading.Condition()
        self._twin = _Twin(model.hef._data)

    class Bindings:
        def __init__(self, cim: ConfiguredInferModel):
            m = cim._model
            self._inputs = {s.name: _BindingStream(s) for s in m.inputs}
            self._outputs = {s.name: _BindingStream(s) for s in m.outputs}

        def input(self, name: str = "") -> _BindingStream:
            return self._get(self._inputs, name, "input")

        def output(self, name: str = "") -> _BindingStream:
            return self._get(self._outputs, name, "output")

        @staticmethod
        def _get(streams: dict, name: str, kind: str) -> _BindingStream:
            if not name:
                if len(streams) != 1:
                    raise HailoRTInvalidOperationException(f"Model has more than one {kind}!")
                return next(iter(streams.values()))
            if name not in streams:
                raise HailoRTNotFoundException(f"{kind.capitalize()} {name}, not found!")
            return streams[name]

        def get(self):
            return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()
        return False

    def activate(self) -> None:
        if self._scheduled:
            raise HailoRTInvalidOperationException("Calling this function is invalid in case scheduler is enabled.")
        self._active = True

    def deactivate(self) -> None:
        if self._scheduled:
            raise HailoRTInvalidOperationException("Calling this function is invalid in case scheduler is enabled.")
        self._active = False

    def _scheduler_only(self, _value) -> None:
        if not self._scheduled:
            raise HailoRTInvalidOperationException("scheduler settings need a scheduler (it is NONE)")

    set_scheduler_timeout = set_scheduler_threshold = set_scheduler_priority = _scheduler_only

    def get_async_queue_size(self) -> int:
        return self._queue

    def create_bindings(self, input_buffers=None, output_buffers=None) -> ConfiguredInferModel.Bindings:
        b = ConfiguredInferModel.Bindings(self)
        for name, buf in (input_buffers or {}).items():
            b.input(name).set_buffer(buf)
        for name, buf in (output_buffers or {}).items():
            b.output(name).set_buffer(buf)
        return b

    def wait_for_async_ready(self, timeout_ms: int = 1000, frames_count: int = 1) -> None:
        if frames_count > self._queue:
            raise HailoRTTimeout("Received a timeout - hailort has failed because a timeout had occurred")
        with self._cond:
            if not self._cond.wait_for(lambda: self._inflight + frames_count <= self._queue, timeout_ms / 1000.0):
                raise HailoRTTimeout("Received a timeout - hailort has failed because a timeout had occurred")

    def shutdown(self) -> None:
        if self._shut:
            return
        self._shut = True
        with self._cond:
            self._cond.wait_for(lambda: self._inflight == 0, 10.0)
        vd = self._model._vdevice
        if self in vd._configured:
            vd._configured.remove(self)
        DOUBLE.configured -= 1

    @property
    def is_shut_down(self) -> bool:
        return self._shut

    def _validate(self, bindings) -> None:
        if self._shut:
            raise HailoRTException("ConfiguredInferModel was shut down")
        if not self._scheduled and not self._active:
            raise HailoRTNetworkGroupNotActivatedException("Network group is not activated")
        for b in bindings:
            for kind, streams in (("input", b._inputs), ("output", b._outputs)):
                for name, bs in streams.items():
                    if bs._buffer is None:
                        raise HailoRTInvalidOperationException(f"{kind} '{name}' has no buffer")
                    fmt = self._formats[name]
                    expected = int(np.prod(bs._stream.shape)) * _BYTES[fmt]
                    if bs._buffer.nbytes != expected:
                        raise HailoRTInvalidOperationException(
                            f"{kind.capitalize()} buffer size {bs._buffer.nbytes} is different than expected {expected} "
                            f"for {kind} '{name}'")

    def _infer(self, bindings: list) -> None:
        name_in = self._model.input_names[0]
        frames = np.stack([b._inputs[name_in]._buffer.view(np.uint8).reshape(self._model.input().shape)
                           if self._formats[name_in] == FormatType.UINT8
                           else b._inputs[name_in]._buffer.reshape(self._model.input().shape) for b in bindings])
        DOUBLE.last_inputs[self._model.hef._ng] = frames.copy()
        chip = self._twin.device_outputs(frames)
        for s in self._model.outputs:
            q = chip[s.name]
            qi = s.quant_infos[0]
            for i, b in enumerate(bindings):
                out = b._outputs[s.name]._buffer
                if self._formats[s.name] == FormatType.FLOAT32:
                    val = (q[i].astype(np.float32) - np.float32(qi.qp_zp)) * np.float32(qi.qp_scale)
                else:
                    val = q[i]
                out.reshape(-1)[:] = val.reshape(-1).astype(out.dtype, copy=False)

    def run_async(self, bindings: list, callback=None) -> AsyncInferJob:
        bindings = list(bindings)  # a bare Bindings is not iterable, as in the real API
        self._validate(bindings)
        with self._cond:
            if self._inflight + len(bindings) > self._queue:  # what wait_for_async_ready is there to avoid
                raise _status(88, "HAILO_QUEUE_IS_FULL")
            self._inflight += len(bindings)

        def job():
            error = None
            try:
                if DOUBLE.latency_s:
                    time.sleep(DOUBLE.latency_s)
                self._infer(bindings)
            except HailoRTException as e:
                error = e
            except Exception as e:  # the chip reports failures as statuses, not Python errors
                error = HailoRTException(f"inference failed: {e}")
            try:
                if callback is not None:
                    callback(completion_info=AsyncInferCompletionInfo(error))
            finally:
                with self._cond:
                    self._inflight -= len(bindings)
                    self._cond.notify_all()
            return error

        return AsyncInferJob(self._model._vdevice._executor.submit(job))

    def run(self, bindings: list, timeout: int) -> None:
        self.run_async(bindings).wait(timeout)

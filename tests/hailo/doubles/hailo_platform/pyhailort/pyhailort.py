"""Double of ``hailo_platform.pyhailort.pyhailort`` (HailoRT 4.18-4.23), for tests only.

ONE module, several version surfaces: ``use_surface("4.18.0" | "4.20.1" | "4.23.0")`` (or the
env var ``FACEFLEET_HAILORT_SURFACE`` at import) switches the classes, status names, binding
copy semantics and checks to those of that HailoRT tag. Every behaviour below names its source
in github.com/hailo-ai/hailort as ``tag:path:line``; abbreviations:

  PY  = hailort/libhailort/bindings/python/platform/hailo_platform/pyhailort/pyhailort.py
  API = hailort/libhailort/bindings/python/src/infer_model_api.cpp (.hpp for the header)
  H   = hailort/libhailort/include/hailo/hailort.h
  IM  = hailort/libhailort/src/net_flow/pipeline/infer_model.cpp
  AIR = hailort/libhailort/src/net_flow/pipeline/async_infer_runner.cpp
  VD  = hailort/libhailort/src/vdevice/vdevice.cpp
  DI  = hailort/libhailort/src/device_common/device_internal.cpp

A "HEF" here is a JSON file written by the tests (``tests/hailo/hailo_hefs.py``). It names the
ONNX twin of the compiled network, the normalization the HEF holds, the channel-last output
shapes, each output's quantization (qp_scale, qp_zp), an optional ``twin_scale`` per output (a
Mul compiled into the HEF, e.g. the SCRFD bbox scale of the zoo's end nodes) and ``hw_arch``.
The device computes with the twin: UINT8 NHWC input -> normalization -> twin -> x twin_scale ->
UINT8 with qp_scale/qp_zp (as the chip emits it) -> dequantized to FLOAT32 by HailoRT when the
user asked for FLOAT32. ``"twin": null`` gives a zero-cost device (outputs are the zero point).
``DOUBLE.compute_seconds`` counts the chip's share (normalization, twin, output quantization).
"""

from __future__ import annotations

import contextlib
import enum
import gc
import json
import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

SURFACES = ("4.18.0", "4.20.1", "4.23.0")


def _v(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("."))


# --- exceptions: PY v4.18.0:52-101, v4.20.0:54-108, v4.21.0/v4.23.0:55-112 ------------------


class HailoRTException(Exception):
    pass


class HailoRTFirmwareControlFailedException(HailoRTException):
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


class HailoRTEthException(HailoRTException):
    pass


class HailoRTNetworkGroupNotActivatedException(HailoRTException):
    pass


class HailoStatusInvalidValueException(Exception):
    pass


class _HEFNotCompatible(HailoRTException):
    pass


class _DriverOperationFailed(HailoRTException):
    pass


class _CommunicationClosed(HailoRTException):
    pass


class _PCIeDriver(HailoRTException):
    pass


_HEFNotCompatible.__name__ = _HEFNotCompatible.__qualname__ = "HailoRTHEFNotCompatibleWithDevice"
_DriverOperationFailed.__name__ = _DriverOperationFailed.__qualname__ = "HailoRTDriverOperationFailedException"
_CommunicationClosed.__name__ = _CommunicationClosed.__qualname__ = "HailoCommunicationClosedException"
_PCIeDriver.__name__ = _PCIeDriver.__qualname__ = "HailoRTPCIeDriverException"

# name -> (class, first version that has it, last version that has it): module __getattr__
# below hides a class outside its range, so ``ph.X`` is an AttributeError as on the real module.
_VERSIONED = {
    # PY v4.21.0:94 (absent in v4.18.0-v4.20.1)
    "HailoRTHEFNotCompatibleWithDevice": (_HEFNotCompatible, (4, 21, 0), None),
    # PY v4.20.0:96 (v4.18.0:94 has HailoRTPCIeDriverException instead; from v4.20.0 it is an alias)
    "HailoRTDriverOperationFailedException": (_DriverOperationFailed, (4, 20, 0), None),
    # PY v4.20.0:105 (absent in v4.18.0/v4.19.0)
    "HailoCommunicationClosedException": (_CommunicationClosed, (4, 20, 0), None),
    "HailoRTPCIeDriverException": (_PCIeDriver, (4, 18, 0), (4, 19, 99)),
}

# H v4.18.0:88-180 / v4.23.0:89-182 (the codes are the same on every tag; only names change)
_STATUS = {2: "HAILO_INVALID_ARGUMENT", 4: "HAILO_TIMEOUT", 6: "HAILO_INVALID_OPERATION", 13: "HAILO_OPEN_FILE_FAILURE",
           26: "HAILO_INVALID_HEF", 36: "HAILO_DRIVER_OPERATION_FAILED", 61: "HAILO_NOT_FOUND",
           62: "HAILO_COMMUNICATION_CLOSED", 63: "HAILO_STREAM_ABORT", 69: "HAILO_NETWORK_GROUP_NOT_ACTIVATED",
           73: "HAILO_DEVICE_IN_USE", 74: "HAILO_OUT_OF_PHYSICAL_DEVICES", 77: "HAILO_RPC_FAILED",
           82: "HAILO_QUEUE_IS_FULL", 93: "HAILO_HEF_NOT_COMPATIBLE_WITH_DEVICE"}


def _status_name(code: int) -> str:
    name = _STATUS[code]
    if code == 36 and DOUBLE.version < (4, 20, 0):
        return "HAILO_DRIVER_FAIL"  # H v4.18.0:124 (renamed in v4.20.0:124)
    if code == 93 and DOUBLE.version < (4, 21, 0):
        raise HailoStatusInvalidValueException(f"Value {code} is not a valid status")  # H v4.21.0:182 adds it
    return name


def _status(code: int) -> HailoRTException:
    """``ExceptionWrapper.create_exception_from_status`` of this surface (PY v4.18.0:117-150, v4.23.0:126-168)."""
    name = _status_name(code)
    simple = {"HAILO_TIMEOUT": (HailoRTTimeout, "Received a timeout - hailort has failed because a timeout had occurred"),
              "HAILO_STREAM_ABORT": (HailoRTStreamAborted, "Stream was aborted"),
              "HAILO_INVALID_OPERATION": (HailoRTInvalidOperationException,
                                          "Invalid operation. See hailort.log for more information"),
              "HAILO_INVALID_ARGUMENT": (HailoRTInvalidArgumentException,
                                         "Invalid argument. See hailort.log for more information"),
              "HAILO_NOT_FOUND": (HailoRTNotFoundException, "Item not found. See hailort.log for more information"),
              "HAILO_INVALID_HEF": (HailoRTInvalidHEFException, "Invalid HEF. See hailort.log for more information"),
              "HAILO_NETWORK_GROUP_NOT_ACTIVATED": (HailoRTNetworkGroupNotActivatedException,
                                                    "Network group is not activated")}
    if name in simple:
        cls, text = simple[name]
        return cls(text)
    if name == "HAILO_DRIVER_FAIL":
        return _PCIeDriver("PCIe driver failure. run 'dmesg | grep hailo' for more information")
    if name == "HAILO_DRIVER_OPERATION_FAILED":
        return _DriverOperationFailed("Failure in hailort driver ioctl. run 'dmesg | grep hailo' for more information")
    if name == "HAILO_COMMUNICATION_CLOSED" and DOUBLE.version >= (4, 20, 0):
        return _CommunicationClosed("Communication closed failure. Check server-client connection")
    if name == "HAILO_HEF_NOT_COMPATIBLE_WITH_DEVICE":
        return _HEFNotCompatible("HEF file is not compatible with device. See hailort.log for more information")
    return HailoRTException(f"libhailort failed with error: {code} ({name})")


def __getattr__(name: str):
    if name == "HailoRTPCIeDriverException" and DOUBLE.version >= (4, 20, 0):
        return _DriverOperationFailed  # PY v4.20.0:99 keeps the old name as an alias
    entry = _VERSIONED.get(name)
    if entry is not None:
        cls, first, last = entry
        if DOUBLE.version >= first and (last is None or DOUBLE.version <= last):
            return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


class DeviceArchitectureTypes(IntEnum):
    """PY v4.23.0:1597-1607 (v4.18.0:1522 names value 4 PLUTO; Hailo-8 values are the same)."""

    HAILO8_A0 = 0
    HAILO8 = 1
    HAILO8L = 2
    HAILO15H = 3
    HAILO15L = 4
    HAILO15M = 5
    HAILO10H = 6

    def __str__(self):
        return self.name


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

    def __repr__(self) -> str:
        return f'VStreamInfo("{self.name}")'


class VDeviceParams:
    """``VDevice.create_params()``: the PYTHON default scheduler is NONE (hailort_api.md §2)."""

    def __init__(self):
        self.device_ids: list[str] = []
        self.device_count = 1
        self.scheduling_algorithm = HailoSchedulingAlgorithm.NONE
        self.group_id = "UNIQUE"  # H v4.23.0:72-73 HAILO_DEFAULT_VDEVICE_GROUP_ID = "UNIQUE"
        self.multi_process_service = False


class TemperatureInfo:
    """``Control.get_chip_temperature()`` (pyhailort.cpp v4.23.0:965-968)."""

    def __init__(self, ts0: float, ts1: float, sample_count: int):
        self.ts0_temperature, self.ts1_temperature, self.sample_count = ts0, ts1, sample_count


class BoardInformation:
    def __init__(self, device_architecture: int):
        self.device_architecture = DeviceArchitectureTypes(device_architecture)  # PY v4.23.0:1609-1626


# --- the simulated machine ------------------------------------------------------------------

_ARCH = {"hailo8": DeviceArchitectureTypes.HAILO8, "hailo8l": DeviceArchitectureTypes.HAILO8L}


@dataclass
class _Machine:
    """What is plugged in, and the HailoRT line installed. Tests change it (see the ``machine`` fixture)."""

    version: tuple[int, ...] = field(default_factory=lambda: _v(os.environ.get("FACEFLEET_HAILORT_SURFACE", "4.23.0")))
    devices: list[str] = field(default_factory=lambda: ["0000:01:00.0"])
    arch: str = "hailo8"
    held_by_other_process: bool = False  # another process opened the chip without the multi-process service
    service_running: bool = False        # hailort.service (needed by multi_process_service=True)
    temperature: tuple[float, float] | None = (47.5, 48.25)  # ts0, ts1 in C; None: the control fails
    throttling: bool = False
    open_vdevices: list = field(default_factory=list)
    vdevices_created: int = 0
    infer_models_created: int = 0
    configured: int = 0
    compute_seconds: float = 0.0
    allocated_bytes: int = 0             # host buffers allocated by run_async (API v4.23.0:312)
    latency_s: float = 0.0               # extra time each job takes
    fail_next_jobs: int = 0              # the next N jobs fail on the chip with ``fail_status``
    fail_status: int = 36                # HAILO_DRIVER_OPERATION_FAILED / HAILO_DRIVER_FAIL
    warnings: list = field(default_factory=list)  # what hailort.log would say (LOGGER__WARNING)
    last_inputs: dict = field(default_factory=dict)
    _gate: threading.Event = field(default_factory=threading.Event)
    _stalled: bool = False
    _pending: list = field(default_factory=list)

    def stall(self) -> None:
        """Jobs submitted from now on hang in the chip until ``release_stalled()`` (a stuck DMA)."""
        self._gate.clear()
        self._stalled = True

    def unstall(self) -> None:
        """New jobs run again; the stuck ones still wait for ``release_stalled()``."""
        self._stalled = False

    def release_stalled(self, timeout: float = 30.0) -> None:
        """Let the stuck jobs finish (they write into their buffers then) and wait for them."""
        self._gate.set()
        for t in list(self._pending):
            t.join(timeout)
        self._pending.clear()

    def reset(self) -> None:
        self.release_stalled()
        for v in list(self.open_vdevices):
            v.release()
        self.__init__()


DOUBLE = _Machine()


def use_surface(version: str) -> None:
    """Switch the double to the HailoRT tag ``version`` (one of SURFACES)."""
    if version not in SURFACES:
        raise ValueError(f"no surface {version}; have {SURFACES}")
    DOUBLE.version = _v(version)
    pkg = sys.modules.get("hailo_platform")
    if pkg is not None:
        pkg.__version__ = version


def _warn(text: str) -> None:
    DOUBLE.warnings.append(text)


# --- HEF --------------------------------------------------------------------------------------


class HEF:
    def __init__(self, hef_source):
        if isinstance(hef_source, str):
            try:
                with open(hef_source, "rb") as f:
                    raw = f.read()
            except OSError:
                raise _status(13) from None
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
            raise _status(26) from None

    @property
    def path(self):
        return self._path

    def get_network_group_names(self) -> list[str]:
        return [self._ng]

    def get_networks_names(self, network_group_name=None) -> list[str]:
        return [self._ng]

    def _check(self, name):
        if name not in (None, "", self._ng):
            raise _status(61)

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
    """The device's arithmetic: the ONNX twin of the HEF plus the HEF's normalization, Muls and quantization."""

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
        t0 = time.perf_counter()
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
            v = v.reshape(n, *o["shape"]) * np.float32(o.get("twin_scale", 1.0))  # a Mul compiled into the HEF
            q = np.round(v / o["qp_scale"] + o["qp_zp"])
            result[o["name"]] = np.clip(q, 0, 255).astype(np.uint8)
        DOUBLE.compute_seconds += time.perf_counter() - t0
        return result


# --- physical device (health, architecture) ---------------------------------------------------


class Control:
    def __init__(self, device_id: str):
        self._id = device_id

    def get_chip_temperature(self) -> TemperatureInfo:
        """PY v4.23.0:2453-2462 / v4.18.0:2388: ts0/ts1 in Celsius and a sample count."""
        if DOUBLE.temperature is None:
            raise HailoRTFirmwareControlFailedException("libhailort control operation failed")
        return TemperatureInfo(*DOUBLE.temperature, sample_count=1)

    def get_throttling_state(self) -> bool:
        """PY v4.23.0:2202-2210 / v4.18.0:2137: True when temperature or overcurrent throttling is active."""
        return DOUBLE.throttling

    def identify(self) -> BoardInformation:
        """PY v4.23.0:2154-2168 (``device_architecture`` as DeviceArchitectureTypes)."""
        return BoardInformation(int(_ARCH[DOUBLE.arch]))


class Device:
    """PY v4.23.0:2534-2600: ``Device.scan()`` lists the chips present (held or not), no ExceptionWrapper."""

    @classmethod
    def scan(cls) -> list[str]:
        return list(DOUBLE.devices)

    def __init__(self, device_id=None):
        if device_id is None:
            if not DOUBLE.devices:
                raise HailoRTException("HailoRT device not found in the system")
            device_id = DOUBLE.devices[0]
        if device_id not in DOUBLE.devices:
            raise _status(61)
        self._device_id = device_id
        self._control = Control(device_id)
        self._released = False

    @property
    def device_id(self) -> str:
        return self._device_id

    @property
    def control(self) -> Control:
        if self._released:
            raise HailoRTException("Device was released")
        return self._control

    def release(self) -> None:
        self._released = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
        return False


# --- device, models ---------------------------------------------------------------------------


class VDevice:
    def __init__(self, params: VDeviceParams | None = None, *, device_ids=None):
        gc.collect()
        self._pid = os.getpid()
        self._params = params if params is not None else VDevice.create_params()
        self._released = False
        self._configured: list[ConfiguredInferModel] = []
        p = self._params
        if p.multi_process_service:
            # VD v4.23.0:542-548: the service needs the scheduler; the client talks to hailort.service
            if p.scheduling_algorithm == HailoSchedulingAlgorithm.NONE:
                raise _status(2)
            if not DOUBLE.service_running:
                raise _status(77)
        explicit = bool(device_ids or p.device_ids)
        if device_ids is not None and not set(device_ids) <= set(DOUBLE.devices):
            raise _status(2)  # VD v4.23.0:625-626 "device_id {} not found" -> HAILO_INVALID_ARGUMENT
        others = DOUBLE.open_vdevices
        shared = p.group_id != "UNIQUE" and bool(others) and all(v._params.group_id == p.group_id for v in others)
        if p.multi_process_service and DOUBLE.service_running and not DOUBLE.held_by_other_process:
            busy = False  # the service owns the chip and multiplexes every client process
        else:
            busy = DOUBLE.held_by_other_process or (bool(others) and not shared)
        if not DOUBLE.devices or busy:
            # VD v4.23.0:853-864: a device in use is skipped unless asked for by id (then IN_USE, 73);
            # too few free devices -> HAILO_OUT_OF_PHYSICAL_DEVICES (74), also when none is plugged in
            raise _status(73 if explicit and DOUBLE.devices else 74)
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
            c._cpp.shutdown()
        self._executor.shutdown(wait=True)
        if self in DOUBLE.open_vdevices:
            DOUBLE.open_vdevices.remove(self)

    @property
    def released(self) -> bool:
        return self._released

    def create_infer_model(self, hef_source, *args, **kwargs):
        """PY v4.18.0:3526 ``(hef_source, network_name="")``; v4.19.0:3554, v4.20.1:3532, v4.23.0:3596 ``(hef_source, name="")``."""
        key = "network_name" if DOUBLE.version < (4, 19, 0) else "name"
        if set(kwargs) - {key}:
            raise TypeError(f"create_infer_model() got an unexpected keyword argument {next(iter(kwargs))!r}")
        name = args[0] if args else kwargs.get(key, "")
        self._check_pid()
        if self._released:
            raise HailoRTException("VDevice was released")
        hef = HEF(hef_source)
        if name and name not in hef.get_network_group_names():
            raise _status(61)
        DOUBLE.infer_models_created += 1
        return InferModel(self, hef)

    def get_physical_devices_ids(self) -> list[str]:
        return list(self._params.device_ids or DOUBLE.devices)

    def get_physical_devices(self) -> list[Device]:
        """PY v4.23.0:3578-3585: a new ``Device`` per physical chip."""
        return [Device(i) for i in self.get_physical_devices_ids()]

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

    @property
    def frame_bytes(self) -> int:
        return int(np.prod(self._info.shape)) * _BYTES[self._format.type]


def _pick(streams: list, name: str, kind: str):
    if not name:
        if len(streams) != 1:
            raise HailoRTInvalidOperationException(f"Model has more than one {kind}!")
        return streams[0]
    for s in streams:
        if s.name == name:
            return s
    raise HailoRTNotFoundException(f"{kind.capitalize()} {name}, not found!")


# HEF arch -> device archs that accept it (DI v4.23.0:739-746, v4.18.0:716-722)
_ACCEPTS = {"hailo8": {"hailo8", "hailo8p", "hailo8r", "hailo8l"}, "hailo8l": {"hailo8l"}}


class InferModel:
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

    def configure(self):
        self._vdevice._check_pid()
        hef_arch = self._hef._data.get("hw_arch", "hailo8")
        # DI v4.18.0:597-604 returns HAILO_INVALID_HEF; v4.21.0+:604 HAILO_HEF_NOT_COMPATIBLE_WITH_DEVICE
        if hef_arch not in _ACCEPTS.get(DOUBLE.arch, {DOUBLE.arch}):
            raise _status(93 if DOUBLE.version >= (4, 21, 0) else 26)
        if hef_arch == "hailo8l" and DOUBLE.arch == "hailo8":  # DI v4.23.0:614-617: accepted, slower
            _warn("HEF was compiled for Hailo8L device, while the device itself is Hailo8. "
                  "This will result in lower performance.")
        queue = int(self._hef._data.get("async_queue_size", 4))
        if self._batch_size > queue:
            raise _status(2)
        cim = ConfiguredInferModel(_ConfiguredCpp(self, queue), self)
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
    """PY v4.23.0:3476-3503 over API v4.23.0:411-418 and IM v4.23.0:1061-1070: ``wait`` waits for the
    job and its callback and fails ONLY with a timeout; the job's own status goes to the callback."""

    def __init__(self, done: threading.Event):
        self._done = done

    def wait(self, timeout_ms: int) -> None:
        if not self._done.wait(timeout_ms / 1000.0):
            raise _status(4)


class _StreamImpl:
    """The C++ ``InferStream`` pimpl: what HailoRT writes through (shared by shallow copies)."""

    def __init__(self, stream: _Stream):
        self.stream = stream
        self.buffer: np.ndarray | None = None


class _BindingStream:
    def __init__(self, stream: _Stream, impl: _StreamImpl):
        self._stream = stream
        self._impl = impl
        self._buffer: np.ndarray | None = None

    def set_buffer(self, buffer: np.ndarray) -> None:
        # PY v4.19.0:2993 / v4.23.0:3014-3016 (absent in v4.18.0:2979-2990)
        if DOUBLE.version >= (4, 19, 0) and not buffer.flags.c_contiguous:
            raise HailoRTException("Buffer must be C_CONTIGUOUS")
        # API v4.18.0:191 / v4.23.0:214 ``buffer.mutable_data()``: pybind11 throws std::domain_error
        # ("array is not writeable") for a read-only array, which Python sees as ValueError
        if not buffer.flags.writeable:
            raise ValueError("array is not writeable")
        self._impl.buffer = buffer
        self._buffer = buffer

    def get_buffer(self, tf_format=False) -> np.ndarray:
        return self._buffer


class _ConfiguredCpp:
    """``_pyhailort.ConfiguredInferModel``: the C++ object the Python class wraps."""

    def __init__(self, model: InferModel, queue_size: int):
        self.model = model
        self.queue = queue_size
        self.formats = {s.name: s.format.type for s in model.inputs + model.outputs}
        self.scheduled = model._vdevice._params.scheduling_algorithm != HailoSchedulingAlgorithm.NONE
        self.active = False
        self.shut = False
        self.pipeline_status = 0  # AIR v4.23.0:62-95: a failed job stores its status, for good
        self.inflight = 0
        self.cond = threading.Condition()
        self.twin = _Twin(model.hef._data)

    def shutdown(self) -> None:
        if self.shut:
            return
        self.shut = True
        with self.cond:
            self.cond.wait_for(lambda: self.inflight == 0 or DOUBLE._stalled, 10.0)
        vd = self.model._vdevice
        for c in list(vd._configured):
            if c._cpp_ref is self:
                vd._configured.remove(c)
        DOUBLE.configured -= 1

    def check_pipeline(self) -> None:
        if self.shut:
            raise _status(63)  # the pipeline was aborted by shutdown()
        if self.pipeline_status:
            # AIR v4.23.0:284-286 "Can't handle inference request since pipeline status is {}"
            raise _status(self.pipeline_status)

    def wait_for_async_ready(self, timeout_ms: int, frames_count: int) -> None:
        self.check_pipeline()
        if frames_count > self.queue:
            raise _status(4)
        with self.cond:
            if not self.cond.wait_for(lambda: self.inflight + frames_count <= self.queue, timeout_ms / 1000.0):
                raise _status(4)

    def validate(self, bindings: list) -> None:
        self.check_pipeline()
        if not self.scheduled and not self.active:
            raise _status(69)
        for b in bindings:
            for kind, streams in (("input", b.inputs), ("output", b.outputs)):
                for name, impl in streams.items():
                    if impl.buffer is None:
                        raise HailoRTInvalidOperationException(f"{kind} '{name}' has no buffer")
                    expected = int(np.prod(impl.stream.shape)) * _BYTES[self.formats[name]]
                    if impl.buffer.nbytes != expected:
                        raise HailoRTInvalidOperationException(
                            f"{kind.capitalize()} buffer size {impl.buffer.nbytes} is different than expected {expected} "
                            f"for {kind} '{name}'")

    def run_async(self, bindings: list, callback) -> threading.Event:
        """API v4.23.0:280-335 (v4.18.0:262-299): per output of every binding, a fresh DMA buffer is
        allocated and set on the (copied) binding; when the job completes it is memcpy'd into the
        user's buffer, raw bytes, whatever the job's status."""
        self.validate(bindings)
        with self.cond:
            if self.inflight + len(bindings) > self.queue:
                raise _status(82)  # AIR v4.23.0:289 HAILO_QUEUE_IS_FULL
            self.inflight += len(bindings)
        user, aligned = [], []
        for b in bindings:
            for impl in b.outputs.values():
                user.append(impl.buffer)
                buf = np.empty(impl.buffer.nbytes, np.uint8)
                DOUBLE.allocated_bytes += buf.nbytes
                aligned.append(buf)
                impl.buffer = buf  # on v4.18.0 this is the USER's binding too (shallow copy)
        done = threading.Event()
        stalled = DOUBLE._stalled

        def job():
            if stalled:
                DOUBLE._gate.wait()
            status = 0
            try:
                if DOUBLE.latency_s:
                    time.sleep(DOUBLE.latency_s)
                if DOUBLE.fail_next_jobs > 0:
                    DOUBLE.fail_next_jobs -= 1
                    status = DOUBLE.fail_status
                else:
                    self._infer(bindings)
            except Exception:
                status = 8  # HAILO_INTERNAL_FAILURE
            if status:
                self.pipeline_status = self.pipeline_status or status  # AIR v4.23.0:79: shut down for good
            for dst, src in zip(user, aligned, strict=True):
                dst.reshape(-1).view(np.uint8)[:] = src  # API v4.23.0:327 std::memcpy
            try:
                callback(status)
            finally:
                with self.cond:
                    self.inflight -= len(bindings)
                    self.cond.notify_all()
                done.set()

        if stalled:
            t = threading.Thread(target=job, daemon=True)
            DOUBLE._pending.append(t)
            t.start()
        else:
            self.model._vdevice._executor.submit(job)
        return done

    def _infer(self, bindings: list) -> None:
        name_in = self.model.input_names[0]
        shape = self.model.input().shape
        fmt_in = self.formats[name_in]
        frames = np.stack([np.frombuffer(b.inputs[name_in].buffer.tobytes(), _NP[fmt_in]).reshape(shape)
                           for b in bindings])
        DOUBLE.last_inputs[self.model.hef._ng] = frames.copy()
        chip = self.twin.device_outputs(frames.astype(np.uint8))
        for s in self.model.outputs:
            q = chip[s.name]
            qi = s.quant_infos[0]
            fmt = self.formats[s.name]
            for i, b in enumerate(bindings):
                if fmt == FormatType.FLOAT32:
                    val = (q[i].astype(np.float32) - np.float32(qi.qp_zp)) * np.float32(qi.qp_scale)
                else:
                    val = q[i].astype(_NP[fmt])
                b.outputs[s.name].buffer[:] = np.ascontiguousarray(val).reshape(-1).view(np.uint8)


class _CppBindings:
    """``ConfiguredInferModel::Bindings``: maps of InferStream pimpls."""

    def __init__(self, inputs: dict, outputs: dict):
        self.inputs, self.outputs = inputs, outputs

    def copy(self) -> _CppBindings:
        if DOUBLE.version < (4, 19, 0):
            # API.hpp v4.18.0:133 ``Bindings get() { return m_bindings; }``: the implicit copy shares
            # the InferStream pimpls, so run_async's set_buffer(aligned) lands in the user's bindings
            return _CppBindings(dict(self.inputs), dict(self.outputs))
        # IM v4.19.0:1034-1060 Bindings(const Bindings&) -> init_bindings_from: inner_copy() per stream
        fresh = {}
        for side in ("inputs", "outputs"):
            fresh[side] = {}
            for name, impl in getattr(self, side).items():
                c = _StreamImpl(impl.stream)
                c.buffer = impl.buffer
                fresh[side][name] = c
        return _CppBindings(fresh["inputs"], fresh["outputs"])


class ConfiguredInferModel:
    def __init__(self, cpp: _ConfiguredCpp, model: InferModel):
        self._configured_infer_model = cpp
        self._cpp_ref = cpp
        self._model = model
        self._input_names = model.input_names
        self._output_names = model.output_names
        self._buffer_guards = deque()

    @property
    def _cpp(self) -> _ConfiguredCpp:
        return self._cpp_ref

    class Bindings:
        def __init__(self, model: InferModel):
            ins = {s.name: _StreamImpl(s) for s in model.inputs}
            outs = {s.name: _StreamImpl(s) for s in model.outputs}
            self._cpp = _CppBindings(ins, outs)
            self._inputs = {s.name: _BindingStream(s, ins[s.name]) for s in model.inputs}
            self._outputs = {s.name: _BindingStream(s, outs[s.name]) for s in model.outputs}

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

        def get(self) -> _CppBindings:
            return self._cpp.copy()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        # PY v4.23.0:3213-3214: only drops the reference; shutdown() is explicit (v4.23.0:3427-3432)
        self._configured_infer_model = None

    def activate(self) -> None:
        cpp = self._configured_infer_model
        if cpp.scheduled:
            raise HailoRTInvalidOperationException("Calling this function is invalid in case scheduler is enabled.")
        cpp.active = True

    def deactivate(self) -> None:
        cpp = self._configured_infer_model
        if cpp.scheduled:
            raise HailoRTInvalidOperationException("Calling this function is invalid in case scheduler is enabled.")
        cpp.active = False

    def _scheduler_only(self, _value) -> None:
        if not self._configured_infer_model.scheduled:
            raise HailoRTInvalidOperationException("scheduler settings need a scheduler (it is NONE)")

    set_scheduler_timeout = set_scheduler_threshold = set_scheduler_priority = _scheduler_only

    def get_async_queue_size(self) -> int:
        return self._configured_infer_model.queue

    def create_bindings(self, input_buffers=None, output_buffers=None) -> ConfiguredInferModel.Bindings:
        b = ConfiguredInferModel.Bindings(self._model)
        for name, buf in (input_buffers or {}).items():
            b.input(name).set_buffer(buf)
        for name, buf in (output_buffers or {}).items():
            b.output(name).set_buffer(buf)
        return b

    def wait_for_async_ready(self, timeout_ms: int = 1000, frames_count: int = 1) -> None:
        # IM v4.23.0:815-836: the pipeline's status is returned first, then the timeout
        self._configured_infer_model.wait_for_async_ready(timeout_ms, frames_count)

    def shutdown(self) -> None:
        self._configured_infer_model.shutdown()

    @property
    def is_shut_down(self) -> bool:
        return self._cpp_ref.shut

    def run_async(self, bindings: list, callback=None) -> AsyncInferJob:
        """PY v4.23.0:3305-3355: guards the buffers, wraps the callback (called with ``completion_info=``)."""
        buffers = []
        for b in bindings:  # a bare Bindings is not iterable, as in the real API
            buffers += [b.input(n).get_buffer() for n in self._input_names]
            buffers += [b.output(n).get_buffer(None) for n in self._output_names]
        self._buffer_guards.append(buffers)

        def callback_wrapper(error_code: int) -> None:
            exc = _status(error_code) if error_code else None
            if callback:
                callback(completion_info=AsyncInferCompletionInfo(exc))
            self._buffer_guards.popleft()

        cpp = self._configured_infer_model
        try:
            done = cpp.run_async([b.get() for b in bindings], callback_wrapper)
        except BaseException:
            self._buffer_guards.pop()
            raise
        return AsyncInferJob(done)

    def run(self, bindings: list, timeout: int) -> None:
        self.run_async(bindings).wait(timeout)

"""The hailo_platform double behaves like the sheet (hailort_api.md §9), so the backend tests mean something."""

from __future__ import annotations

import multiprocessing as mp

import hailo_platform
import numpy as np
import pytest
from hailo_platform import HEF, FormatType, HailoRTException, HailoSchedulingAlgorithm, VDevice
from hailo_platform.pyhailort.pyhailort import (
    DOUBLE,
    AsyncInferCompletionInfo,
    ConfiguredInferModel,
    HailoRTInvalidOperationException,
    HailoRTNetworkGroupNotActivatedException,
    HailoRTNotFoundException,
    HailoRTTimeout,
    InferModel,
)

pytestmark = pytest.mark.usefixtures("surface")  # every test on every HailoRT surface


def _scheduled() -> VDevice:
    params = VDevice.create_params()
    params.scheduling_algorithm = HailoSchedulingAlgorithm.ROUND_ROBIN
    return VDevice(params)


def _bindings(cim: ConfiguredInferModel, im: InferModel):
    """Buffers of the edges' configured types (UINT8 unless set_format_type changed it)."""
    dtype = {FormatType.UINT8: np.uint8, FormatType.FLOAT32: np.float32}
    b = cim.create_bindings()
    b.input().set_buffer(np.zeros(im.input().shape, np.uint8))
    for o in im.outputs:
        b.output(o.name).set_buffer(np.empty(o.shape, dtype[o.format.type]))
    return b


def test_module_layout_and_exports(surface):
    from hailo_platform.pyhailort import pyhailort

    assert hailo_platform.__version__ == surface
    assert hasattr(pyhailort, "HailoRTHEFNotCompatibleWithDevice") == (surface >= "4.21")  # pyhailort.py v4.21.0:94
    assert hasattr(hailo_platform, "HailoCommunicationClosedException") == (surface >= "4.20")
    assert hasattr(pyhailort, "HailoRTDriverOperationFailedException") == (surface >= "4.20")
    for name in ("InferModel", "ConfiguredInferModel", "AsyncInferCompletionInfo", "HailoRTTimeout",
                 "HailoRTHEFNotCompatibleWithDevice", "HailoRTNotFoundException"):
        assert not hasattr(hailo_platform, name), f"{name} is not re-exported by the real package"
    assert issubclass(HailoRTTimeout, HailoRTException) and issubclass(HailoRTException, Exception)
    params = VDevice.create_params()
    assert params.scheduling_algorithm == HailoSchedulingAlgorithm.NONE and params.group_id == "UNIQUE"
    assert params.multi_process_service is False


def test_hef_introspection(hefs):
    hef = HEF(str(hefs["rec"]))
    (inp,) = hef.get_input_vstream_infos()
    (out,) = hef.get_output_vstream_infos()
    assert inp.name == "arcface_mobilefacenet/input_layer1" and inp.shape == (112, 112, 3)
    assert out.name == "arcface_mobilefacenet/fc1" and out.shape == (512,) and out.network_name == "arcface_mobilefacenet"
    assert out.format.type == FormatType.UINT8 and out.quant_info.qp_scale > 0
    with pytest.raises(ValueError):
        HEF(123)


def test_scheduler_none_is_a_trap(hefs):
    with VDevice() as vd:  # the Python default: scheduler NONE
        im = vd.create_infer_model(str(hefs["rec"]))
        with im.configure() as cim:
            b = _bindings(cim, im)
            with pytest.raises(HailoRTNetworkGroupNotActivatedException):
                cim.run([b], 1000)
            cim.activate()  # the manual way out; only one model can be active then
            cim.run([b], 1000)
            assert np.isfinite(b.output().get_buffer()).all()


def test_buffers_contiguity_and_byte_size(hefs, surface):
    with _scheduled() as vd:
        im = vd.create_infer_model(str(hefs["rec"]))
        with im.configure() as cim:
            b = _bindings(cim, im)
            strided = np.zeros((112, 224, 3), np.uint8)[:, ::2]
            if surface == "4.18.0":  # pyhailort.py v4.18.0:2979-2990 checks nothing
                b.input().set_buffer(strided)
            else:  # v4.19.0:2993 / v4.23.0:3016
                with pytest.raises(HailoRTException, match="C_CONTIGUOUS"):
                    b.input().set_buffer(strided)
            with pytest.raises(ValueError, match="not writeable"):  # infer_model_api.cpp v4.23.0:214 mutable_data()
                ro = np.zeros((112, 112, 3), np.uint8)
                ro.flags.writeable = False
                b.input().set_buffer(ro)
            b.input().set_buffer(np.zeros((112, 112, 3), np.float32))  # 4x the bytes of a UINT8 edge
            with pytest.raises(HailoRTInvalidOperationException, match="different than expected"):
                cim.run([b], 1000)
            b.input().set_buffer(np.zeros((56, 224, 3), np.uint8))  # wrong shape, right byte count: accepted
            cim.run([b], 1000)
            b.output().set_buffer(np.empty((512,), np.uint8))  # UINT8 buffer on an edge still typed UINT8: fine
            cim.run([b], 1000)


def test_names_callback_keyword_queue(hefs):
    with _scheduled() as vd:
        im = vd.create_infer_model(str(hefs["det"]))
        with pytest.raises(HailoRTInvalidOperationException):
            im.output()  # 9 outputs: a name is required
        with pytest.raises(HailoRTNotFoundException):
            im.output("scrfd_2_5g/nope")
        with im.configure() as cim:
            b = _bindings(cim, im)
            with pytest.raises(HailoRTNotFoundException):
                b.output("nope")
            seen = []

            def callback(*, completion_info: AsyncInferCompletionInfo):  # keyword only, as HailoRT calls it
                seen.append(completion_info.exception)

            cim.wait_for_async_ready(timeout_ms=1000, frames_count=1)
            cim.run_async([b], callback).wait(10_000)
            assert seen == [None]
            with pytest.raises(HailoRTTimeout):
                cim.wait_for_async_ready(timeout_ms=10, frames_count=cim.get_async_queue_size() + 1)
            with pytest.raises(TypeError):
                cim.run_async(b)  # a bare Bindings is not a list
            with pytest.raises(HailoRTException, match=r"82 \(HAILO_QUEUE_IS_FULL\)"):
                cim.run_async([b] * (cim.get_async_queue_size() + 1))


def test_output_dequantization_uses_qp(hefs, hailo_calibration):
    _, crops = hailo_calibration
    with _scheduled() as vd:
        im = vd.create_infer_model(str(hefs["rec"]))
        im.output().set_format_type(FormatType.FLOAT32)
        with im.configure() as cim:
            f = _bindings(cim, im)
            f.input().set_buffer(np.ascontiguousarray(crops[0]))
            cim.run([f], 10_000)
        im2 = vd.create_infer_model(str(hefs["rec"]))  # default: UINT8 as the chip emits it
        with im2.configure() as cim2:
            q = _bindings(cim2, im2)
            q.input().set_buffer(np.ascontiguousarray(crops[0]))
            cim2.run([q], 10_000)
        qi = im2.output().quant_infos[0]
        deq = (q.output().get_buffer().astype(np.float32) - qi.qp_zp) * qi.qp_scale
        np.testing.assert_allclose(f.output().get_buffer(), deq, rtol=1e-6, atol=1e-6)
        assert len(np.unique(q.output().get_buffer())) > 20  # real numbers, not a constant


def _child_create(hef: str, q) -> None:
    try:
        DOUBLE.vdevice_for_child.create_infer_model(hef)
        q.put("no error")
    except HailoRTException as e:
        q.put(type(e).__name__)


def test_vdevice_belongs_to_its_process(hefs):
    vd = _scheduled()
    try:
        DOUBLE.vdevice_for_child = vd
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=_child_create, args=(str(hefs["rec"]), q))
        p.start()
        p.join(30)
        assert q.get(timeout=5) == "HailoRTException"
    finally:
        del DOUBLE.vdevice_for_child
        vd.release()


def _run_once(cim, b, timeout_ms=10_000):
    seen = []
    job = cim.run_async([b], lambda completion_info: seen.append(completion_info.exception))
    job.wait(timeout_ms)
    return seen[0]


def test_bindings_copy_semantics(hefs, hailo_calibration, surface):
    """4.18.0 copies Bindings shallowly: a reused Bindings gets stale outputs from its 2nd run on
    (infer_model_api.hpp v4.18.0:133 + .cpp v4.18.0:270-299); 4.19+ copies deeply (infer_model.cpp v4.19.0:1034)."""
    _, crops = hailo_calibration
    with _scheduled() as vd:
        im = vd.create_infer_model(str(hefs["rec"]))
        im.output().set_format_type(FormatType.FLOAT32)
        cim = im.configure()
        out = np.zeros(512, np.float32)
        b = cim.create_bindings(input_buffers={im.input().name: np.ascontiguousarray(crops[0])},
                                output_buffers={im.output().name: out})
        assert _run_once(cim, b) is None
        first = out.copy()
        b.input().set_buffer(np.ascontiguousarray(crops[3]))
        assert _run_once(cim, b) is None
        if surface == "4.18.0":
            np.testing.assert_array_equal(out, first)  # the result went to the first run's freed buffer
        else:
            assert not np.allclose(out, first)
        cim.shutdown()


def test_failed_job_kills_the_pipeline_and_wait_only_times_out(hefs, machine):
    """A job's error reaches the callback, never job.wait (infer_model.cpp v4.23.0:1061-1070); the
    pipeline then refuses every request with that status (async_infer_runner.cpp v4.23.0:79, 284-286)."""
    with _scheduled() as vd:
        im = vd.create_infer_model(str(hefs["rec"]))
        cim = im.configure()
        b = _bindings(cim, im)
        machine.fail_next_jobs = 1
        error = _run_once(cim, b)  # no exception from wait()
        assert isinstance(error, HailoRTException)
        with pytest.raises(HailoRTException):
            cim.run_async([b])
        with pytest.raises(HailoRTException):
            cim.wait_for_async_ready(timeout_ms=10)
        cim2 = vd.create_infer_model(str(hefs["rec"])).configure()  # a new configuration works
        assert _run_once(cim2, _bindings(cim2, im)) is None
        cim.shutdown()
        cim2.shutdown()


def test_outputs_are_raw_bytes_and_every_call_allocates(hefs, machine):
    """infer_model_api.cpp v4.23.0:312 allocates a buffer per output per run; :327 memcpys raw bytes."""
    with _scheduled() as vd:
        im = vd.create_infer_model(str(hefs["rec"]))
        im.output().set_format_type(FormatType.FLOAT32)
        cim = im.configure()
        wrong = np.zeros(2048, np.uint8)  # right byte count, wrong dtype: garbage, not a conversion
        b = cim.create_bindings(input_buffers={im.input().name: np.full((112, 112, 3), 100, np.uint8)},
                                output_buffers={im.output().name: wrong})
        before = machine.allocated_bytes
        assert _run_once(cim, b) is None
        assert machine.allocated_bytes - before == 2048
        floats = wrong.view(np.float32)
        assert np.isfinite(floats).all() and np.abs(floats).max() > 0
        cim.shutdown()


def test_configured_exit_only_drops_the_reference(hefs):
    """pyhailort.py v4.23.0:3213-3214: ``__exit__`` sets the handle to None; shutdown() is explicit."""
    with _scheduled() as vd:
        im = vd.create_infer_model(str(hefs["rec"]))
        with im.configure() as cim:
            pass
        assert not cim.is_shut_down and len(vd.loaded_network_groups) == 1
        with pytest.raises(AttributeError):
            cim.run_async([_bindings(cim, im)])


def test_busy_and_missing_are_both_out_of_physical_devices(machine):
    """vdevice.cpp v4.23.0:853-864: 74 for a held chip and for no chip; 73 only when asked by id."""
    machine.held_by_other_process = True
    with pytest.raises(HailoRTException, match=r"74 \(HAILO_OUT_OF_PHYSICAL_DEVICES\)"):
        _scheduled()
    with pytest.raises(HailoRTException, match=r"73 \(HAILO_DEVICE_IN_USE\)"):
        VDevice(_scheduled_params(), device_ids=["0000:01:00.0"])
    machine.held_by_other_process, machine.devices = False, []
    with pytest.raises(HailoRTException, match=r"74 \(HAILO_OUT_OF_PHYSICAL_DEVICES\)"):
        _scheduled()


def _scheduled_params():
    params = VDevice.create_params()
    params.scheduling_algorithm = HailoSchedulingAlgorithm.ROUND_ROBIN
    return params


def test_create_infer_model_keyword_per_version(hefs, surface):
    """pyhailort.py v4.18.0:3526 names it ``network_name``; v4.20.1:3532 and later ``name``."""
    with _scheduled() as vd:
        good, bad = ("network_name", "name") if surface == "4.18.0" else ("name", "network_name")
        vd.create_infer_model(str(hefs["rec"]), **{good: "arcface_mobilefacenet"})
        with pytest.raises(TypeError):
            vd.create_infer_model(str(hefs["rec"]), **{bad: "arcface_mobilefacenet"})

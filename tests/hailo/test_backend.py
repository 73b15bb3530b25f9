"""HailoBackend against the hailo_platform double: specs from HEFs, the colour boundary, batches, errors, release."""

from __future__ import annotations

import json
import multiprocessing as mp
import sys

import numpy as np
import pytest
from hailo_platform import HailoSchedulingAlgorithm

from facefleet.errors import FacefleetError
from facefleet.modelspec import ModelSpec, resolve_model
from facefleet.recognition.models import Detector, Recognizer
from facefleet.runtime import create_backend
from facefleet.runtime.hailo import HailoBackend, hef_spec, scrfd_heads_by_shape

from .hailo_hefs import ARCFACE, SCRFD_2_5G, TWIN_NORM, catalog_spec, with_sidecar, write_hef

pytestmark = pytest.mark.usefixtures("surface")  # every test on every HailoRT surface


def test_spec_from_hef_maps_heads_by_shape(hefs):
    spec = resolve_model(hefs["det"]).spec
    assert spec.format == "hef" and spec.normalization is None
    assert (spec.input.name, spec.input.width, spec.input.height) == ("scrfd_2_5g/input_layer1", 640, 640)
    assert (spec.input.dtype, spec.input.layout, spec.input.color) == ("uint8", "NHWC", "RGB")
    d = spec.detector
    # the HEF lists its outputs shuffled; the zoo's names land on their strides by shape
    assert d.scores == ("scrfd_2_5g/conv42", "scrfd_2_5g/conv49", "scrfd_2_5g/conv55")
    assert d.bbox == ("scrfd_2_5g/conv43", "scrfd_2_5g/conv50", "scrfd_2_5g/conv56")
    assert d.kps == ("scrfd_2_5g/conv44", "scrfd_2_5g/conv51", "scrfd_2_5g/conv57")
    # item 4: the zoo HEF has the bbox scale inside (its end nodes are the Mul): none on the host
    assert d.heads_order == "NHWC" and d.layout == "raw_heads" and d.bbox_scales is None
    assert spec.provenance["bbox_scale"] == "in_hef"
    rec = resolve_model(hefs["rec"]).spec.recognizer
    assert rec.output == "arcface_mobilefacenet/fc1" and rec.embedding_size == 512


def test_heads_by_shape_refuses_ambiguous_outputs():
    outs = {"a": (80, 80, 2), "b": (80, 80, 2)}
    with pytest.raises(FacefleetError, match="2 scores heads for stride 8"):
        scrfd_heads_by_shape(outs, 640, 640, (8, 16, 32), 2)


def test_loaded_models_run_on_one_round_robin_vdevice(hailo_models, machine):
    backend, det, rec = hailo_models
    assert machine.vdevices_created >= 1 and len(machine.open_vdevices) == 1
    vd = backend.vdevice
    assert vd._params.scheduling_algorithm == HailoSchedulingAlgorithm.ROUND_ROBIN
    assert len(vd.loaded_network_groups) == 2
    assert det.input_size() == (640, 640) and rec.input_size() == (112, 112)


def test_same_hef_loaded_twice_is_configured_once(hailo_backend, hefs, machine):
    before = machine.infer_models_created
    a = hailo_backend.load(resolve_model(hefs["rec"]))
    b = hailo_backend.load(resolve_model(hefs["rec"]))
    assert machine.infer_models_created == before + 1
    assert len(hailo_backend.vdevice.loaded_network_groups) == 1
    a.close()  # the other user keeps it configured
    assert len(hailo_backend.vdevice.loaded_network_groups) == 1
    assert b.run(np.zeros((1, 112, 112, 3), np.uint8))["arcface_mobilefacenet/fc1"].shape == (1, 512)
    b.close()
    assert hailo_backend.vdevice.loaded_network_groups == []
    with pytest.raises(FacefleetError, match="closed"):
        b.run(np.zeros((1, 112, 112, 3), np.uint8))


def test_close_shuts_down_and_releases_the_device(hefs, machine):
    backend = create_backend("hailo")
    det = backend.load(resolve_model(hefs["det"]))
    cim = det._cfg.configured
    vd = backend.vdevice
    backend.close()
    assert cim.is_shut_down and vd.released and vd not in machine.open_vdevices
    backend.close()  # idempotent
    # the device is free again: a new backend (or the same, reopened) gets it
    other = HailoBackend()
    other.load(resolve_model(hefs["rec"])).close()
    other.close()


def test_colour_swapped_once_at_the_boundary(hailo_models, people, load_recognizer, machine):
    _, _, rec = hailo_models
    _, crops = people
    bgr = np.ascontiguousarray(crops[:6])
    hailo = Recognizer(rec)
    emb, _ = hailo.embed(bgr)
    # the device received RGB: exactly the BGR crops with the channels reversed
    np.testing.assert_array_equal(machine.last_inputs["arcface_mobilefacenet"], bgr[..., ::-1])
    ref, _ = load_recognizer("w600k_mbf_fp32").embed(bgr)  # ONNX path, same weights
    assert (emb * ref).sum(1).min() > 0.999
    # a swapped colour order (no swap, or a second one) is visible against the ONNX path
    swapped, _ = hailo.embed(np.ascontiguousarray(bgr[..., ::-1]))
    assert (swapped * ref).sum(1).mean() < 0.98


def test_batch_equals_single_runs(hailo_models, people):
    _, _, rec = hailo_models
    _, crops = people
    r = Recognizer(rec)
    faces = np.ascontiguousarray(crops[:11])  # more than one device batch (8): chunks too
    calls = rec.calls
    batched, norms = r.embed(faces)
    assert rec.calls - calls == 2
    singles = np.concatenate([r.embed(faces[i:i + 1])[0] for i in range(len(faces))])
    np.testing.assert_allclose(batched, singles, atol=1e-5)
    assert rec.infer_seconds > 0 and norms.min() > 1


def test_item4_zoo_scrfd_hef_boxes_match_onnx_without_double_scaling(hailo_models, clip_frames, load_detector):
    """Item 4: the zoo HEF computes the bbox scale inside; its spec (from ``hef_spec`` with the
    raw-heads template) must not scale again, or boxes shrink/grow by -12/-7/+14 % per stride."""
    _, det, _ = hailo_models
    hailo = Detector(det)
    onnx = load_detector("scrfd_2.5g_rawheads")
    for i in (40, 230):
        a, b = hailo.detect(clip_frames[i]), onnx.detect(clip_frames[i])
        assert len(a) == len(b) > 0
        # UINT8 outputs (one scale per head): boxes move by a few pixels, scores by a few hundredths
        assert min(_iou(x, y) for x, y in zip(a.boxes, b.boxes, strict=True)) > 0.9
        assert np.abs(a.scores - b.scores).max() < 0.1


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _write(path, **kw):
    return write_hef(path, kw.pop("network", "arcface_mobilefacenet"), None, TWIN_NORM["arcface"], (112, 112, 3),
                     kw.pop("outputs", ARCFACE), **kw)


def test_error_hef_not_found(hailo_backend, tmp_path):
    hef = _write(tmp_path / "a.hef")
    rm = resolve_model(with_sidecar(hef, catalog_spec("w600k_mbf_fp32")))
    hef.unlink()
    with pytest.raises(FacefleetError, match="HEF not found"):
        hailo_backend.load(rm)
    with pytest.raises(FacefleetError, match="HEF not found"):
        hef_spec(tmp_path / "missing.hef", catalog_spec("w600k_mbf_fp32"))


def test_error_hef_invalid(hailo_backend, tmp_path, hefs):
    bad = tmp_path / "bad.hef"
    bad.write_bytes(b"\x00not a hef")
    spec = json.loads(hefs["rec"].with_suffix(".json").read_text())
    bad.with_suffix(".json").write_text(json.dumps({**spec, "file": bad.name}))
    with pytest.raises(FacefleetError, match="not a valid HEF"):
        hailo_backend.load(resolve_model(bad))


def test_item1_incompatible_hef_is_one_line_on_every_version(hailo_backend, tmp_path, machine, surface):
    """Item 1: HailoRTHEFNotCompatibleWithDevice exists only from 4.21; before, configure() raises
    HailoRTInvalidHEFException. Either way: one clear line, never an AttributeError."""
    machine.arch = "hailo8l"
    hef = with_sidecar(_write(tmp_path / "h8.hef", hw_arch="hailo8"), catalog_spec("w600k_mbf_fp32"))
    with pytest.raises(FacefleetError, match="not compatible with this Hailo device"):
        hailo_backend.load(resolve_model(hef))


def test_hailo8l_hef_runs_on_a_hailo8_with_a_warning(tmp_path, machine):
    events = []
    backend = HailoBackend(on_event=events.append)
    try:
        hef = with_sidecar(_write(tmp_path / "h8l.hef", hw_arch="hailo8l"), catalog_spec("w600k_mbf_fp32"))
        model = backend.load(resolve_model(hef))  # HailoRT accepts it (device_internal.cpp v4.23.0:614-617)
        assert model.run(np.zeros((1, 112, 112, 3), np.uint8))["arcface_mobilefacenet/fc1"].shape == (1, 512)
        assert any("compiled for Hailo8L" in w for w in machine.warnings)
        spec = json.loads(hef.with_suffix(".json").read_text())
        spec["provenance"] = {**spec["provenance"], "hw_arch": "hailo8l"}
        copy = tmp_path / "h8l_b.hef"
        copy.write_bytes(hef.read_bytes())
        copy.with_suffix(".json").write_text(json.dumps({**spec, "file": copy.name}))
        backend.load(resolve_model(copy))  # what the spec's provenance says is checked by facefleet too
        assert [e["type"] for e in events] == ["hailo_warning"] and "lower performance" in events[0]["message"]
    finally:
        backend.close()
    machine.arch = "hailo8l"  # and a hailo8 HEF (per its provenance) is refused before HailoRT sees it
    spec["provenance"]["hw_arch"] = "hailo8"
    copy.with_suffix(".json").write_text(json.dumps({**spec, "file": copy.name}))
    other = HailoBackend()
    try:
        with pytest.raises(FacefleetError, match="compiled for hailo8; this device is a hailo8l"):
            other.load(resolve_model(copy))
    finally:
        other.close()


def test_error_device_missing(hailo_backend, hefs, machine):
    machine.devices = []
    with pytest.raises(FacefleetError, match="no Hailo device found"):
        hailo_backend.load(resolve_model(hefs["rec"]))


def test_item2_busy_device_is_reported_as_busy_with_what_to_do(hefs, machine):
    """Item 2: a chip held elsewhere is HAILO_OUT_OF_PHYSICAL_DEVICES (74), like a missing chip
    (vdevice.cpp v4.23.0:853-864): the backend tells them apart with Device.scan()."""
    machine.held_by_other_process = True
    b = HailoBackend()
    with pytest.raises(FacefleetError, match=r"Hailo device 0000:01:00.0 is busy .*hailort.service") as e:
        b.load(resolve_model(hefs["rec"]))
    assert "FACEFLEET_HAILO_MULTI_PROCESS=1" in str(e.value) and "\n" not in str(e.value)
    machine.held_by_other_process = False
    first = HailoBackend()
    first.load(resolve_model(hefs["rec"]))
    try:  # a second backend in the same process: one VDevice per process, share the backend
        with pytest.raises(FacefleetError, match="busy"):
            HailoBackend().load(resolve_model(hefs["det"]))
    finally:
        first.close()


def test_item2_multi_process_service_shares_the_chip(hefs, machine, monkeypatch):
    monkeypatch.setenv("FACEFLEET_HAILO_MULTI_PROCESS", "1")
    with pytest.raises(FacefleetError, match="multi-process service is not running"):
        HailoBackend().load(resolve_model(hefs["rec"]))
    machine.service_running = True
    a, b = HailoBackend(), HailoBackend()  # e.g. the component and `facefleet gallery add`
    try:
        a.load(resolve_model(hefs["rec"]))
        rec = b.load(resolve_model(hefs["rec"]))
        assert rec.run(np.zeros((1, 112, 112, 3), np.uint8))["arcface_mobilefacenet/fc1"].shape == (1, 512)
        assert b.vdevice._params.multi_process_service is True
    finally:
        a.close()
        b.close()


def test_item3_reused_buffers_never_give_stale_outputs(hailo_models, people, surface):
    """Item 3: HailoRT 4.18.0 copies Bindings shallowly; reusing them gives the first run's
    outputs forever after (infer_model_api.hpp v4.18.0:133, .cpp v4.18.0:270-299)."""
    _, _, rec = hailo_models
    _, crops = people
    a, b = np.ascontiguousarray(crops[:1]), np.ascontiguousarray(crops[5:6])
    out_a = rec.run(a)["arcface_mobilefacenet/fc1"].copy()
    out_b = rec.run(b)["arcface_mobilefacenet/fc1"].copy()
    again = rec.run(a)["arcface_mobilefacenet/fc1"].copy()
    assert not np.allclose(out_a, out_b)
    np.testing.assert_array_equal(out_a, again)


def test_item6_recovers_after_a_failed_job(hefs, machine, people, surface):
    """Item 6: after a failed job HailoRT's pipeline is dead for good (async_infer_runner.cpp
    v4.23.0:62-95, 284-286); the backend re-configures, retries, and reports it."""
    events = []
    backend = HailoBackend(on_event=events.append, retries=1)
    try:
        rec = backend.load(resolve_model(hefs["rec"]))
        face = np.ascontiguousarray(people[1][:1])
        clean = rec.run(face)["arcface_mobilefacenet/fc1"].copy()
        machine.fail_next_jobs = 1
        np.testing.assert_array_equal(rec.run(face)["arcface_mobilefacenet/fc1"], clean)  # the frame is not lost
        assert [e["type"] for e in events] == ["hailo_error", "hailo_recovered"]
        assert backend.health()["recoveries"] == 1 and rec._cfg.generation == 1
        machine.fail_next_jobs = 5  # a chip that keeps failing: bounded, one line, no endless loop
        with pytest.raises(FacefleetError, match=r"inference failed on the Hailo device \(2 attempts\)"):
            rec.run(face)
        assert machine.fail_next_jobs == 3
        machine.fail_next_jobs = 0  # the chip is back: the model was re-configured, the next frame works
        np.testing.assert_array_equal(rec.run(face)["arcface_mobilefacenet/fc1"], clean)
        assert backend.health()["errors"] == 3
    finally:
        backend.close()


def test_item7_a_timed_out_job_never_writes_into_the_next_frame(hefs, machine, people, surface):
    """Item 7: after a timeout the job still runs (AsyncInferJob.wait only waits, infer_model.cpp
    v4.23.0:1061-1070) and memcpys into its buffers when it completes (infer_model_api.cpp v4.23.0:327)."""
    backend = HailoBackend(timeout_ms=50)
    try:
        rec = backend.load(resolve_model(hefs["rec"]))
        _, crops = people
        machine.stall()
        with pytest.raises(FacefleetError, match="did not answer within 50 ms"):
            rec.run(np.ascontiguousarray(crops[:1]))
        machine.unstall()
        rec._cfg.timeout_ms = 10_000  # the device answers again (and a loaded CI machine is slow)
        out = rec.run(np.ascontiguousarray(crops[7:8]))
        before = {k: v.copy() for k, v in out.items()}
        machine.release_stalled()  # the stuck job completes now and writes into ITS buffers
        for k, v in out.items():
            np.testing.assert_array_equal(v, before[k])
        assert backend.health()["timeouts"] == 1
    finally:
        machine.release_stalled()
        backend.close()


def test_health_reports_temperature_throttling_and_arch(hailo_models, machine):
    backend, _, _ = hailo_models
    h = backend.health()
    assert h["temperature_c"] == 48.25 and h["throttling"] is False and h["arch"] == "hailo8"
    assert h["device"] == "0000:01:00.0" and h["hailort"] and set(h["models"]) == {"scrfd_2_5g", "arcface_mobilefacenet"}
    machine.throttling, machine.temperature = True, None  # a firmware without the control: None, not an error
    h = backend.health()
    assert h["throttling"] is True and h["temperature_c"] is None
    assert HailoBackend().health()["temperature_c"] is None  # no device opened: nothing read, nothing raised


def test_shared_group_lets_two_backends_in(hefs):
    a, b = HailoBackend(group_id="SHARED"), HailoBackend(group_id="SHARED")
    try:
        a.load(resolve_model(hefs["rec"]))
        b.load(resolve_model(hefs["rec"]))
    finally:
        a.close()
        b.close()


def test_error_outputs_do_not_fit_spec(hailo_backend, tmp_path, hefs):
    base = json.loads(hefs["rec"].with_suffix(".json").read_text())
    cases = [
        ({"recognizer": {**base["recognizer"], "embedding_size": 128}}, "embedding_size 128"),
        ({"recognizer": {**base["recognizer"], "output": "arcface_mobilefacenet/fc2"}}, "not in the HEF"),
        ({"input": {**base["input"], "width": 128, "height": 128}}, "the HEF takes 112x112"),
        ({"input": {**base["input"], "name": "input.1"}}, "not in the HEF"),
    ]
    hef = _write(tmp_path / "arc.hef")
    for change, message in cases:
        hef.with_suffix(".json").write_text(json.dumps({**base, "file": hef.name, **change}))
        with pytest.raises(FacefleetError, match=message):
            hailo_backend.load(resolve_model(hef))
    det = json.loads(hefs["det"].with_suffix(".json").read_text())
    d = det["detector"]
    swapped = {**d, "scores": [d["scores"][1], d["scores"][0], d["scores"][2]]}
    hefs_dir = hefs["det"].parent
    (hefs_dir / "scrfd_swapped.json").write_text(json.dumps({**det, "detector": swapped, "file": "scrfd_swapped.hef"}))
    (hefs_dir / "scrfd_swapped.hef").write_bytes(hefs["det"].read_bytes())
    with pytest.raises(FacefleetError, match=r"detector.scores .* do not fit the HEF outputs"):
        hailo_backend.load(resolve_model(hefs_dir / "scrfd_swapped.hef"))
    # a HEF with a missing head
    outs = {k: v for k, v in SCRFD_2_5G.items() if k != "conv57"}
    short = write_hef(tmp_path / "short.hef", "scrfd_2_5g", None, TWIN_NORM["scrfd"], (640, 640, 3), outs)
    with pytest.raises(FacefleetError, match="0 kps heads for stride 32"):
        hef_spec(short, catalog_spec("scrfd_2.5g_rawheads"))


def test_error_onnx_spec_on_hailo(hailo_backend, model_path):
    with pytest.raises(FacefleetError, match="the hailo backend runs HEF files"):
        hailo_backend.load(resolve_model(model_path("w600k_mbf_fp32")))


def test_error_hef_spec_must_say_uint8_nhwc(hailo_backend, tmp_path, hefs):
    base = json.loads(hefs["rec"].with_suffix(".json").read_text())
    hef = _write(tmp_path / "arc.hef")
    bad = {**base, "file": hef.name, "input": {**base["input"], "layout": "NCHW"}}
    hef.with_suffix(".json").write_text(json.dumps(bad))
    with pytest.raises(FacefleetError, match="layout NHWC"):
        hailo_backend.load(resolve_model(hef))
    ModelSpec.model_validate(bad)  # a valid spec in itself: the HEF check is what refuses it


def _child_load(backend: HailoBackend, hef: str, cached: str, q) -> None:
    out = []
    for path in (hef, cached):
        try:
            backend.load(resolve_model(path))
            out.append("loaded")
        except FacefleetError as e:
            out.append(str(e))
    q.put(out)


def test_error_device_used_from_another_process(hailo_models, hefs):
    backend, _, _ = hailo_models
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    extra = hefs["dir"] / "other.hef"
    extra.write_bytes(hefs["rec"].read_bytes())
    extra.with_suffix(".json").write_text(json.dumps({**json.loads(hefs["rec"].with_suffix(".json").read_text()),
                                                  "file": extra.name}))
    p = ctx.Process(target=_child_load, args=(backend, str(extra), str(hefs["det"]), q))
    p.start()
    p.join(60)
    new, cached = q.get(timeout=5)
    assert "belongs to process" in new  # HailoRT refused create_infer_model in the child
    assert "belongs to process" in cached  # and the backend refuses its configured models there


def test_error_device_does_not_answer(hefs, machine):
    backend = HailoBackend(timeout_ms=50)
    try:
        rec = backend.load(resolve_model(hefs["rec"]))
        machine.latency_s = 0.5
        with pytest.raises(FacefleetError, match="did not answer within 50 ms"):
            rec.run(np.zeros((1, 112, 112, 3), np.uint8))
    finally:
        machine.latency_s = 0.0
        backend.close()


def test_model_swap_releases_the_old_hef(hailo_backend, hefs, clip_frames, tmp_path):
    """A pipeline switches detectors between frames; closing the old one frees it on the device."""
    from facefleet.config import PipelineConfig
    from facefleet.recognition.gallery import Gallery
    from facefleet.recognition.loader import gallery_index, load_models
    from facefleet.recognition.pipeline import FacePipeline
    from facefleet.sources import Frame

    cfg = PipelineConfig(device="t")
    old = load_models(hailo_backend, cfg, hefs["det"], hefs["rec"])
    index = gallery_index(Gallery.open(tmp_path / "g", create=True), old.recognizer)
    p = FacePipeline(old.detector, old.recognizer, index, cfg)
    p.process(Frame(0, clip_frames[0], 0.0))
    copy = tmp_path / "scrfd_2_5g_v2.hef"  # "a new model version": another file, configured beside the old
    copy.write_bytes(hefs["det"].read_bytes())
    copy.with_suffix(".json").write_text(json.dumps({**json.loads(hefs["det"].with_suffix(".json").read_text()),
                                                  "file": copy.name}))
    new = load_models(hailo_backend, cfg, copy, hefs["rec"])
    old_cim = old.detector.model._cfg.configured
    assert len(hailo_backend.vdevice.loaded_network_groups) == 3  # old det, new det, the shared recognizer
    p.set_models(new.detector, new.recognizer, index)
    old.close()
    assert old_cim.is_shut_down and len(hailo_backend.vdevice.loaded_network_groups) == 2
    assert len(new.detector.detect(clip_frames[230])) > 0  # the new pair keeps running
    p.process(Frame(1, clip_frames[1], 40.0))


def test_error_batch_larger_than_the_device_queue(hailo_backend, tmp_path, hefs):
    base = json.loads(hefs["rec"].with_suffix(".json").read_text())
    hef = _write(tmp_path / "arc.hef", queue=4)
    hef.with_suffix(".json").write_text(json.dumps({**base, "file": hef.name, "input": {**base["input"], "max_batch": 16}}))
    with pytest.raises(FacefleetError, match=r"cannot configure HEF arc\.hef on the Hailo device \(batch size 16\)"):
        hailo_backend.load(resolve_model(hef))


def test_error_without_hailort_bindings(monkeypatch, hefs):
    monkeypatch.setitem(sys.modules, "hailo_platform", None)  # as on a machine without hailo-all
    with pytest.raises(FacefleetError, match="needs HailoRT's python bindings"):
        create_backend("hailo").load(resolve_model(hefs["rec"]))

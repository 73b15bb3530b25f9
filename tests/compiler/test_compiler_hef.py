"""``facefleet build hef`` through the DFC double (tests/compiler/doubles/hailo_sdk_client)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from facefleet.cloud.compiler.hef import build_hef
from facefleet.cloud.compiler.spec import Roots
from facefleet.errors import FacefleetError
from facefleet.modelspec import ModelSpec, sha256_file

SPECS = Path(__file__).parents[2] / "build" / "specs"
DOUBLES = Path(__file__).parent / "doubles"


@pytest.fixture(scope="module")
def built(tmp_path_factory, dfc_double, load_detector, small_spec):
    """The face specs whose ONNX is in the shared assets, built once."""
    tmp = tmp_path_factory.mktemp("hef")
    out = {}
    for name in ("w600k_mbf", "scrfd_500m", "scrfd_2.5g"):
        out[name] = build_hef(small_spec(tmp, name), tmp / "out", detector=load_detector(), progress=False)
    return out


@pytest.mark.parametrize("name", ["w600k_mbf", "scrfd_500m", "scrfd_2.5g"])
def test_face_specs_build_hef_and_device_json(built, dfc_double, name):
    res = built[name]
    header, _ = dfc_double.read_hef(res.hef.read_bytes())
    spec_yaml = yaml.safe_load((SPECS / f"{name}.yaml").read_text())
    assert header["net"] == name.replace(".", "_") and header["hw_arch"] == spec_yaml["hw_arch"]
    assert len(header["outputs"]) == len(spec_yaml["end_nodes"])
    ms = ModelSpec.model_validate(json.loads(res.json.read_text()))
    assert ms.format == "hef" and ms.file == f"{name}.hef" and ms.sha256 == sha256_file(res.hef)
    assert ms.normalization is None and ms.input.dtype == "uint8" and ms.input.layout == "NHWC"
    if ms.kind == "detector":
        assert ms.detector.heads_order == "NHWC" and ms.detector.layout == "raw_heads"
    prov = ms.provenance
    assert prov["onnx"]["sha256"] == spec_yaml["onnx"]["sha256"]
    assert prov["hw_arch"] == spec_yaml["hw_arch"]
    assert prov["dfc"] == {"backend": "hailo_sdk_client", "version": dfc_double.__version__}
    assert prov["alls"].startswith(f"# {name}: generated") and "normalization1 = normalization(" in prov["alls"]
    n = 6 if ms.kind == "recognizer" else 3  # small_spec's calibration sizes
    assert len(prov["calibration"]["sha256"]) == 64 and prov["calibration"]["size"] == n
    assert f"calibset_size={n})" in prov["alls"]
    assert prov["build_spec"]["name"] == name
    assert not list(res.hef.parent.glob(".*"))  # no temporary folder left


def test_item5_scrfd_layer_names_come_from_the_parsed_har(built, dfc_double):
    """Item 5: Hailo's parser names the 2.5g score heads conv42/49/55 (zoo scrfd_2.5g.alls,
    hailo-apps scrfd.cpp:33-51), not conv46/51/55 as ONNX order would: the build finds them in the
    parsed HAR by shape and role, puts them in the model script and in the device spec."""
    ms = ModelSpec.model_validate(json.loads(built["scrfd_2.5g"].json.read_text()))
    d = ms.detector
    assert d.scores == ("scrfd_2_5g/conv42", "scrfd_2_5g/conv49", "scrfd_2_5g/conv55")
    assert d.bbox == ("scrfd_2_5g/conv43", "scrfd_2_5g/conv50", "scrfd_2_5g/conv56")
    assert d.kps == ("scrfd_2_5g/conv44", "scrfd_2_5g/conv51", "scrfd_2_5g/conv57")
    assert ms.input.name == "scrfd_2_5g/input_layer1"
    alls = ms.provenance["alls"]
    assert all(f"change_output_activation({c}, sigmoid)" in alls for c in ("conv42", "conv49", "conv55"))
    assert d.bbox_scales == (0.8807, 0.9315, 1.1424)  # this export is cut at the box conv: scales on the host
    m500 = ModelSpec.model_validate(json.loads(built["scrfd_500m"].json.read_text())).detector
    assert m500.scores == ("scrfd_500m/conv25", "scrfd_500m/conv32", "scrfd_500m/conv38")  # the double's parser order
    rec = ModelSpec.model_validate(json.loads(built["w600k_mbf"].json.read_text()))
    assert rec.recognizer.output == "w600k_mbf/fc1" and rec.input.name == "w600k_mbf/input_layer1"


def test_item5_names_the_spec_states_must_match_the_har(tmp_path, dfc_double, small_spec):
    d = yaml.safe_load((SPECS / "scrfd_2.5g.yaml").read_text())
    det = {**d["device"]["detector"], "scores": ["scrfd_2_5g/conv46", "scrfd_2_5g/conv51", "scrfd_2_5g/conv55"]}
    spec = small_spec(tmp_path, "scrfd_2.5g", device={"detector": det})
    with pytest.raises(FacefleetError, match=r"device.detector.scores .*conv46.* are not the parsed HAR's scores heads"):
        build_hef(spec, tmp_path / "out", smoke=True, progress=False)
    assert not (tmp_path / "out").exists()


def test_precision_by_onnx_node_becomes_the_hars_layer(tmp_path, dfc_double, small_spec, assets):
    """`facefleet build noise` proposes ONNX nodes; the build maps them to HAR layers after parsing."""
    graph = onnx.load(str(assets / "models" / "w600k_mbf_fp32.onnx"), load_external_data=False).graph
    first, last = [n.name for n in graph.node if n.op_type == "Conv"][::len([1 for n in graph.node if n.op_type == "Conv"]) - 1]
    spec = small_spec(tmp_path, "w600k_mbf", precision=[{"onnx_nodes": [first, last], "mode": "a16_w16"}])
    res = build_hef(spec, tmp_path / "out", smoke=True, progress=False)
    alls = json.loads(res.json.read_text())["provenance"]["alls"]
    assert "quantization_param([conv1, conv" in alls and "precision_mode=a16_w16" in alls
    bad = small_spec(tmp_path, "w600k_mbf", precision=[{"onnx_nodes": ["Conv_nope"], "mode": "a16_w16"}])
    with pytest.raises(FacefleetError, match="'Conv_nope' is not a layer of the parsed HAR"):
        build_hef(bad, tmp_path / "out2", smoke=True, progress=False)


def test_bbox_scales_with_the_zoo_mul_end_nodes_are_refused(tmp_path, small_spec):
    """The zoo's end nodes keep SCRFD's Mul (scale) in the HEF: host scales too would double-scale."""
    from facefleet.cloud.compiler.hef import check_nodes
    from facefleet.cloud.compiler.spec import load_build_spec

    onnx_path = tmp_path / "m.onnx"
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], name="Conv_1"),
                           helper.make_node("Mul", ["c", "s"], ["y"], name="Mul_2")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])],
                          [numpy_helper.from_array(np.ones((8, 3, 1, 1), np.float32), "w"),
                           numpy_helper.from_array(np.ones((1,), np.float32), "s")])
    onnx.save(helper.make_model(g), onnx_path)
    spec = load_build_spec(small_spec(tmp_path, "scrfd_2.5g", start_nodes=["x"], end_nodes=["Mul_2"],
                                      input={"name": "x", "shape": [1, 3, 8, 8]}))
    with pytest.raises(FacefleetError, match="scale the boxes twice"):
        check_nodes(spec, onnx_path)


def test_quantized_emulation_is_real_and_normalization_is_in_the_hef(built, dfc_double, people, load_recognizer):
    """SDK_FP_OPTIMIZED on raw pixels == the float model; SDK_QUANTIZED is close to it but not equal."""
    _, crops = people
    crops = crops[:8]
    ref, ref_norm = load_recognizer("w600k_mbf_fp32").embed(crops)
    runner = dfc_double.ClientRunner(har=str(built["w600k_mbf"].har))
    rgb = crops[..., ::-1].astype(np.float32)
    with runner.infer_context(dfc_double.InferenceContext.SDK_FP_OPTIMIZED) as ctx:
        fp = runner.infer(ctx, rgb)
    with runner.infer_context(dfc_double.InferenceContext.SDK_QUANTIZED) as ctx:
        q = runner.infer(ctx, rgb)
    unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    assert np.allclose(np.linalg.norm(fp, axis=1), ref_norm, rtol=1e-3)
    assert (unit(fp) * ref).sum(1).min() > 0.9999
    cos_q = (unit(q) * ref).sum(1)
    assert 0.3 < cos_q.mean() < 0.999


def test_detector_heads_leave_the_chip_nhwc_with_sigmoid(built, dfc_double):
    runner = dfc_double.ClientRunner(har=str(built["scrfd_2.5g"].har))
    frame = np.random.default_rng(0).integers(0, 255, (1, 640, 640, 3)).astype(np.float32)
    with runner.infer_context(dfc_double.InferenceContext.SDK_FP_OPTIMIZED) as ctx:
        outs = runner.infer(ctx, frame)
    assert [o.shape for o in outs[:3]] == [(1, 80, 80, 2), (1, 40, 40, 2), (1, 20, 20, 2)]
    assert all(o.min() >= 0 and o.max() <= 1 for o in outs[:3])  # change_output_activation(sigmoid) on the scores
    assert outs[3].min() < 0 or outs[3].max() > 1  # bbox heads stay linear


def _classifier(path: Path) -> None:
    """A tiny classifier ending in Softmax, the op to cut off and run on the host."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.normal(0, 0.2, (8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.5, (5, 8)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.zeros(5, np.float32), "b2")]
    nodes = [helper.make_node("Conv", ["input", "w1"], ["c1"], name="Conv_0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="Relu_1"),
             helper.make_node("GlobalAveragePool", ["r1"], ["p1"], name="GlobalAveragePool_2"),
             helper.make_node("Flatten", ["p1"], ["f1"], name="Flatten_3"),
             helper.make_node("Gemm", ["f1", "w2", "b2"], ["logits"], name="Gemm_4", transB=1),
             helper.make_node("Softmax", ["logits"], ["prob"], name="Softmax_5")]
    g = helper.make_graph(nodes, "cls", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
                          [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 5])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), path)


def test_generic_classifier_is_cut_before_softmax(tmp_path, assets, dfc_double):
    import onnxruntime as ort

    model = tmp_path / "models" / "cls.onnx"
    model.parent.mkdir()
    _classifier(model)
    spec = {"name": "tiny_cls", "kind": "generic", "onnx": {"path": "${models}/cls.onnx", "sha256": sha256_file(model)},
            "hw_arch": "hailo8l", "start_nodes": ["input"], "end_nodes": ["Gemm_4"],
            "input": {"name": "input", "shape": [1, 3, 32, 32]},
            "normalization": {"mean": [127.5, 127.5, 127.5], "std": [64.0, 64.0, 64.0]},
            "calibration": {"source": "images", "path": "${assets}/enroll", "size": 2},
            "device": {"outputs": ["tiny_cls/fc1"], "host_postprocess": "softmax"}}
    (tmp_path / "cls.yaml").write_text(yaml.safe_dump(spec))
    res = build_hef(tmp_path / "cls.yaml", tmp_path / "out", roots=Roots(models=model.parent), progress=False)
    meta = json.loads(res.json.read_text())
    assert meta["kind"] == "generic" and meta["host_postprocess"] == "softmax" and meta["outputs"] == ["tiny_cls/fc1"]
    runner = dfc_double.ClientRunner(har=str(res.har))
    x = np.random.default_rng(2).integers(0, 255, (1, 32, 32, 3)).astype(np.float32)
    with runner.infer_context(dfc_double.InferenceContext.SDK_FP_OPTIMIZED) as ctx:
        logits = runner.infer(ctx, x)
    host = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    full = ort.InferenceSession(str(model)).run(None, {"input": ((x - 127.5) / 64).transpose(0, 3, 1, 2)})[0]
    assert not np.isclose(logits.sum(), 1.0)  # the chip's output is logits
    assert np.allclose(host, full, atol=1e-5)  # host softmax == the original graph


@pytest.mark.parametrize(("change", "message"), [
    ({"onnx": {"path": "${assets}/models/missing.onnx", "sha256": None}}, "ONNX not found"),
    ({"onnx": {"path": "${assets}/models/w600k_mbf_int8dyn.onnx",
               "sha256": "c4c390b65477ed53b34d87f9417d92808dd03c41284210b6caafe72d206bb85c"}}, "does not match the spec"),
    ({"end_nodes": ["Conv_9999"]}, r"end node\(s\) \['Conv_9999'\] not in w600k_mbf_fp32.onnx"),
    ({"start_nodes": ["data"]}, r"start node\(s\) \['data'\]"),
    ({"output_activations": [{"layer": "conv999", "activation": "sigmoid"}]}, "DFC model script failed: .*conv999"),
    ({"calibration": {"source": "faces", "path": "EMPTY", "size": 4}}, "no images"),
])
def test_bad_input_fails_in_one_line_and_writes_nothing(tmp_path, dfc_double, load_detector, change, message, small_spec):
    (tmp_path / "empty").mkdir()
    if "calibration" in change:
        change = {"calibration": {**change["calibration"], "path": str(tmp_path / "empty")}}
    out = tmp_path / "out"
    with pytest.raises(FacefleetError, match=message) as e:
        build_hef(small_spec(tmp_path, "w600k_mbf", **change), out, detector=load_detector(), progress=False)
    assert "\n" not in str(e.value)
    assert not out.exists()


def test_existing_outputs_survive_a_failed_rebuild(tmp_path, built, dfc_double, load_detector, small_spec):
    out = tmp_path / "out"
    out.mkdir()
    (out / "w600k_mbf.hef").write_bytes(b"old")
    with pytest.raises(FacefleetError):
        build_hef(small_spec(tmp_path, "w600k_mbf", end_nodes=["nope"]), out, detector=load_detector(), progress=False)
    assert (out / "w600k_mbf.hef").read_bytes() == b"old"
    assert sorted(p.name for p in out.iterdir()) == ["w600k_mbf.hef"]


def test_no_dfc_is_a_clear_error(tmp_path, monkeypatch, small_spec):
    monkeypatch.setitem(sys.modules, "hailo_sdk_client", None)  # not importable, whatever ran before
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FacefleetError, match="no Hailo Dataflow Compiler here"):
        build_hef(small_spec(tmp_path, "w600k_mbf"), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_cli_build_hef_smoke(tmp_path, cli_env, small_spec):
    env = dict(cli_env, PYTHONPATH=str(DOUBLES))
    spec = small_spec(tmp_path, "w600k_mbf")
    proc = subprocess.run([sys.executable, "-m", "facefleet", "build", "hef", str(spec), "--out", str(tmp_path / "o"),
                           "--smoke", "--no-progress"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    meta = json.loads(Path(res["json"]).read_text())
    assert meta["provenance"]["calibration"]["smoke"] is True and meta["provenance"]["calibration"]["source"] == "random (smoke)"
    bad = tmp_path / "bad.yaml"
    bad.write_text(spec.read_text() + "colour: RGB\n")
    proc = subprocess.run([sys.executable, "-m", "facefleet", "build", "hef", str(bad), "--out", str(tmp_path / "o2")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"facefleet: error: invalid build spec {bad}: colour: Extra inputs are not permitted"
    assert not (tmp_path / "o2").exists()


def test_cli_compiler_runs_the_hailo_commands_in_a_container(tmp_path):
    """The CLI path: parser onnx -> optimize -> compiler, each inside the Software Suite image."""
    from facefleet.cloud.compiler.dfc import CliCompiler

    calls = []

    def run(cmd, cwd, capture_output, text):
        calls.append(cmd)
        args = cmd[cmd.index("hailo") + 1:]
        work = Path(cwd)
        if args[0] == "parser":
            (work / f"{args[args.index('--net-name') + 1]}.har").write_bytes(b"har")
        elif args[0] == "optimize":
            (work / "m_optimized.har").write_bytes(b"qhar")
        elif args[0] == "compiler":
            (work / "m.hef").write_bytes(b"hef")
        return subprocess.CompletedProcess(cmd, 0, stdout="HailoRT v4.20.0\nDFC 3.30.0\n" if args[0] == "--version" else "",
                                           stderr="")

    cli = CliCompiler("hailo8l", container="hailo_ai_sw_suite:2025-01", run=run)
    assert cli.version == "DFC 3.30.0"
    onnx_path = tmp_path / "models" / "m.onnx"
    onnx_path.parent.mkdir()
    _classifier(onnx_path)
    cli.parse(onnx_path, "m", ["input"], ["Gemm_4"], {"input": [1, 3, 32, 32]}, tmp_path)
    cli.optimize("normalization1 = normalization([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])\n", np.zeros((2, 4, 4, 3), np.uint8), tmp_path)
    assert cli.compile(tmp_path) == b"hef"
    parse, optimize, compile_ = calls[1:]
    assert parse[:2] == ["docker", "run"] and "hailo_ai_sw_suite:2025-01" in parse
    assert f"{onnx_path.parent.resolve()}:{onnx_path.parent.resolve()}" in parse
    hailo = parse[parse.index("hailo"):]
    # no --tensor-shapes (its syntax is not in Hailo's public sources): the ONNX given has static inputs
    assert hailo == ["hailo", "parser", "onnx", "m.static.onnx", "--net-name", "m", "--start-node-names", "input",
                     "--end-node-names", "Gemm_4", "--hw-arch", "hailo8l", "-y"]
    static = onnx.load(str(tmp_path / "m.static.onnx"))
    assert [d.dim_value for d in static.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 32, 32]
    assert optimize[optimize.index("hailo"):] == ["hailo", "optimize", "m.har", "--calib-set-path", "calib.npy",
                                                  "--model-script", "model.alls", "--hw-arch", "hailo8l"]
    assert np.load(tmp_path / "calib.npy").shape == (2, 4, 4, 3)
    assert compile_[compile_.index("hailo"):] == ["hailo", "compiler", "m_optimized.har", "--hw-arch", "hailo8l"]


def test_cli_har_is_read_for_its_layer_names(tmp_path):
    """A HAR is a tar holding the network's .hn (JSON); the build reads the outputs' producers from it."""
    import io
    import tarfile

    from facefleet.cloud.compiler.har import read_har

    hn = {"name": "m", "layers": {
        "m/input_layer1": {"type": "input_layer", "input": [], "output": ["m/conv1"], "output_shapes": [[-1, 8, 8, 3]]},
        "m/conv1": {"type": "conv", "input": ["m/input_layer1"], "output": ["m/output_layer1"],
                    "output_shapes": [[-1, 8, 8, 2]], "original_names": ["Conv_1"]},
        "m/output_layer1": {"type": "output_layer", "input": ["m/conv1"], "output": [], "output_shapes": [[-1, 8, 8, 2]]}}}
    har = tmp_path / "m.har"
    with tarfile.open(har, "w") as tar:
        data = json.dumps(hn).encode()
        info = tarfile.TarInfo("m.hn")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    got = read_har(har)
    assert got.net == "m" and got.input == "m/input_layer1" and got.outputs == {"m/conv1": (8, 8, 2)}
    assert got.original["m/conv1"] == ["Conv_1"]
    (tmp_path / "bad.har").write_bytes(b"har")
    with pytest.raises(FacefleetError, match=r"cannot read HAR bad\.har"):
        read_har(tmp_path / "bad.har")


def test_cli_compiler_failure_is_one_line(tmp_path):
    from facefleet.cloud.compiler.dfc import CliCompiler

    def run(cmd, cwd, capture_output, text):
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="Traceback...\nUnsupportedOperationError: Softmax_5")

    cli = CliCompiler("hailo8", run=run)
    _classifier(tmp_path / "m.onnx")
    with pytest.raises(FacefleetError, match=r"^`hailo parser` failed \(exit 1\): UnsupportedOperationError: Softmax_5$"):
        cli.parse(tmp_path / "m.onnx", "m", ["x"], ["y"], {}, tmp_path)

"""Build specs (validation, one-line errors) and their model scripts (golden files)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from facefleet.cloud.compiler.alls import render_alls
from facefleet.cloud.compiler.hef import check_nodes, check_onnx
from facefleet.cloud.compiler.spec import Roots, load_build_spec, parse_build_spec
from facefleet.errors import FacefleetError

GOLDEN = Path(__file__).parent / "golden"
SPECS = sorted((Path(__file__).parents[2] / "build" / "specs").glob("*.yaml"))
REQUIRED = {"w600k_mbf", "w600k_r50", "arcface_mobilefacenet", "arcface_r50", "scrfd_10g", "scrfd_2.5g", "scrfd_500m",
            "yolov8n", "mobilenet_v2_cls", "yolov8_face", "retinaface_mobilenet"}


def _spec_dict(name: str = "w600k_mbf") -> dict:
    return yaml.safe_load((SPECS[0].parent / f"{name}.yaml").read_text())


def test_every_model_has_a_spec():
    assert {p.stem for p in SPECS} == REQUIRED


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_spec_renders_its_golden_alls(path):
    spec = load_build_spec(path)
    assert render_alls(spec) == (GOLDEN / f"{path.stem}.alls").read_text()


@pytest.mark.parametrize("path", [p for p in SPECS if "${assets}/models" in p.read_text()], ids=lambda p: p.stem)
def test_shared_asset_specs_pin_the_real_onnx_and_its_nodes(path):
    spec = load_build_spec(path)
    onnx_path = Roots().resolve(spec.onnx.path, path.parent)
    assert onnx_path.is_file()
    assert check_onnx(spec, onnx_path) == spec.onnx.sha256
    check_nodes(spec, onnx_path)  # raises on any unknown start/end node


def test_operator_models_need_their_root(monkeypatch, tmp_path):
    monkeypatch.delenv("FACEFLEET_MODELS", raising=False)
    spec = load_build_spec(SPECS[0].parent / "scrfd_10g.yaml")
    with pytest.raises(FacefleetError, match="FACEFLEET_MODELS"):
        Roots().resolve(spec.onnx.path, tmp_path)
    assert Roots(models=tmp_path).resolve(spec.onnx.path, Path("/")) == tmp_path / "scrfd_10g_bnkps.onnx"


def test_every_option_renders_in_zoo_syntax():
    d = _spec_dict()
    d["output_activations"] = [{"layer": "fc1", "activation": "linear"}]
    d["precision"] = [{"layers": ["conv33", "dw16"], "mode": "a16_w16"}, {"layers": ["conv32"], "mode": "a8_w8_a16"},
                      {"layers": ["output_layer1"], "mode": "a16_w16"}]
    d["optimization"] = {"level": 4, "compression": 1, "batch_size": 4}
    d["finetune"] = {"enabled": False}
    d["adaround"] = {"enabled": True, "batch_size": 8, "epochs": 100, "mode": "train_all"}
    d["extra_alls"] = ["pre_quantization_optimization(activation_clipping, layers=[conv2], mode=percentile, clipping_values=[0, 99.25])"]
    text = render_alls(parse_build_spec(d, "test"))
    assert text == (GOLDEN / "all_options.alls").read_text()


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.update(colour="RGB"), "colour: Extra inputs are not permitted"),
    (lambda d: d.update(hw_arch="hailo9"), "hw_arch: Input should be 'hailo8' or 'hailo8l'"),
    (lambda d: d["onnx"].update(sha256="abc"), "onnx.sha256: String should match pattern"),
    (lambda d: d.update(precision=[{"layers": ["Conv_12"], "mode": "a16_w16"}]), "not HAR layer names"),
    (lambda d: d.update(precision=[{"layers": ["conv1"], "mode": "a12_w12"}]), "precision.0.mode"),
    (lambda d: d["calibration"].pop("path"), "calibration.path is required"),
    (lambda d: d["calibration"].update(size=0), "calibration.size: Input should be greater than 0"),
    (lambda d: d["optimization"].update(level=7), "optimization.level: Input should be less than or equal to 4"),
    (lambda d: d["input"].update(shape=[1, 1, 112, 112]), "input needs 3 channels"),
    (lambda d: d.pop("device"), "a recognizer build needs device.recognizer"),
    (lambda d: d["device"]["recognizer"].update(match_threshold=2), "device.recognizer.match_threshold"),
    (lambda d: d.update(finetune={"loss_layer_names": ["fc1"]}), "need the same length"),
])
def test_bad_specs_are_refused_in_one_line(change, message):
    d = _spec_dict()
    change(d)
    with pytest.raises(FacefleetError) as e:
        parse_build_spec(d, "w600k_mbf.yaml")
    assert message in str(e.value)
    assert "\n" not in str(e.value)
    assert str(e.value).startswith("invalid build spec w600k_mbf.yaml: ")


def test_unreadable_spec_files(tmp_path):
    with pytest.raises(FacefleetError, match="build spec not found"):
        load_build_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(FacefleetError, match=r"invalid YAML in .*bad.yaml \(line"):
        load_build_spec(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n")
    with pytest.raises(FacefleetError, match="expected a mapping"):
        load_build_spec(lst)


def test_unknown_placeholder(tmp_path):
    with pytest.raises(FacefleetError, match="unknown placeholder"):
        Roots(assets=tmp_path).resolve("${assets}/${nope}/m.onnx", tmp_path)

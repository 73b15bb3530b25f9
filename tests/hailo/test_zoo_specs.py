"""The zoo HEF specs in docs/hailo.md are valid and fit zoo-shaped HEFs; ``facefleet hailo spec`` writes sidecars."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from facefleet.cli import main
from facefleet.errors import FacefleetError
from facefleet.modelspec import ModelSpec, resolve_model
from facefleet.runtime.hailo import HailoBackend

from .hailo_hefs import TWIN_NORM, write_hef

DOC = Path(__file__).resolve().parents[2] / "docs" / "hailo.md"

# hailort_api.md §8: the zoo HEFs' vstream names (without the network prefix) and shapes
HEADS = {(8, 1): (80, 80, 2), (16, 1): (40, 40, 2), (32, 1): (20, 20, 2), (8, 4): (80, 80, 8), (16, 4): (40, 40, 8),
         (32, 4): (20, 20, 8), (8, 10): (80, 80, 20), (16, 10): (40, 40, 20), (32, 10): (20, 20, 20)}
ZOO = {
    "scrfd_10g": {"scores": ("conv41", "conv49", "conv56"), "bbox": ("conv42", "conv50", "conv57"),
                  "kps": ("conv43", "conv51", "conv58")},
    "scrfd_2_5g": {"scores": ("conv42", "conv49", "conv55"), "bbox": ("conv43", "conv50", "conv56"),
                   "kps": ("conv44", "conv51", "conv57")},
    "scrfd_500m": {"scores": ("conv26", "conv32", "conv38"), "bbox": ("conv27", "conv33", "conv39"),
                   "kps": ("conv25", "conv34", "conv40")},
    "arcface_mobilefacenet": {"fc1": (512,)},
    "arcface_r50": {"fc1": (512,)},
}

pytestmark = pytest.mark.usefixtures("surface")  # every HailoRT surface of the double


def doc_specs() -> dict[str, dict]:
    blocks = re.findall(r"```json\n(.*?)```", DOC.read_text(), re.S)
    specs = [json.loads(b) for b in blocks]
    return {s["input"]["name"].split("/")[0]: s for s in specs}


def zoo_hef(tmp: Path, net: str) -> Path:
    """A zoo-shaped test HEF (no twin: a zero-cost device) from the sheet's names and shapes."""
    if net.startswith("scrfd"):
        per = {"scores": 1, "bbox": 4, "kps": 10}
        outputs = {name: ("-", HEADS[(s, per[kind])]) for kind, names in ZOO[net].items()
                   for s, name in zip((8, 16, 32), names, strict=True)}
        return write_hef(tmp / f"{net}.hef", net, None, TWIN_NORM["scrfd"], (640, 640, 3), outputs)
    return write_hef(tmp / f"{net}.hef", net, None, TWIN_NORM["arcface"], (112, 112, 3),
                     {"fc1": ("-", (512,))})


def test_docs_carry_a_spec_per_zoo_model():
    assert set(doc_specs()) == set(ZOO)


@pytest.mark.parametrize("net", sorted(ZOO))
def test_zoo_spec_fits_its_hef_and_runs(tmp_path, net):
    spec = ModelSpec.model_validate(doc_specs()[net])
    hef = zoo_hef(tmp_path, net)
    hef.with_suffix(".json").write_text(spec.model_copy(update={"file": hef.name}).model_dump_json())
    backend = HailoBackend()
    try:
        model = backend.load(resolve_model(hef))
        w, h = model.input_size()
        out = model.run(np.zeros((2 if spec.kind == "recognizer" else 1, h, w, 3), np.uint8))
        assert set(out) == set(model.output_names) and len(out) == (9 if spec.kind == "detector" else 1)
    finally:
        backend.close()


def test_item4_spec_building_cannot_double_scale(tmp_path, capsys, hefs):
    """``hailo spec`` drops the raw-heads template's bbox scales (zoo HEFs have them inside) unless
    told the HEF was cut before the scale; a spec that says both is refused at load."""
    hef = tmp_path / "scrfd_2_5g.hef"
    hef.write_bytes(hefs["det"].read_bytes())
    assert main(["hailo", "spec", str(hef), "--template", "scrfd_2.5g_rawheads"]) == 0
    spec = resolve_model(hef).spec
    assert spec.detector.bbox_scales is None and spec.provenance["bbox_scale"] == "in_hef"
    assert main(["hailo", "spec", str(hef), "--template", "scrfd_2.5g_rawheads", "--force", "--bbox-scales-on-host"]) == 0
    assert resolve_model(hef).spec.detector.bbox_scales == (0.8807, 0.9315, 1.1424)
    data = json.loads(hef.with_suffix(".json").read_text())
    data["provenance"]["bbox_scale"] = "in_hef"  # scales on the host AND in the HEF: refused
    hef.with_suffix(".json").write_text(json.dumps(data))
    backend = HailoBackend()
    try:
        with pytest.raises(FacefleetError, match="boxes are scaled twice"):
            backend.load(resolve_model(hef))
    finally:
        backend.close()
    capsys.readouterr()


def test_cli_hailo_spec_writes_the_sidecar(tmp_path, capsys):
    hef = zoo_hef(tmp_path, "scrfd_10g")
    assert main(["hailo", "spec", str(hef), "--template", "scrfd_2.5g_rawheads", "--name", "scrfd_10g"]) == 0
    spec = resolve_model(hef).spec
    assert spec.detector.scores == ("scrfd_10g/conv41", "scrfd_10g/conv49", "scrfd_10g/conv56")
    assert spec.detector.kps == ("scrfd_10g/conv43", "scrfd_10g/conv51", "scrfd_10g/conv58")
    assert spec.format == "hef" and spec.normalization is None and spec.input.layout == "NHWC"
    assert "scrfd_10g/input_layer1 640x640" in capsys.readouterr().out
    # no overwrite without --force; bad template and missing HEF are one-line errors
    assert main(["hailo", "spec", str(hef), "--template", "scrfd_2.5g_rawheads"]) == 1
    assert "exists" in capsys.readouterr().err
    assert main(["hailo", "spec", str(hef), "--template", "nope", "--force"]) == 1
    assert "no template 'nope'" in capsys.readouterr().err
    assert main(["hailo", "spec", str(tmp_path / "x.hef"), "--template", "w600k_mbf_fp32"]) == 1
    assert "HEF not found" in capsys.readouterr().err
    rec = zoo_hef(tmp_path, "arcface_mobilefacenet")
    template = tmp_path / "t.json"
    template.write_text(json.dumps({"bad": 1}))
    assert main(["hailo", "spec", str(rec), "--template", str(template)]) == 1
    assert "invalid template spec" in capsys.readouterr().err

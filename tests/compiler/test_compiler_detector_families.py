"""Build specs of the other detector families through the DFC double: the device spec's heads
are bound by shape in the parsed HAR by each family's own plugin (issue 14, item 1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from facefleet.cloud.compiler.hef import build_hef
from facefleet.modelspec import ModelSpec

SPECS = Path(__file__).parents[2] / "build" / "specs"


@pytest.mark.parametrize(("name", "fields"), [
    ("yolov8_face", ("bbox", "scores", "kps")),
    ("retinaface_mobilenet", ("loc", "conf", "landmarks")),
])
def test_family_build_spec_binds_its_heads_from_the_har(tmp_path, dfc_double, load_detector, small_spec, name, fields):
    res = build_hef(small_spec(tmp_path, name), tmp_path / "out", detector=load_detector(), progress=False)
    ms = ModelSpec.model_validate(json.loads(res.json.read_text()))
    d, net = ms.detector, name.replace(".", "_")
    names = [n for f in fields for n in getattr(d, f)]
    assert all(len(getattr(d, f)) == 3 for f in fields) and len(set(names)) == 9  # every head once
    assert all(n.startswith(f"{net}/conv") for n in names)  # the parsed HAR's names, not the spec's placeholders
    stated = yaml.safe_load((SPECS / f"{name}.yaml").read_text())["device"]["detector"]
    assert any(tuple(stated[f]) != getattr(d, f) for f in fields)
    assert d.heads_order == "NHWC" and ms.input.layout == "NHWC" and ms.normalization is None

import pytest

from facefleet.config import ComponentConfig, PipelineConfig, parse_config
from facefleet.errors import FacefleetError


def _properties(schema: dict):
    yield from schema.get("properties", {}).items()
    for sub in schema.get("$defs", {}).values():
        yield from _properties(sub)


@pytest.mark.parametrize("schema", [PipelineConfig, ComponentConfig])
def test_every_field_is_documented(schema):
    missing = [n for n, p in _properties(schema.model_json_schema()) if "description" not in p and "$ref" not in p]
    assert missing == []


def test_defaults_and_overrides():
    cfg = parse_config({"detection": {"min_face_px": 20}, "tracking": {"recheck_every": 0}})
    assert cfg.detection.min_face_px == 20 and cfg.tracking.recheck_every == 0
    assert cfg.recognition.match_threshold is None  # the model's spec decides
    assert parse_config(None).camera_id == "cam0" and parse_config(None).models.backend == "onnx"


@pytest.mark.parametrize("bad", [
    {"detection": {"nms_iou": 0}},
    {"recognition": {"top_k": 0}},
    {"tracking": {"iou_match": 1.5}},
    {"models": {"backend": "gpu"}},
    {"camera_id": ""},
    {"extra": 1},
])
def test_rejects(bad):
    with pytest.raises(FacefleetError, match="invalid configuration"):
        parse_config(bad, "test")

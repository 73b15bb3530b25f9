"""Pipeline configuration: one pydantic schema, loaded from YAML (local mode) or a dict
(Greengrass), validated with clear one-line errors. Unknown keys are errors, not ignored."""

from __future__ import annotations

import socket
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from facefleet.errors import FacefleetError
from facefleet.recognition.tracker import TrackingConfig


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DetectionConfig(_Section):
    score_threshold: float | None = Field(None, ge=0, le=1, description="min detector score (null: the model's spec)")
    nms_iou: float | None = Field(None, gt=0, le=1, description="NMS IoU (null: the model's spec)")
    min_face_px: float = Field(12, ge=0, description="smaller faces (box height, frame px) are ignored")
    max_side: int = Field(640, ge=32, le=4096, description="long side of a dynamic-size detector input")


class RecognitionConfig(_Section):
    match_threshold: float | None = Field(None, ge=-1, le=1, description="cosine to accept (null: the model's spec)")
    pre_norm_gate: float | None = Field(None, ge=0, description="min pre_norm for evidence (null: the model's spec)")
    min_face_px: float = Field(24, ge=0, description="faces smaller than this are tracked but not embedded")
    top_k: int = Field(3, ge=1, le=100, description="candidates looked up per query")


class ModelsConfig(_Section):
    detector: str | None = Field(None, description="detector model file (null: the default)")
    recognizer: str | None = Field(None, description="recognizer model file (null: the default)")
    backend: str = Field("onnx", pattern="^(onnx|hailo)$", description="onnx (CPU) or hailo")


class PipelineConfig(_Section):
    camera_id: str = Field("cam0", min_length=1, max_length=64, description="id carried by events")
    device: str = Field(default_factory=socket.gethostname, min_length=1, description="thing or host name in events")
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    detection: DetectionConfig = Field(default_factory=DetectionConfig)
    recognition: RecognitionConfig = Field(default_factory=RecognitionConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)


def format_validation_error(e: ValidationError, origin: str) -> str:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
    more = f" (+{len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    return f"invalid configuration {origin}: {loc}: {err['msg']}{more}"


def parse_config(data: object, origin: str = "") -> PipelineConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise FacefleetError(f"invalid configuration {origin}: expected a mapping at the top level")
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise FacefleetError(format_validation_error(e, origin)) from None


def load_config(path: str | Path | None) -> PipelineConfig:
    if path is None:
        return PipelineConfig()
    p = Path(path)
    if not p.is_file():
        raise FacefleetError(f"configuration file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise FacefleetError(f"invalid YAML in {p}: {str(e).splitlines()[0]}") from None
    return parse_config(data, str(p))

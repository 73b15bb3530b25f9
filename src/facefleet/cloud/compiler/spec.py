"""Build specs: one YAML file per model, everything the DFC needs as validated data.

A spec is refused at load time (unknown keys, bad values, unresolvable paths) so no build
starts from a half-valid description.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from string import Template
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from facefleet.errors import FacefleetError
from facefleet.modelspec import DetectorSpec, ModelSpec, Normalization, RecognizerSpec
from facefleet.vision.detectors import validate_detector

# HAR layer names as the DFC prints them (conv41, dw16, fc1, output_layer3, ...), or a {glob*}.
_LAYER = re.compile(r"^([a-z][a-z0-9_]*\d+|\{[A-Za-z0-9_*?]+\})$")
MODELS_ENV = "FACEFLEET_MODELS"
PrecisionMode = Literal["a8_w8", "a16_w16", "a8_w4", "a8_w8_a16"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OnnxSource(_Strict):
    path: str = Field(description="${assets}/... (shared assets root), ${models}/... (operator's folder) or relative to the spec")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="None: recorded at build time, with a warning")


class InputShape(_Strict):
    name: str
    shape: tuple[int, int, int, int] = Field(description="as in the ONNX, batch 1")
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    color: Literal["RGB", "BGR"] = "RGB"

    @model_validator(mode="after")
    def _positive(self) -> InputShape:
        if any(d <= 0 for d in self.shape):
            raise ValueError("input.shape dimensions must be > 0")
        if self.channels != 3:
            raise ValueError("input needs 3 channels")
        return self

    @property
    def hwc(self) -> tuple[int, int, int]:
        _, a, b, c = self.shape
        return (b, c, a) if self.layout == "NCHW" else (a, b, c)

    @property
    def channels(self) -> int:
        return self.shape[1] if self.layout == "NCHW" else self.shape[3]


HeadRole = Literal["scores", "bbox", "kps"]


class OutputActivation(_Strict):
    """On a HAR layer by name, or (SCRFD) on every head of a role, found in the parsed HAR by shape."""

    layer: str | None = None
    heads: HeadRole | None = Field(None, description="SCRFD raw heads: scores, bbox or kps of every stride")
    activation: Literal["sigmoid", "relu", "linear", "leaky", "exp", "tanh"]

    @model_validator(mode="after")
    def _name(self) -> OutputActivation:
        if (self.layer is None) == (self.heads is None):
            raise ValueError("output_activations: give exactly one of layer (a HAR name) or heads (scores/bbox/kps)")
        if self.layer is not None and not _LAYER.match(self.layer):
            raise ValueError(f"output_activations: {self.layer!r} is not a HAR layer name (e.g. conv41)")
        return self


class PrecisionOverride(_Strict):
    layers: list[str] = Field(default_factory=list,
                              description="HAR names; output_layerN makes the tensor that leaves the chip 16-bit")
    onnx_nodes: list[str] = Field(default_factory=list,
                                  description="ONNX node names (what `facefleet build noise` proposes): their HAR "
                                              "layers are looked up in the parsed HAR")
    mode: PrecisionMode

    @model_validator(mode="after")
    def _names(self) -> PrecisionOverride:
        if not self.layers and not self.onnx_nodes:
            raise ValueError("precision: give layers (HAR names) or onnx_nodes")
        bad = [n for n in self.layers if not _LAYER.match(n)]
        if bad:
            raise ValueError(f"precision: {bad} are not HAR layer names (e.g. conv41, output_layer1)")
        return self


class Optimization(_Strict):
    """None fields are left to the DFC's defaults (the zoo sets none for the face models)."""

    level: int | None = Field(None, ge=0, le=4)
    compression: int | None = Field(None, ge=0, le=5)
    batch_size: int = Field(8, gt=0)


class Finetune(_Strict):
    enabled: bool = True
    learning_rate: float = Field(1e-4, gt=0)
    epochs: int = Field(8, gt=0)
    dataset_size: int = Field(4000, gt=0)
    batch_size: int = Field(4, gt=0)
    loss_layer_names: list[str] = Field(default_factory=list)
    loss_types: list[Literal["L2REL", "L2", "COSINE", "CE"]] = Field(default_factory=list)
    loss_factors: list[float] = Field(default_factory=list)

    @model_validator(mode="after")
    def _lists(self) -> Finetune:
        n = len(self.loss_layer_names)
        if len(self.loss_types) != n or len(self.loss_factors) != n:
            raise ValueError("finetune: loss_layer_names, loss_types and loss_factors need the same length")
        bad = [x for x in self.loss_layer_names if not _LAYER.match(x)]
        if bad:
            raise ValueError(f"finetune: {bad} are not HAR layer names")
        return self


class Adaround(_Strict):
    enabled: bool = True
    batch_size: int = Field(8, gt=0)
    epochs: int | None = Field(None, gt=0)
    mode: Literal["train_all", "train_bias"] | None = None


class Calibration(_Strict):
    source: Literal["faces", "images", "random"] = Field(
        description="faces: aligned faces at several scales; images: whole images letterboxed; random: smoke builds only")
    path: str | None = Field(None, description="image folder (${assets}/... allowed)")
    size: int = Field(1024, gt=0, description="the DFC recommends >= 1024 (below, finetune is reduced)")
    face_scales: tuple[int, ...] = Field((112, 80, 56, 40, 28), description="faces: face heights to simulate, px")
    seed: int = 0

    @model_validator(mode="after")
    def _path(self) -> Calibration:
        if self.source != "random" and not self.path:
            raise ValueError(f"calibration.path is required for source {self.source!r}")
        if any(s < 8 for s in self.face_scales) or not self.face_scales:
            raise ValueError("calibration.face_scales must be >= 8 px")
        return self


class DeviceDetector(BaseModel):
    """A DetectorSpec without its output names: the build takes them from the parsed HAR (SCRFD raw
    heads by shape and role). Names given here must agree with the HAR. Other fields pass through."""

    model_config = ConfigDict(extra="allow", frozen=True)
    layout: str = "raw_heads"
    scores: tuple[str, ...] | None = None
    bbox: tuple[str, ...] | None = None
    kps: tuple[str, ...] | None = None

    @model_validator(mode="after")
    def _valid(self) -> DeviceDetector:
        probe = self.model_dump(exclude_none=True)
        if self.layout in ("decoded", "raw_heads"):  # SCRFD: names may come from the HAR
            strides = probe.get("strides", (8, 16, 32))
            for k in ("scores", "bbox", "kps"):
                if getattr(self, k) is None:
                    probe[k] = tuple("x" for _ in strides)
        validate_detector(probe)  # every other field as the device will read it (other families name their heads)
        return self

    def spec(self, names: dict[str, tuple[str, ...]]) -> DetectorSpec:
        return validate_detector({**self.model_dump(exclude_none=True), **names})


class Device(_Strict):
    """What the device's ModelSpec says beyond the HEF itself (output names come from the parsed HAR)."""

    detector: DeviceDetector | None = None
    recognizer: RecognizerSpec | None = None
    outputs: list[str] = Field(default_factory=list, description="generic models: HEF output names, host post-processing")
    host_postprocess: str | None = Field(None, description="generic models: the op cut off with end_nodes, done on the host")


class BuildSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Literal["detector", "recognizer", "generic"]
    onnx: OnnxSource
    hw_arch: Literal["hailo8", "hailo8l"] = "hailo8"
    start_nodes: list[str] = Field(min_length=1)
    end_nodes: list[str] = Field(min_length=1)
    input: InputShape
    normalization: Normalization | None = Field(description="put into the HEF (normalization1); null: the model has none")
    output_activations: list[OutputActivation] = Field(default_factory=list)
    precision: list[PrecisionOverride] = Field(default_factory=list)
    optimization: Optimization = Field(default_factory=Optimization)
    finetune: Finetune | None = None
    adaround: Adaround | None = None
    calibration: Calibration
    extra_alls: list[str] = Field(default_factory=list, description="verbatim model-script lines, appended last")
    device: Device = Field(default_factory=Device)
    notes: str = ""

    @model_validator(mode="after")
    def _kind(self) -> BuildSpec:
        if self.kind == "detector" and self.device.detector is None:
            raise ValueError("a detector build needs device.detector (the HEF's output names)")
        if self.kind == "recognizer" and self.device.recognizer is None:
            raise ValueError("a recognizer build needs device.recognizer")
        if self.kind == "generic" and not self.device.outputs:
            raise ValueError("a generic build needs device.outputs")
        if self.kind == "recognizer" and self.calibration.source == "images":
            raise ValueError("a recognizer calibrates on aligned faces (calibration.source: faces)")
        return self

    def device_spec(self, hef_file: str, sha256: str, provenance: dict, names: dict) -> ModelSpec | None:
        """The ModelSpec the device reads beside the HEF (None for generic models); ``names`` are the
        HailoRT names resolved from the parsed HAR (``input``, ``detector`` heads, ``recognizer``)."""
        if self.kind == "generic":
            return None
        h, w, _ = self.input.hwc
        recognizer = None
        if self.device.recognizer is not None:
            recognizer = {**self.device.recognizer.model_dump(), "output": names["recognizer"]}
        return ModelSpec.model_validate({
            "name": self.name, "kind": self.kind, "format": "hef", "file": hef_file, "sha256": sha256,
            "input": {"name": names["input"], "width": w, "height": h, "layout": "NHWC",
                      "color": self.input.color, "dtype": "uint8", "max_batch": None},
            "normalization": None,
            "detector": self.device.detector.spec(names["detector"]).model_dump() if self.device.detector else None,
            "recognizer": recognizer,
            "provenance": provenance,
            "notes": self.notes,
        })


class Roots(BaseModel):
    """Where ${assets} and ${models} point (configurable, env defaults)."""

    assets: Path | None = None
    models: Path | None = None

    def resolve(self, text: str, base: Path) -> Path:
        mapping = {}
        if "${assets}" in text:
            if self.assets is None:
                from facefleet.assets import assets_dir

                self.assets = assets_dir()
            mapping["assets"] = str(self.assets)
        if "${models}" in text:
            if self.models is None:
                env = os.environ.get(MODELS_ENV)
                if not env:
                    raise FacefleetError(f"{text}: set {MODELS_ENV} (or --models-root) to the folder with the operator's ONNX files")
                self.models = Path(env)
            mapping["models"] = str(self.models)
        try:
            out = Path(Template(text).substitute(mapping))
        except (KeyError, ValueError) as e:
            raise FacefleetError(f"unknown placeholder in path {text!r}: {e} (use ${{assets}} or ${{models}})") from None
        return out if out.is_absolute() else base / out


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg


def parse_build_spec(data: object, origin: str) -> BuildSpec:
    if not isinstance(data, dict):
        raise FacefleetError(f"invalid build spec {origin}: expected a mapping")
    try:
        return BuildSpec.model_validate(data)
    except ValidationError as e:
        raise FacefleetError(f"invalid build spec {origin}: {_first_error(e)}") from None


def load_build_spec(path: str | Path) -> BuildSpec:
    p = Path(path)
    if not p.is_file():
        raise FacefleetError(f"build spec not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise FacefleetError(f"invalid YAML in {p}{where}") from None
    return parse_build_spec(data, str(p))

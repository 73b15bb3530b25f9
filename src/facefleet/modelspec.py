"""ModelSpec: every fact that varies per model, as data.

A new detector or recognizer is onboarded by writing its spec (a sidecar ``<model>.json``
beside the file, or an entry in the catalog ``artifacts/models.json``), never by editing code.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from facefleet.errors import FacefleetError
from facefleet.vision.detectors import DetectorSpec, layouts

CATALOG_NAME = "models.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Normalization(_Strict):
    """Per-channel ``(x - mean) / std`` with x in 0..255, in the model's colour order.

    ``None`` in a spec (``normalization: null``) means the model takes raw UINT8 pixels and
    normalizes inside (a compiled HEF).
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @model_validator(mode="after")
    def _positive_std(self) -> Normalization:
        if any(s <= 0 for s in self.std):
            raise ValueError("normalization std must be > 0")
        return self


class InputSpec(_Strict):
    name: str
    width: int | None = Field(None, gt=0, description="None: dynamic (detector picks a size)")
    height: int | None = Field(None, gt=0)
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    color: Literal["RGB", "BGR"] = "RGB"
    dtype: Literal["float32", "uint8"] = "float32"
    max_batch: int | None = Field(None, gt=0, description="None: any batch size")
    size_multiple: int = Field(32, gt=0, description="dynamic sizes are rounded up to this")
    letterbox: Literal["top_left", "center"] = Field(
        "top_left", description="detectors: where the resized frame sits in the input (the rest is black padding)")


class RecognizerSpec(_Strict):
    output: str
    embedding_size: int = Field(gt=0)
    match_threshold: float = Field(ge=-1, le=1, description="cosine to accept an identity")
    pre_norm_gate: float = Field(0.0, ge=0, description="faces whose embedding norm is below are not evidence")
    pre_norm_ref: float = Field(
        20.0, gt=0, description="pre_norm of a good face; quality weight saturates there"
    )


class ModelSpec(_Strict):
    name: str
    kind: Literal["detector", "recognizer"]
    format: Literal["onnx", "hef"] = "onnx"
    file: str = Field(description="model file; relative to the spec's folder")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    input: InputSpec
    normalization: Normalization | None
    detector: DetectorSpec | None = None
    recognizer: RecognizerSpec | None = None
    provenance: dict = Field(default_factory=dict, description="how the file was built")
    notes: str = Field("", description="why a fact is what it is, for the next reader")

    @model_validator(mode="after")
    def _kind_section(self) -> ModelSpec:
        if self.kind == "detector" and self.detector is None:
            raise ValueError("a detector spec needs a 'detector' section")
        if self.kind == "recognizer" and self.recognizer is None:
            raise ValueError("a recognizer spec needs a 'recognizer' section")
        if self.normalization is None and self.input.dtype != "uint8":
            raise ValueError("normalization may be null only for uint8 inputs (in the HEF)")
        return self

    @property
    def fingerprint(self) -> str:
        """Short id of the model file (sha256 prefix), carried by events and gallery caches."""
        if self.sha256 is None:
            raise FacefleetError(f"model spec {self.name}: sha256 unknown")
        return self.sha256[:16]

    @property
    def embedding_key(self) -> str:
        """Digest of the spec fields that change what the model computes from a crop (input
        size, layout, colour order, dtype, normalization, output): caches of embeddings are
        keyed by it AND the file's fingerprint, so a corrected sidecar re-embeds."""
        facts = {"input": self.input.model_dump(exclude={"max_batch"}),
                 "normalization": self.normalization.model_dump() if self.normalization else None,
                 "output": self.recognizer.output if self.recognizer else None}
        return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ResolvedModel(BaseModel):
    """A spec bound to a model file on disk whose fingerprint has been checked."""

    model_config = ConfigDict(frozen=True)
    spec: ModelSpec
    path: Path


def spec_error(e: ValidationError) -> str:
    """The first problem of a spec as ``field.path: message`` (one line; the union tag dropped)."""
    err = e.errors()[0]
    tags = set(layouts())
    parts = [str(x) for i, x in enumerate(err["loc"]) if not (i == 1 and err["loc"][0] == "detector" and x in tags)]
    msg = err["msg"].removeprefix("Value error, ").splitlines()[0]
    return f"{'.'.join(parts)}: {msg}" if parts else msg


def _parse_spec(data: dict, origin: str) -> ModelSpec:
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as e:
        raise FacefleetError(f"invalid model spec {origin}: {spec_error(e)}") from None


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise FacefleetError(f"invalid JSON in {path}: {e.msg} (line {e.lineno})") from None


def default_catalog() -> Path:
    """The catalog shipped in ``artifacts/`` (repo checkout) or inside the package (wheel)."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[2] / "artifacts" / CATALOG_NAME, here.parent / "data" / CATALOG_NAME):
        if candidate.is_file():
            return candidate
    raise FacefleetError(f"model catalog {CATALOG_NAME} not found")


def load_catalog(path: Path | None = None) -> list[ModelSpec]:
    path = path or default_catalog()
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise FacefleetError(f"invalid model catalog {path}: expected {{'models': [...]}}")
    return [_parse_spec(d, f"{path}#{i}") for i, d in enumerate(data["models"])]


def resolve_model(model_path: str | Path, kind: str | None = None, catalog: Path | None = None) -> ResolvedModel:
    """Find the spec for a model file and check its fingerprint.

    Order: sidecar ``<model>.json``; else the catalog entry with the file's sha256; else the
    catalog entry with the file's name (whose sha256 must then match).
    """
    path = Path(model_path)
    if not path.is_file():
        raise FacefleetError(f"model file not found: {path}")
    digest = sha256_file(path)
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        data = _read_json(sidecar)
        if not isinstance(data, dict):
            raise FacefleetError(f"invalid model spec {sidecar}: expected an object")
        spec = _parse_spec(data, str(sidecar))
        if Path(spec.file).name != path.name:
            raise FacefleetError(f"model spec {sidecar.name} describes {Path(spec.file).name!r}, not {path.name!r}: "
                                 f"fix its 'file' field (or the file name)")
    else:
        specs = load_catalog(catalog)
        by_sha = [s for s in specs if s.sha256 == digest]
        by_name = [s for s in specs if Path(s.file).name == path.name]
        if by_sha:
            spec = by_sha[0]
        elif by_name:
            spec = by_name[0]
        else:
            raise FacefleetError(
                f"no model spec for {path.name}: write {sidecar.name} beside it (see artifacts/{CATALOG_NAME})"
            )
    if spec.sha256 is not None and spec.sha256 != digest:
        raise FacefleetError(
            f"model {path}: sha256 {digest[:12]}... does not match its spec ({spec.sha256[:12]}...)"
        )
    if spec.sha256 is None:
        spec = spec.model_copy(update={"sha256": digest})
    if kind is not None and spec.kind != kind:
        raise FacefleetError(f"model {path.name} is a {spec.kind}, expected a {kind}")
    return ResolvedModel(spec=spec, path=path)

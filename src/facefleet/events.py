"""Typed events: what the device tells the world. Every event has a unique id for de-duplication.

The JSON Schema (``facefleet events schema``, ``schemas/event.schema.json``) is generated from
these classes, so producers and consumers share one definition.

Versions: every event carries ``schema_version`` (absent means 1). Version 2 added fields only
(``margin``, ``unknown_id``, ``unknown_count``, ``gallery_version`` on match events; ``face_usability``,
``temperature_c``, ``canary`` and ``cameras`` (per-camera capture figures) on status events), all optional, so the
current schema accepts version 1
events as they are. Version 1 forbids unknown properties, so a consumer built for it rejects
version 2 events: it must read ``schema_version`` and validate against the schema of that
version (``schemas/event.schema.v1.json`` is kept unchanged for it; ``schemas/event.schema.json``
is always the newest).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from facefleet.capture.stats import CameraStatus

SCHEMA_VERSION = 2
SCHEMA_ID = f"https://facefleet.dev/schemas/event.schema.v{SCHEMA_VERSION}.json"


def _new_id() -> str:
    return uuid.uuid4().hex


def _now() -> datetime:
    return datetime.now(UTC)


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event_id: str = Field(default_factory=_new_id, pattern=r"^[0-9a-f]{32}$", description="unique; consumers de-duplicate on it")
    timestamp: datetime = Field(default_factory=_now, description="when the event was made (UTC)")
    device: str = Field("local", description="thing name or host that made it")
    schema_version: int = Field(SCHEMA_VERSION, ge=1, le=SCHEMA_VERSION,
                                description="version of the event schema the producer wrote (absent: 1)")


class Quality(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pre_norm: float | None = Field(description="embedding length before L2 normalization (best evidence frame)")
    face_px: float = Field(ge=0, description="face box height in frame pixels (largest seen)")
    det_score: float = Field(ge=0, le=1, description="detector confidence (best)")
    evidence_frames: int = Field(ge=0, description="frames whose embeddings were aggregated")
    evidence_weight: float = Field(ge=0, description="sum of the quality weights of that evidence")


class Models(BaseModel):
    model_config = ConfigDict(extra="forbid")
    detector: str = Field(description="detector fingerprint (sha256 prefix)")
    recognizer: str = Field(description="recognizer fingerprint (sha256 prefix)")


class Candidate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    identity: str
    similarity: float = Field(ge=-1, le=1)


class MatchEvent(_Event):
    """A track's decision, announced once: an identity, or ``unknown``."""

    type: Literal["match"] = "match"
    camera_id: str
    track_id: int = Field(ge=0)
    decision: Literal["identified", "unknown"]
    identity: str | None = Field(description="the identity, null when unknown")
    similarity: float | None = Field(ge=-1, le=1, description="cosine to the identity (or best candidate)")
    best_candidate: Candidate | None = Field(None, description="for unknown: the nearest identity that was not accepted")
    threshold: float = Field(description="match threshold the decision was made with")
    frame_index: int = Field(ge=0, description="frame at which the decision was made")
    first_frame: int = Field(ge=0)
    last_frame: int = Field(ge=0)
    source_ms: float | None = Field(None, description="position in the source (video time), if known")
    source_name: str | None = Field(None, description="image file name for stills")
    bbox: tuple[float, float, float, float] = Field(description="last box x1,y1,x2,y2 in frame pixels")
    quality: Quality
    models: Models
    margin: float | None = Field(None, ge=-2, le=2, description="similarity of the decision minus that of the runner-up "
                                 "identity (null: fewer than two identities); small means a near tie")
    unknown_id: str | None = Field(None, max_length=64, description="for unknown: the stranger this face was clustered "
                                   "into on the device, stable across sightings")
    unknown_count: int | None = Field(None, ge=1, description="for unknown: how often that stranger has been seen")
    gallery_version: str | None = Field(None, max_length=64, description="content hash of the gallery the decision was "
                                        "made against (names and their crops): which gallery made a decision")


class ModelChangedEvent(_Event):
    type: Literal["model_changed"] = "model_changed"
    role: Literal["detector", "recognizer"]
    old: str | None
    new: str
    gallery_identities: int = Field(ge=0)
    swap_ms: float = Field(ge=0)


class ErrorEvent(_Event):
    type: Literal["error"] = "error"
    source: str = Field(description="what failed: config, command, camera, model, sink")
    message: str


class FaceUsability(BaseModel):
    """Why a camera recognizes little: frames with faces but none usable, by reason (since the last status)."""

    model_config = ConfigDict(extra="forbid")
    frames: int = Field(ge=0, description="frames processed")
    no_face: int = Field(ge=0, description="frames without any detection")
    usable: int = Field(ge=0, description="frames with at least one usable face")
    too_small: int = Field(ge=0, description="frames whose faces were all under recognition.min_face_px")
    too_blurred: int = Field(ge=0, description="frames whose best face was under recognition.min_sharpness")
    below_pre_norm_gate: int = Field(ge=0, description="frames whose best face embedded under the pre_norm gate")
    ignored_tracks: int = Field(0, ge=0, description="tracks matched to an ignore anchor (no event raised)")
    unusable_share: float = Field(ge=0, le=1, description="frames with faces but none usable / frames with faces")


class StatusEvent(_Event):
    type: Literal["status"] = "status"
    fps: dict[str, float] = Field(description="frames per second per camera")
    cameras: dict[str, CameraStatus] = Field(default_factory=dict, description="per camera: decode fps, processed fps, "
                                             "dropped frames, capture-to-event latency p50/p99")
    stage_ms: dict[str, float] = Field(description="mean ms per frame per pipeline stage")
    models: Models
    gallery_identities: int = Field(ge=0)
    spool_depth: int = Field(0, ge=0)
    dropped: int = Field(0, ge=0)
    dead_letter: int = Field(0, ge=0, description="events the transport can never take (e.g. over IoT Core's 128 KiB), "
                             "set aside in the spool's dead_letter table instead of being retried")
    spool_error: str | None = Field(None, description="set while the spool's disk refuses writes (e.g. no space left): "
                                    "events are then held in memory")
    held_in_memory: int = Field(0, ge=0, description="events held in memory because the spool's disk refuses writes")
    temperature_c: float | None = Field(None, ge=-50, le=150, description="device temperature in °C (the Hailo chip or the "
                                        "SoC), when the component reads one")
    face_usability: dict[str, FaceUsability] | None = Field(
        None, description="per camera: frames with no usable face by reason (FacePipeline.face_stats.snapshot())")
    canary: dict[str, dict[str, float | int | bool | str | None]] | None = Field(
        None, description="quality canary per role (detector, recognizer): the probe figures of the serving model "
        "measured before it served (cos_min/cos_mean vs min_cosine; iou_min/iou_mean, faces vs min_iou)")


class UnknownSummary(BaseModel):
    """One stranger cluster of the device (``StrangerBook.list()``)."""

    model_config = ConfigDict(extra="forbid")
    unknown_id: str = Field(max_length=64)
    count: int = Field(ge=1)
    first_seen: datetime
    last_seen: datetime
    cameras: list[str]
    crops: int = Field(ge=0, description="kept crops (a promotion enrolls them)")


class CommandResultEvent(_Event):
    """The answer to a command received on the component's command topic."""

    type: Literal["command_result"] = "command_result"
    command: str = Field(description="enroll, remove, list, erase, list_unknowns or promote_unknown")
    request_id: str | None = Field(None, description="the request_id the command carried")
    ok: bool
    message: str
    identities: list[str] | None = Field(None, description="for list: the enrolled identities")
    unknowns: list[UnknownSummary] | None = Field(None, description="for list_unknowns: the strangers, most recently seen first")


Event = Annotated[MatchEvent | ModelChangedEvent | ErrorEvent | StatusEvent | CommandResultEvent, Field(discriminator="type")]
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def to_json(event: _Event) -> str:
    return event.model_dump_json(exclude_none=False)


def parse_event(data: str | bytes | dict) -> Event:
    """Any version's event; one without ``schema_version`` is a version 1 event."""
    if not isinstance(data, dict):
        data = json.loads(data)
    if isinstance(data, dict) and "schema_version" not in data:
        data = {**data, "schema_version": 1}
    return EVENT_ADAPTER.validate_python(data)


def json_schema() -> dict:
    schema = EVENT_ADAPTER.json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID,
            "title": "facefleet event", **schema}

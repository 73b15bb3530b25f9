"""Typed events: what the device tells the world. Every event has a unique id for de-duplication.

The JSON Schema (``facefleet events schema``, ``schemas/event.schema.json``) is generated from
these classes, so producers and consumers share one definition.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from facefleet.capture.stats import CameraStatus

SCHEMA_ID = "https://facefleet.dev/schemas/event.schema.json"


def _new_id() -> str:
    return uuid.uuid4().hex


def _now() -> datetime:
    return datetime.now(UTC)


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event_id: str = Field(default_factory=_new_id, pattern=r"^[0-9a-f]{32}$", description="unique; consumers de-duplicate on it")
    timestamp: datetime = Field(default_factory=_now, description="when the event was made (UTC)")
    device: str = Field("local", description="thing name or host that made it")


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


class CommandResultEvent(_Event):
    """The answer to a command received on the component's command topic."""

    type: Literal["command_result"] = "command_result"
    command: str = Field(description="enroll, remove or list")
    request_id: str | None = Field(None, description="the request_id the command carried")
    ok: bool
    message: str
    identities: list[str] | None = Field(None, description="for list: the enrolled identities")


Event = Annotated[MatchEvent | ModelChangedEvent | ErrorEvent | StatusEvent | CommandResultEvent, Field(discriminator="type")]
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def to_json(event: _Event) -> str:
    return event.model_dump_json(exclude_none=False)


def parse_event(data: str | bytes | dict) -> Event:
    if isinstance(data, dict):
        return EVENT_ADAPTER.validate_python(data)
    return EVENT_ADAPTER.validate_json(data)


def json_schema() -> dict:
    schema = EVENT_ADAPTER.json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID,
            "title": "facefleet event", **schema}

"""Pipeline configuration: one pydantic schema, loaded from YAML (local mode) or a dict
(Greengrass), validated with clear one-line errors. Unknown keys are errors in a file the user
wrote; in a Greengrass configuration they are ignored with a warning, because the nucleus keeps
keys an older or newer component version left on the device (a merge never removes a key)."""

from __future__ import annotations

import copy
import logging
import socket
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from facefleet.capture.config import CameraSource
from facefleet.errors import FacefleetError
from facefleet.recognition.strangers import UnknownsConfig
from facefleet.recognition.tracker import TrackingConfig
from facefleet.vision.tiling import DetectionPlan

log = logging.getLogger(__name__)

# AWS IoT Core refuses a publish payload over 128 KiB (service quota "Maximum message payload
# size"); the Greengrass nucleus enforces the same default (maxMessageSizeInBytes, 131072). A
# command arrives as JSON with the image in base64 (4/3), so an enroll image must stay under
# (131072 - 2048 bytes of JSON envelope) * 3/4 = 96768 bytes to ever reach a device.
IOT_CORE_MAX_PAYLOAD = 128 * 1024
MAX_ENROLL_IMAGE_BYTES = 96_000


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DetectionConfig(_Section):
    score_threshold: float | None = Field(None, ge=0, le=1, description="min detector score (null: the model's spec)")
    nms_iou: float | None = Field(None, gt=0, le=1, description="NMS IoU (null: the model's spec)")
    min_face_px: float = Field(12, ge=0, description="smaller faces (box height, frame px) are ignored")
    max_side: int = Field(640, ge=32, le=4096, description="long side of a dynamic-size detector input")
    plan: DetectionPlan = Field(default_factory=DetectionPlan,
                                description="where to look: letterboxed full frame, native-resolution tiles or zones")


class RecognitionConfig(_Section):
    match_threshold: float | None = Field(None, ge=-1, le=1, description="cosine to accept (null: the model's spec)")
    pre_norm_gate: float | None = Field(None, ge=0, description="min pre_norm for evidence (null: the model's spec)")
    min_face_px: float = Field(24, ge=0, description="faces smaller than this are tracked but not embedded")
    top_k: int = Field(3, ge=1, le=100, description="candidates looked up per query")
    min_sharpness: float = Field(0.0, ge=0, description="aligned crops whose variance of the Laplacian is lower are too "
                                 "blurred to embed (0: off); counted in status events")


_SHA256 = r"^[0-9a-f]{64}$"


class ModelsConfig(_Section):
    detector: str | None = Field(None, description="detector model file (null: the default); in Greengrass a relative path is "
                                 "resolved against the component's artifacts folder. The ONNX detector for the CPU fallback")
    recognizer: str | None = Field(None, description="recognizer model file (null: the default); relative paths as for detector. "
                                   "The ONNX recognizer for the CPU fallback")
    backend: str = Field("onnx", pattern="^(onnx|hailo)$", description="onnx (CPU) or hailo")
    detector_sha256: str | None = Field(None, pattern=_SHA256, description="if set, the detector file must have this sha256")
    recognizer_sha256: str | None = Field(None, pattern=_SHA256, description="if set, the recognizer file must have this sha256")


class PipelineConfig(_Section):
    camera_id: str = Field("cam0", min_length=1, max_length=64, description="id carried by events")
    device: str = Field(default_factory=socket.gethostname, min_length=1, description="thing or host name in events")
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    detection: DetectionConfig = Field(default_factory=DetectionConfig)
    recognition: RecognitionConfig = Field(default_factory=RecognitionConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    unknowns: UnknownsConfig = Field(default_factory=UnknownsConfig)

    @field_validator("device")
    @classmethod
    def _topic_safe(cls, v: str) -> str:
        from facefleet.names import topic_value

        try:
            return topic_value(v, "device")
        except FacefleetError as e:
            raise ValueError(str(e)) from None


CAMERA_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "file://")


class CameraConfig(CameraSource):
    """One camera the component serves: its id plus how it is read (``capture.CameraSource``:
    decoder, hwaccel, decode threads, detection rate)."""

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="camera id carried by events and status")
    source: str = Field(min_length=1, description="rtsp://, rtsps://, http(s):// or file:// URL, a video file path, "
                        "or a V4L2 camera index such as \"0\". For detection prefer the camera's low-resolution substream")

    @model_validator(mode="before")
    @classmethod
    def _fps_cap_alias(cls, data):
        """``fps_cap`` (before issue 13) is ``detect_fps``: configurations on devices still validate."""
        if isinstance(data, dict) and "fps_cap" in data:
            data = dict(data)
            cap = data.pop("fps_cap")
            if "detect_fps" in data and data["detect_fps"] != cap:
                raise ValueError("fps_cap is the deprecated name of detect_fps: set only detect_fps")
            data["detect_fps"] = cap
            log.warning("camera %s: fps_cap is deprecated, use detect_fps", data.get("id"))
        return data

    @field_validator("source")
    @classmethod
    def _url(cls, v: str) -> str:
        v = v.strip()
        if "://" in v:
            if not v.lower().startswith(CAMERA_SCHEMES) or len(v.split("://", 1)[1]) == 0:
                raise ValueError(f"camera URL {v!r}: scheme must be one of {', '.join(s[:-3] for s in CAMERA_SCHEMES)} with a host or path")
        elif any(c in v for c in "\n\r\0"):
            raise ValueError("camera source contains control characters")
        return v

    @property
    def target(self) -> str:
        """What the decoder opens (a ``file://`` URL becomes its path)."""
        return self.source[len("file://"):] if self.source.lower().startswith("file://") else self.source


class TopicsConfig(_Section):
    events: str = Field("facefleet/{thing}/events/{type}", min_length=1,
                        description="IoT Core topic of events ({thing}: thing name, {type}: event type); QoS 1")
    commands: str = Field("facefleet/{thing}/commands", min_length=1, description="IoT Core topic the component takes commands on")
    local: str | None = Field("facefleet/{thing}/events/{type}", description="local pub/sub topic that gets a copy of every event "
                              "(null: no copy)")

    @field_validator("events", "commands", "local")
    @classmethod
    def _no_wildcards(cls, v: str | None) -> str | None:
        if v is not None and any(c in v for c in "#+"):
            raise ValueError(f"topic {v!r} must not contain MQTT wildcards")
        return v


class SpoolConfig(_Section):
    path: str = Field("spool.sqlite", min_length=1, description="SQLite file of events not yet confirmed by the sink "
                      "(relative: under the component's work folder)")
    max_events: int = Field(100_000, ge=10, le=10_000_000, description="bound of the spool; when full the OLDEST event is "
                            "dropped and counted")
    batch: int = Field(200, ge=1, le=10_000, description="events handed to the sink per round (in flight together)")


class CommandsConfig(_Section):
    max_image_bytes: int = Field(MAX_ENROLL_IMAGE_BYTES, ge=1_000, le=20_000_000,
                                 description="largest enrollment image accepted (decoded bytes). A command travels "
                                 f"through IoT Core (128 KiB payloads, base64 image): values above {MAX_ENROLL_IMAGE_BYTES} "
                                 "are accepted for older configurations but the limit in force is "
                                 f"{MAX_ENROLL_IMAGE_BYTES}")

    max_image_pixels: int = Field(40_000_000, ge=10_000, le=100_000_000, description="largest enrollment image in pixels "
                                  "(width x height, read from the header before decoding: a small PNG can be a pixel bomb)")

    @property
    def effective_max_image_bytes(self) -> int:
        """The limit in force: what the transport can carry, whatever an older version left set."""
        return min(self.max_image_bytes, MAX_ENROLL_IMAGE_BYTES)


class MqttConfig(_Section):
    host: str = Field(min_length=1, description="broker host: 127.0.0.1 for a local broker, the IoT Core ATS endpoint for mTLS")
    port: int = Field(1883, ge=1, le=65535, description="1883 plain TCP (loopback only), 8883 with mTLS")
    client_id: str | None = Field(None, max_length=128, description="MQTT client id (IoT Core: the thing name); null: random")
    cert: str | None = Field(None, description="client certificate (PEM) for mTLS")
    key: str | None = Field(None, description="private key (PEM) for mTLS")
    ca: str | None = Field(None, description="CA bundle (PEM), e.g. AmazonRootCA1.pem; null: the system trust store")

    @model_validator(mode="after")
    def _tls_or_loopback(self) -> MqttConfig:
        if bool(self.cert) != bool(self.key):
            raise ValueError("mTLS needs both cert and key")
        if not self.cert and self.host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"plain MQTT only to a broker on loopback; {self.host} needs cert and key (mTLS)")
        return self


class ComponentConfig(PipelineConfig):
    """The Greengrass component's configuration. The recipe's DefaultConfiguration, IPC
    get_configuration and the local YAML (``facefleet run --config``) all validate with it."""

    HAILO_REC_HEF: str = Field("", description="recognizer HEF for backend hailo (relative: in the artifacts folder). Empty: "
                               "the HAILO_REC_HEF environment variable of Greengrass v1 functions, if set")
    HAILO_DET_HEF: str = Field("", description="detector HEF for backend hailo (relative: in the artifacts folder)")
    cameras: list[CameraConfig] = Field(default_factory=list, max_length=16, description="cameras the component serves")
    gallery: str = Field("gallery", min_length=1, description="gallery folder (relative: under the component's work folder)")
    gallery_archives: list[str] = Field(default_factory=list, max_length=32,
                                        description="gallery archives made by 'facefleet gallery pack' and shipped as artifacts "
                                        "(relative: in the artifacts folder), merged into the gallery at start and when this "
                                        "list changes; the device embeds their crops with its own model")
    topics: TopicsConfig = Field(default_factory=TopicsConfig)
    spool: SpoolConfig = Field(default_factory=SpoolConfig)
    commands: CommandsConfig = Field(default_factory=CommandsConfig)
    status_interval_s: float = Field(60.0, ge=1, le=86_400, description="seconds between status events")
    mqtt: MqttConfig | None = Field(None, description="outside Greengrass (local mode): also send every event through the "
                                    "spool to this MQTT 5 broker; inside Greengrass events go over IPC and this is ignored")
    accessControl: dict | None = Field(None, description="Greengrass IPC authorization policies: read by the nucleus, "
                                       "ignored by the component (it sits in the recipe's DefaultConfiguration)")

    @field_validator("cameras")
    @classmethod
    def _unique_ids(cls, v: list[CameraConfig]) -> list[CameraConfig]:
        ids = [c.id for c in v]
        if len(set(ids)) != len(ids):
            raise ValueError(f"camera ids must be unique: {ids}")
        return v


def format_validation_error(e: ValidationError, origin: str) -> str:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
    more = f" (+{len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    return f"invalid configuration {origin}: {loc}: {err['msg']}{more}"


def parse_config(data: object, origin: str = "", schema: type[PipelineConfig] = PipelineConfig) -> PipelineConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise FacefleetError(f"invalid configuration {origin}: expected a mapping at the top level")
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        raise FacefleetError(format_validation_error(e, origin)) from None


def _drop(data: dict, loc: tuple) -> bool:
    node = data
    for k in loc[:-1]:
        if (isinstance(node, dict) and k in node) or (isinstance(node, list) and isinstance(k, int) and k < len(node)):
            node = node[k]
        else:
            return False
    if isinstance(node, dict) and loc and loc[-1] in node:
        del node[loc[-1]]
        return True
    return False


def parse_component_config(data: object, origin: str = "", ignored: list[str] | None = None) -> ComponentConfig:
    """A Greengrass configuration: unknown keys (left by another component version: the nucleus
    never removes a key on a merge) are dropped with a warning and listed in ``ignored``; a wrong
    type or value for a known key is still an error. Greengrass hands numbers back as floats;
    pydantic's lax mode accepts 15.0 for an int."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise FacefleetError(f"invalid configuration {origin}: expected a mapping at the top level")
    data = copy.deepcopy(data)
    dropped: list[str] = []
    while True:
        try:
            cfg = ComponentConfig.model_validate(data)
            break
        except ValidationError as e:
            extra = [tuple(err["loc"]) for err in e.errors() if err["type"] == "extra_forbidden"]
            removed = [loc for loc in extra if _drop(data, loc)]
            if not removed:
                raise FacefleetError(format_validation_error(e, origin)) from None
            dropped += [".".join(str(x) for x in loc) for loc in removed]
    if dropped:
        log.warning("configuration %s: ignoring unknown key(s) %s (left by another component version?)", origin,
                    ", ".join(dropped))
    if ignored is not None:
        ignored.extend(dropped)
    return cfg


def load_config(path: str | Path | None, schema: type[PipelineConfig] = PipelineConfig) -> PipelineConfig:
    if path is None:
        return schema()
    p = Path(path)
    if not p.is_file():
        raise FacefleetError(f"configuration file not found: {p}")
    from facefleet.yamlsafe import load_yaml_file

    return parse_config(load_yaml_file(p), str(p), schema)  # bounded: no aliases, depth, duplicates

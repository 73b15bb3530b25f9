"""Commands on the component's command topic: enroll, remove, list, erase, list_unknowns, promote_unknown. Parsed with pydantic so a
malformed payload becomes one error event, never an exception in the IPC callback."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from facefleet.config import format_validation_error
from facefleet.errors import FacefleetError


class _Cmd(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: str | None = Field(None, max_length=128, description="echoed in the reply, for the caller")


class Enroll(_Cmd):
    command: Literal["enroll"]
    name: str = Field(min_length=1, max_length=128)
    image_b64: str = Field(min_length=4, description="JPEG or PNG, base64")


class Remove(_Cmd):
    command: Literal["remove"]
    name: str = Field(min_length=1, max_length=128)


class ListIds(_Cmd):
    command: Literal["list"]


class Erase(_Cmd):
    """Fleet erase (also the document of the ``gallery erase`` IoT job): remove the identity and
    never merge it again from a shipped archive. Erasing an absent name succeeds."""

    command: Literal["erase"]
    name: str = Field(min_length=1, max_length=128)


class ListUnknowns(_Cmd):
    command: Literal["list_unknowns"]


class PromoteUnknown(_Cmd):
    """A stranger cluster becomes a named identity (its kept crops), or an ignore anchor."""

    command: Literal["promote_unknown"]
    unknown_id: str = Field(min_length=1, max_length=64)
    name: str | None = Field(None, min_length=1, max_length=128)
    ignore: bool = False


COMMANDS = ("enroll", "remove", "list", "erase", "list_unknowns", "promote_unknown")
Command = Annotated[Enroll | Remove | ListIds | Erase | ListUnknowns | PromoteUnknown, Field(discriminator="command")]
_ADAPTER: TypeAdapter[Command] = TypeAdapter(Command)


def parse_command(payload: bytes | str | dict, max_payload: int) -> Command:
    if isinstance(payload, bytes | str):
        if len(payload) > max_payload:
            raise FacefleetError(f"command payload of {len(payload)} bytes is over the limit of {max_payload}")
        try:
            payload = json.loads(payload)
        except RecursionError:
            raise FacefleetError("command payload is nested too deeply") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise FacefleetError(f"command payload is not JSON: {e}") from None
    if not isinstance(payload, dict):
        raise FacefleetError("command payload must be a JSON object")
    try:
        return _ADAPTER.validate_python(payload)
    except ValidationError as e:
        raise FacefleetError(format_validation_error(e, "command").replace("invalid configuration command", "invalid command")) from None


def _as_dict(payload: bytes | str | dict, max_payload: int) -> dict | None:
    if isinstance(payload, dict):
        return payload
    if len(payload) > max_payload:
        return None
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def request_id_of(payload: bytes | str | dict, max_payload: int) -> str | None:
    """The request_id of a command that failed to parse, if one can be read: the caller waits on it."""
    data = _as_dict(payload, max_payload)
    rid = data.get("request_id") if data else None
    return rid if isinstance(rid, str) and 0 < len(rid) <= 128 else None


def command_of(payload: bytes | str | dict, max_payload: int) -> str:
    data = _as_dict(payload, max_payload)
    cmd = data.get("command") if data else None
    return cmd if isinstance(cmd, str) and cmd in COMMANDS else "unknown"


def decode_image(cmd: Enroll, max_bytes: int, max_pixels: int | None = None):
    """Base64 (MIME line breaks allowed) -> BGR, bounded in bytes AND in pixels (read from the
    header before anything is decoded: a small PNG can be a 25000x25000 bomb)."""
    from facefleet.images import MAX_PIXELS, decode_image_bytes

    text = "".join(cmd.image_b64.split())  # MIME-wrapped base64 (RFC 2045 76-char lines)
    if len(text) > max_bytes * 4 // 3 + 4:
        raise FacefleetError(f"enroll image is over the limit of {max_bytes} bytes")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise FacefleetError("enroll image_b64 is not valid base64") from None
    if len(raw) > max_bytes:
        raise FacefleetError(f"enroll image is {len(raw)} bytes, over the limit of {max_bytes}")
    try:
        return decode_image_bytes(raw, "enroll image", max_pixels or MAX_PIXELS)
    except FacefleetError as e:
        if "cannot decode" in str(e):
            raise FacefleetError("enroll image could not be decoded (JPEG or PNG expected)") from None
        raise

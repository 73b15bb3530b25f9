"""Event-stream framing and the RPC message layer, as the Greengrass nucleus speaks them on its
IPC socket (test double: the server half; the client half is the real awscrt).

Sources (awslabs/aws-c-event-stream, tag v0.7.1):
- message = prelude (total_length u32 BE, headers_length u32 BE, prelude CRC32 u32 BE over the
  first 8 bytes) + headers + payload + message CRC32 (running CRC over everything before it,
  continued from the prelude CRC): source/event_stream.c:348-386 (encode), :395-450 (decode
  checks: PRELUDE_CHECKSUM_FAILURE, MESSAGE_CHECKSUM_FAILURE); prelude 12 bytes, trailer 4:
  include/aws/event-stream/event_stream.h:81-84; max message 24 MiB: event_stream.h:21.
- header = name length u8, name, value type u8, value (BOOL_TRUE=0 .. UUID=9; byte buffers and
  strings with a u16 BE length): event_stream.h:86-98.
- RPC headers ``:message-type`` / ``:message-flags`` / ``:stream-id`` (int32) and
  ``operation`` (string): source/event_stream_rpc.c:9-14; message types APPLICATION_MESSAGE=0,
  APPLICATION_ERROR=1, PING=2, PING_RESPONSE=3, CONNECT=4, CONNECT_ACK=5, PROTOCOL_ERROR=6,
  INTERNAL_ERROR=7 and flags CONNECTION_ACCEPTED=1, TERMINATE_STREAM=2:
  include/aws/event-stream/event_stream_rpc.h:28-44.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from dataclasses import dataclass, field

PRELUDE_LEN, TRAILER_LEN = 12, 4
MAX_MESSAGE = 24 * 1024 * 1024

# header value types (event_stream.h:86-98)
BOOL_TRUE, BOOL_FALSE, BYTE, INT16, INT32, INT64, BYTE_BUF, STRING, TIMESTAMP, UUID = range(10)

# RPC message types and flags (event_stream_rpc.h:28-44)
APPLICATION_MESSAGE, APPLICATION_ERROR, PING, PING_RESPONSE, CONNECT, CONNECT_ACK, PROTOCOL_ERROR, INTERNAL_ERROR = range(8)
CONNECTION_ACCEPTED, TERMINATE_STREAM = 1, 2


class FramingError(Exception):
    """A message the real decoder would refuse (bad CRC, bad length, unknown header type)."""


@dataclass
class Header:
    name: str
    type: int
    value: object


@dataclass
class Message:
    headers: list[Header] = field(default_factory=list)
    payload: bytes = b""

    def get(self, name: str, default=None):
        for h in self.headers:
            if h.name.lower() == name.lower():
                return h.value
        return default


def string(name: str, value: str) -> Header:
    return Header(name, STRING, value)


def int32(name: str, value: int) -> Header:
    return Header(name, INT32, value)


def _encode_header(h: Header) -> bytes:
    name = h.name.encode()
    if not 0 < len(name) < 256:
        raise FramingError(f"header name {h.name!r}: 1..255 bytes")
    out = struct.pack(">B", len(name)) + name + struct.pack(">B", h.type)
    t, v = h.type, h.value
    if t in (BOOL_TRUE, BOOL_FALSE):
        return out
    if t == BYTE:
        return out + struct.pack(">b", v)
    if t == INT16:
        return out + struct.pack(">h", v)
    if t == INT32:
        return out + struct.pack(">i", v)
    if t in (INT64, TIMESTAMP):
        return out + struct.pack(">q", v)
    if t in (BYTE_BUF, STRING):
        raw = v.encode() if isinstance(v, str) else bytes(v)
        return out + struct.pack(">H", len(raw)) + raw
    if t == UUID:
        return out + (v.bytes if isinstance(v, uuid.UUID) else bytes(v))
    raise FramingError(f"unknown header type {t}")


def encode(msg: Message) -> bytes:
    headers = b"".join(_encode_header(h) for h in msg.headers)
    total = PRELUDE_LEN + len(headers) + len(msg.payload) + TRAILER_LEN
    if total > MAX_MESSAGE:
        raise FramingError(f"message of {total} bytes is over the {MAX_MESSAGE} limit")
    prelude = struct.pack(">II", total, len(headers))
    prelude_crc = zlib.crc32(prelude)
    body = prelude + struct.pack(">I", prelude_crc) + headers + msg.payload
    # the message CRC continues from the prelude CRC over the bytes after the prelude fields
    return body + struct.pack(">I", zlib.crc32(body[8:], prelude_crc))


def _decode_headers(raw: bytes) -> list[Header]:
    out, i = [], 0
    while i < len(raw):
        n = raw[i]
        name = raw[i + 1:i + 1 + n].decode()
        i += 1 + n
        t = raw[i]
        i += 1
        if t in (BOOL_TRUE, BOOL_FALSE):
            v: object = t == BOOL_TRUE
        elif t == BYTE:
            v, i = struct.unpack_from(">b", raw, i)[0], i + 1
        elif t == INT16:
            v, i = struct.unpack_from(">h", raw, i)[0], i + 2
        elif t == INT32:
            v, i = struct.unpack_from(">i", raw, i)[0], i + 4
        elif t in (INT64, TIMESTAMP):
            v, i = struct.unpack_from(">q", raw, i)[0], i + 8
        elif t in (BYTE_BUF, STRING):
            ln = struct.unpack_from(">H", raw, i)[0]
            b = raw[i + 2:i + 2 + ln]
            v, i = (b.decode() if t == STRING else b), i + 2 + ln
        elif t == UUID:
            v, i = uuid.UUID(bytes=raw[i:i + 16]), i + 16
        else:
            raise FramingError(f"unknown header value type {t}")
        out.append(Header(name, t, v))
    return out


def read_message(recv_exactly) -> Message | None:
    """Read one message with ``recv_exactly(n) -> bytes`` (b"" at EOF); checks both CRCs."""
    prelude = recv_exactly(PRELUDE_LEN)
    if not prelude:
        return None
    total, hlen, pcrc = struct.unpack(">III", prelude)
    if zlib.crc32(prelude[:8]) != pcrc:
        raise FramingError("prelude checksum was incorrect")
    if total > MAX_MESSAGE or total < PRELUDE_LEN + TRAILER_LEN + hlen:
        raise FramingError(f"bad message length {total} (headers {hlen})")
    rest = recv_exactly(total - PRELUDE_LEN)
    body, (mcrc,) = rest[:-TRAILER_LEN], struct.unpack(">I", rest[-TRAILER_LEN:])
    if zlib.crc32(body, zlib.crc32(prelude[8:], pcrc)) != mcrc:
        raise FramingError("message checksum was incorrect")
    return Message(_decode_headers(body[:hlen]), body[hlen:])


def rpc(message_type: int, stream_id: int, flags: int = 0, headers: list[Header] | None = None, payload: bytes = b"") -> Message:
    """An RPC message: the three int32 headers the RPC layer adds (event_stream_rpc.c:9-14)."""
    return Message([int32(":message-type", message_type), int32(":message-flags", flags), int32(":stream-id", stream_id),
                    *(headers or [])], payload)

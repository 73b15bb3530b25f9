"""The stand-in's framing against aws-c-event-stream's own test vectors (awslabs/aws-c-event-stream
v0.7.1, tests/message_deserializer_test.c:11-28, 40-72, 80-90): byte-exact encoding, both CRCs
checked on decode."""

from __future__ import annotations

import io

import pytest

from . import eventstream as es

EMPTY = bytes.fromhex("00000010000000000 5c248eb7d98c8ff".replace(" ", ""))
NO_HEADERS = bytes.fromhex("0000001d00000000fd528c5a") + b"{'foo':'bar'}" + bytes.fromhex("c3653936")
ONE_HEADER = (bytes.fromhex("0000003d0000002007fd8396") + b"\x0ccontent-type\x07\x00\x10application/json" + b"{'foo':'bar'}"
              + bytes.fromhex("8d9c08b1"))


def _read(data: bytes) -> es.Message | None:
    return es.read_message(io.BytesIO(data).read)


@pytest.mark.parametrize("vector, headers, payload", [
    (EMPTY, [], b""),
    (NO_HEADERS, [], b"{'foo':'bar'}"),
    (ONE_HEADER, [es.string("content-type", "application/json")], b"{'foo':'bar'}"),
])
def test_encoding_matches_the_reference_vectors(vector, headers, payload):
    assert es.encode(es.Message(headers, payload)) == vector
    msg = _read(vector)
    assert msg.payload == payload and msg.headers == headers


def test_corrupt_messages_are_refused():
    bad_prelude = bytearray(ONE_HEADER)
    bad_prelude[9] ^= 1
    with pytest.raises(es.FramingError, match="prelude checksum"):
        _read(bytes(bad_prelude))
    bad_body = bytearray(ONE_HEADER)
    bad_body[20] ^= 1
    with pytest.raises(es.FramingError, match="message checksum"):
        _read(bytes(bad_body))


def test_every_header_type_round_trips():
    import uuid

    headers = [es.Header("t", es.BOOL_TRUE, True), es.Header("f", es.BOOL_FALSE, False), es.Header("b", es.BYTE, -3),
               es.Header("s", es.INT16, -300), es.int32(":stream-id", 7), es.Header("l", es.INT64, 2**40),
               es.Header("buf", es.BYTE_BUF, b"\x00\x01"), es.string("operation", "aws.greengrass#UpdateState"),
               es.Header("ts", es.TIMESTAMP, 1_700_000_000_000), es.Header("u", es.UUID, uuid.UUID(int=5))]
    msg = _read(es.encode(es.Message(headers, b"x")))
    assert msg.headers == headers and msg.get(":STREAM-ID") == 7

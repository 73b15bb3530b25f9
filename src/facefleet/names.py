"""Validation of names that reach terminals, file systems and MQTT topics.

Why: an identity name travels to ``gallery list``, to the consumer's terminal and into events;
a device name becomes part of every topic. ESC/BEL/bidi overrides rewrite an operator's
terminal, ``bob`` and `` bob `` silently become one identity of two people, and a ``+``, ``#``
or ``/`` in a topic level makes every publish invalid (MQTT 5.0 section 4.7: wildcards are not
allowed in a PUBLISH topic name), so events would stay in the spool forever.
"""

from __future__ import annotations

import unicodedata

from facefleet.errors import FacefleetError

NAME_MAX = 128
TOPIC_VALUE_MAX = 128
# Unicode categories never allowed in a name: controls, formats (bidi overrides, zero-width),
# line/paragraph separators, private use, surrogates, unassigned.
_BAD_CATEGORIES = {"Cc", "Cf", "Zl", "Zp", "Co", "Cs", "Cn"}


def _bad_char(text: str) -> str | None:
    for c in text:
        if unicodedata.category(c) in _BAD_CATEGORIES:
            return f"U+{ord(c):04X}"
    return None


def identity_name(name: object) -> str:
    """A valid identity name (NFC) or a one-line error. Never silently trimmed: `` bob `` is refused,
    not merged into ``bob``."""
    if not isinstance(name, str):
        raise FacefleetError(f"invalid identity name {name!r}: must be text")
    rule = f"1-{NAME_MAX} characters, no slashes, control or formatting characters, no leading/trailing spaces"
    nfc = unicodedata.normalize("NFC", name)
    if not nfc or len(nfc) > NAME_MAX or nfc != nfc.strip() or any(c in nfc for c in "/\\"):
        raise FacefleetError(f"invalid identity name {printable(name)!r}: {rule}")
    bad = _bad_char(nfc)
    if bad:
        raise FacefleetError(f"invalid identity name {printable(name)!r}: contains {bad} ({rule})")
    return nfc


def topic_value(value: str, what: str) -> str:
    """A value substituted into an MQTT topic level (device / thing name)."""
    if not value or len(value) > TOPIC_VALUE_MAX:
        raise FacefleetError(f"{what} {printable(value)!r}: 1-{TOPIC_VALUE_MAX} characters")
    if any(c in value for c in "+#/"):
        raise FacefleetError(f"{what} {printable(value)!r} must not contain '+', '#' or '/' (it becomes an MQTT topic level)")
    bad = _bad_char(value)
    if bad or value != value.strip():
        raise FacefleetError(f"{what} {printable(value)!r}: no control characters or surrounding spaces")
    return value


def printable(text: object, limit: int = 200) -> str:
    """Text safe for a terminal or a log line: control and formatting characters escaped."""
    s = str(text)[:limit]
    return "".join(c if unicodedata.category(c) not in _BAD_CATEGORIES else f"\\u{ord(c):04x}" for c in s)

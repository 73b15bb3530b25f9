"""YAML for configuration files, hardened: bounded size and depth, no aliases, no duplicate keys.

Why: ``yaml.safe_load`` is safe from code execution but not from a "billion laughs" (aliases
that expand exponentially when the result is walked), from 5000-deep nesting (RecursionError)
or from duplicate keys (silently last-wins). A configuration never needs aliases.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from facefleet.errors import FacefleetError

MAX_BYTES = 1 << 20
MAX_DEPTH = 64


class _Loader(yaml.SafeLoader):
    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.YAMLError(f"YAML aliases are not allowed in a configuration (line {mark.line + 1})")
        self._depth += 1
        if self._depth > MAX_DEPTH:
            mark = self.peek_event().start_mark
            raise yaml.YAMLError(f"nested deeper than {MAX_DEPTH} levels (line {mark.line + 1})")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                dup = key in seen
            except TypeError:
                raise yaml.YAMLError(f"unhashable mapping key (line {key_node.start_mark.line + 1})") from None
            if dup:
                raise yaml.YAMLError(f"duplicate key {key!r} (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml_file(path: Path) -> object:
    """Parse a configuration file or raise one clear line."""
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise FacefleetError(f"configuration {path} is {size} bytes, over the limit of {MAX_BYTES >> 10} KB")
        raw = path.read_bytes()
    except OSError as e:
        raise FacefleetError(f"cannot read configuration {path}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FacefleetError(f"configuration {path} is not UTF-8 text (byte {e.start})") from None
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except yaml.YAMLError as e:
        raise FacefleetError(f"invalid YAML in {path}: {str(e).splitlines()[0]}") from None
    except RecursionError:
        raise FacefleetError(f"invalid YAML in {path}: nested too deeply") from None

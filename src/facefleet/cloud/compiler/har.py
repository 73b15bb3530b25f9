"""What the parsed HAR says: the network's real name, its input layer, and which layer feeds each
output with what shape. Build specs never hard-code HAR layer names: SCRFD heads are found here by
shape and role, precision overrides by the ONNX nodes they came from.

Hailo's parser numbers layers its own way (scrfd_2.5g: scores conv42/49/55, where ONNX order gives
conv46/51/55): only the parsed network knows.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from facefleet.errors import FacefleetError


@dataclass(frozen=True)
class HarInfo:
    net: str                                       # the DFC's network name ('.' becomes '_')
    input: str                                     # e.g. scrfd_2_5g/input_layer1
    outputs: dict[str, tuple[int, ...]]            # producing layer (net/conv42) -> (h, w, c) or (c,), in output order
    original: dict[str, list[str]] = field(default_factory=dict)  # layer -> the ONNX nodes it came from

    def short(self, layer: str) -> str:
        return layer.split("/", 1)[1] if "/" in layer else layer


def _shape(dims) -> tuple[int, ...]:
    return tuple(int(d) for d in list(dims)[1:])


def from_hn_model(hn) -> HarInfo:
    """From ``runner.get_hn_model()`` (the calls the zoo makes: main_utils.py _get_output_shapes,
    hn_editor/activations_changer.py)."""
    inputs = hn.get_input_layers()
    outs: dict[str, tuple[int, ...]] = {}
    original: dict[str, list[str]] = {}
    for o in hn.get_output_layers(remove_non_neural_core_layers=False):
        src = list(hn.predecessors(o))
        if len(src) != 1:
            raise FacefleetError(f"HAR output {o.name} has {len(src)} producers")
        outs[src[0].name] = _shape(o.output_shape)
    for layer in (hn.stable_toposort() if hasattr(hn, "stable_toposort") else hn):  # HailoNN is a graph of layers
        original[layer.name] = list(getattr(layer, "original_names", []) or [])
    if len(inputs) != 1:
        raise FacefleetError(f"HAR has {len(inputs)} input layers, expected 1")
    name = inputs[0].name
    return HarInfo(name.split("/")[0], name, outs, original)


def from_hn_json(hn: dict) -> HarInfo:
    """From HN JSON (``layers`` by name with ``type``, ``input``, ``output_shapes``, ``original_names``)."""
    layers = hn.get("layers", {})
    inputs = [k for k, v in layers.items() if v.get("type") == "input_layer"]
    if len(inputs) != 1:
        raise FacefleetError(f"HAR has {len(inputs)} input layers, expected 1")
    outs: dict[str, tuple[int, ...]] = {}
    original: dict[str, list[str]] = {}
    for v in layers.values():
        if v.get("type") != "output_layer":
            continue
        (src,) = v["input"]
        outs[src] = _shape(v["output_shapes"][0])
    original = {k: list(v.get("original_names", [])) for k, v in layers.items()}
    return HarInfo(inputs[0].split("/")[0], inputs[0], outs, original)


def read_har(path: Path) -> HarInfo:
    """A HAR written by the ``hailo`` CLI: a tar archive holding the network's ``.hn`` (JSON)."""
    try:
        with tarfile.open(path) as tar:
            member = next((m for m in tar.getmembers() if m.name.endswith(".hn")), None)
            if member is None:
                raise FacefleetError(f"{path.name}: no .hn inside the HAR")
            data = tar.extractfile(member).read()
    except (tarfile.TarError, OSError) as e:
        raise FacefleetError(f"cannot read HAR {path.name}: {e}") from None
    try:
        return from_hn_json(json.load(io.BytesIO(data)))
    except (ValueError, KeyError) as e:
        raise FacefleetError(f"{path.name}: unreadable HN: {e}") from None

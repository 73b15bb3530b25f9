"""Bind a build spec to the parsed HAR: every layer name the model script and the device spec use.

SCRFD raw heads are found by shape and role (grid = input / stride; channels = anchors x 1
scores, x 4 box distances, x 10 landmarks), as the device finds them in the HEF; precision
overrides given as ONNX nodes become the HAR layers made from them. Names the spec does state
must agree with the HAR, or the build stops before the optimizer runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from facefleet.cloud.compiler.har import HarInfo
from facefleet.cloud.compiler.spec import BuildSpec
from facefleet.errors import FacefleetError
from facefleet.runtime.hailo import scrfd_heads_by_shape
from facefleet.vision.detectors import OutputMismatch, validate_detector

log = logging.getLogger(__name__)


@dataclass
class Resolved:
    activations: list[tuple[str, str]] = field(default_factory=list)      # (HAR layer, activation)
    precision: list[tuple[list[str], str]] = field(default_factory=list)  # (HAR layers, mode)
    names: dict = field(default_factory=dict)                             # for BuildSpec.device_spec


def _heads(spec: BuildSpec, har: HarInfo) -> dict[str, tuple[str, ...]]:
    d = spec.device.detector
    if d is not None and d.layout not in ("decoded", "raw_heads"):  # another family: it binds its heads by shape
        cfg = validate_detector(d.model_dump(exclude_none=True))
        h, w, _ = spec.input.hwc
        try:
            bound = cfg.bind_hef({k: v for k, v in har.outputs.items() if len(v) == 3}, h, w)
        except OutputMismatch as e:
            raise FacefleetError(f"{spec.name}: {e}") from None
        return {f: getattr(bound, f) for f in cfg.output_fields() if getattr(bound, f) is not None}
    if d is None or d.layout != "raw_heads":  # other layouts name their outputs in the spec (checked by DetectorSpec)
        return {k: getattr(d, k) for k in ("scores", "bbox", "kps") if getattr(d, k) is not None} if d else {}
    extra = d.model_dump()
    strides, anchors = tuple(extra.get("strides", (8, 16, 32))), int(extra.get("anchors_per_cell", 2))
    h, w, _ = spec.input.hwc
    outs = {k: v for k, v in har.outputs.items() if len(v) == 3}
    scores, bbox, kps = scrfd_heads_by_shape(outs, h, w, strides, anchors)
    found = {"scores": scores, "bbox": bbox, "kps": kps}
    for role, names in found.items():
        stated = getattr(d, role)
        if stated is not None and tuple(stated) != names:
            raise FacefleetError(f"{spec.name}: device.detector.{role} {list(stated)} are not the parsed HAR's "
                                 f"{role} heads {list(names)} (found by shape): drop the names from the spec")
    return found


def resolve(spec: BuildSpec, har: HarInfo) -> Resolved:
    r = Resolved()
    r.names["input"] = har.input
    heads = _heads(spec, har) if spec.kind == "detector" else {}
    r.names["detector"] = heads
    for a in spec.output_activations:
        if a.layer is not None:
            r.activations.append((a.layer, a.activation))
            continue
        if not heads or heads.get(a.heads) is None:
            raise FacefleetError(f"{spec.name}: output_activations heads: {a.heads} needs a raw-heads detector")
        r.activations += [(har.short(n), a.activation) for n in heads[a.heads]]
    by_node = {node: har.short(layer) for layer, nodes in har.original.items() for node in nodes}
    for p in spec.precision:
        layers = list(p.layers)
        for node in p.onnx_nodes:
            if node not in by_node:
                raise FacefleetError(f"{spec.name}: precision onnx_nodes: {node!r} is not a layer of the parsed HAR")
            layers.append(by_node[node])
        r.precision.append((layers, p.mode))
    if spec.kind == "recognizer":
        flat = [n for n, s in har.outputs.items() if len(s) == 1]
        if len(flat) != 1:
            raise FacefleetError(f"{spec.name}: expected one embedding output in the HAR, found {sorted(har.outputs)}")
        stated = spec.device.recognizer.output
        if stated != flat[0]:
            log.warning("%s: device.recognizer.output %s is %s in the parsed HAR: using the HAR's", spec.name, stated,
                        flat[0])
        r.names["recognizer"] = flat[0]
    r.names["outputs"] = list(har.outputs)
    return r

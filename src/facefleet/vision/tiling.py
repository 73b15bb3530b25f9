"""Detection plans: where the detector looks in a frame.

A fixed-size detector input (a HEF is compiled for e.g. 640x640) shrinks a 1280x720 frame by
half, so a 28 px face becomes 14 px and is lost. A plan adds tiles at NATIVE resolution (an
overlapping grid, or operator-drawn zones where far faces appear: a door, a corridor end) to
the letterboxed full frame that finds near faces. Detections are mapped back to the frame and
merged across windows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from facefleet.errors import FacefleetError
from facefleet.vision.detections import Detections
from facefleet.vision.nms import overlaps


class Zone(BaseModel):
    """A rectangle of the camera frame, in frame pixels, searched at native resolution."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field("", description="label for logs")
    x: int = Field(description="left edge, frame pixels")
    y: int = Field(description="top edge, frame pixels")
    width: int = Field(gt=0, description="frame pixels")
    height: int = Field(gt=0, description="frame pixels")


class DetectionPlan(BaseModel):
    """Which windows of a frame the detector runs on."""

    model_config = ConfigDict(extra="forbid")
    full_frame: bool = Field(True, description="run the letterboxed whole frame (finds near faces)")
    grid: bool = Field(False, description="cover the whole frame with overlapping native-resolution tiles")
    zones: list[Zone] = Field(default_factory=list, description="native-resolution tiles over these regions only")
    tile_size: int | None = Field(None, ge=64, le=4096,
                                  description="tile side in pixels (null: the detector's input size, or max_side)")
    overlap: int = Field(64, ge=0, description="pixels shared by neighbouring tiles; >= the largest far face")
    tile_every: int = Field(1, ge=1, description="run the tiles every k-th frame (tracks carry faces between)")

    @model_validator(mode="after")
    def _detects_something(self) -> DetectionPlan:
        if not (self.full_frame or self.grid or self.zones):
            raise ValueError("the plan detects nothing: enable full_frame, grid or give zones")
        if self.tile_size is not None and self.overlap >= self.tile_size:
            raise ValueError(f"overlap {self.overlap} must be smaller than tile_size {self.tile_size}")
        return self

    @property
    def tiled(self) -> bool:
        return self.grid or bool(self.zones)

    def windows(self, frame_w: int, frame_h: int, tile: int) -> list[Window]:
        """The native-resolution tiles for a frame size. Zones are clipped to the frame; a zone
        wholly outside it is an error (the camera's geometry changed: the plan is stale)."""
        tile = self.tile_size or tile
        if self.overlap >= tile:
            raise FacefleetError(f"detection plan: overlap {self.overlap} must be smaller than the tile ({tile} px)")
        regions: list[tuple[int, int, int, int]] = []
        if self.grid:
            regions.append((0, 0, frame_w, frame_h))
        for z in self.zones:
            x0, y0 = max(z.x, 0), max(z.y, 0)
            x1, y1 = min(z.x + z.width, frame_w), min(z.y + z.height, frame_h)
            if x1 <= x0 or y1 <= y0:
                raise FacefleetError(
                    f"detection plan: zone {z.name or (z.x, z.y)} ({z.width}x{z.height} at {z.x},{z.y}) "
                    f"lies outside the {frame_w}x{frame_h} frame")
            regions.append((x0, y0, x1, y1))
        out: list[Window] = []
        for x0, y0, x1, y1 in regions:
            for ty in _starts(y0, y1, tile, self.overlap):
                for tx in _starts(x0, x1, tile, self.overlap):
                    w = Window(tx, ty, min(tx + tile, x1), min(ty + tile, y1), frame_w, frame_h)
                    if w not in out:
                        out.append(w)
        return out


def _starts(lo: int, hi: int, tile: int, overlap: int) -> list[int]:
    """Tile origins covering [lo, hi) with at least ``overlap`` shared pixels between neighbours."""
    if hi - lo <= tile:
        return [lo]
    n = math.ceil((hi - lo - overlap) / (tile - overlap))
    step = (hi - lo - tile) / (n - 1)
    return [lo + round(i * step) for i in range(n)]


@dataclass(frozen=True)
class Window:
    """A tile: frame pixels [x0, x1) x [y0, y1); which of its edges are inside the frame."""

    x0: int
    y0: int
    x1: int
    y1: int
    frame_w: int
    frame_h: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def cut_by_edge(self, boxes: np.ndarray, margin: float = 2.0) -> np.ndarray:
        """Boxes (frame pixels) touching an edge of this tile that is not a frame edge: faces
        the tile cut. A neighbour tile (overlap) or the full frame sees them whole."""
        cut = np.zeros(len(boxes), bool)
        if self.x0 > 0:
            cut |= boxes[:, 0] <= self.x0 + margin
        if self.y0 > 0:
            cut |= boxes[:, 1] <= self.y0 + margin
        if self.x1 < self.frame_w:
            cut |= boxes[:, 2] >= self.x1 - margin
        if self.y1 < self.frame_h:
            cut |= boxes[:, 3] >= self.y1 - margin
        return cut


def merge(parts: list[Detections], iou: float, containment: float = 0.7) -> Detections:
    """Merge detections from overlapping windows: greedy by score, suppressing boxes that
    overlap a kept one by IoU, or lie mostly inside it (a partial face next to the whole)."""
    det = Detections.concat(parts)
    if len(det) <= 1:
        return det
    order = np.argsort(-det.scores, kind="stable")
    det = det.take(order)
    ious, inside = overlaps(det.boxes, det.boxes)
    suppress_pairs = (ious > iou) | (inside > containment)
    keep, dead = [], np.zeros(len(det), bool)
    for i in range(len(det)):
        if dead[i]:
            continue
        keep.append(i)
        dead |= suppress_pairs[i]
    return det.take(np.asarray(keep))

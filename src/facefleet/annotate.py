"""Draw what the pipeline sees on a frame: the detection plan (letterboxed full frame, native-
resolution tiles, named zones) and the faces (box, height in pixels, identity or unknown).

Why: zones are placed in frame pixels, so an operator needs the real camera image with the
plan drawn on it (``facefleet snapshot``) and a clip of what the pipeline decided
(``facefleet run --annotate out.mp4``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from facefleet.errors import FacefleetError
from facefleet.sources import Frame, FrameSource
from facefleet.vision.tiling import DetectionPlan

log = logging.getLogger(__name__)

# BGR colours, one per meaning (tests look for them)
KNOWN = (0, 200, 0)
UNKNOWN = (0, 0, 255)
PENDING = (200, 200, 200)  # a track not decided yet
TILE = (255, 128, 0)
ZONE = (0, 215, 255)
FULL_FRAME = (255, 255, 255)
CLIP_SUFFIXES = {".mp4": "mp4v", ".avi": "MJPG"}


@dataclass
class FaceMark:
    """A face to draw: frame-pixel box; ``decided`` False for a track still gathering evidence."""

    box: tuple[float, float, float, float]
    identity: str | None
    similarity: float | None = None
    decided: bool = True

    @property
    def colour(self) -> tuple[int, int, int]:
        if not self.decided:
            return PENDING
        return KNOWN if self.identity else UNKNOWN

    @property
    def label(self) -> str:
        who = self.identity if self.identity else ("unknown" if self.decided else "...")
        sim = f" {self.similarity:.2f}" if self.similarity is not None else ""
        return f"{who}{sim} {self.box[3] - self.box[1]:.0f}px"


def faces_from_events(events: Iterable) -> list[FaceMark]:
    """Match events (decisions) -> marks."""
    return [FaceMark(tuple(ev.bbox), ev.identity if ev.decision == "identified" else None, ev.similarity)
            for ev in events if getattr(ev, "type", None) == "match"]


def faces_from_tracks(tracks: Iterable, frame_index: int) -> list[FaceMark]:
    """The tracker's tracks seen on this frame -> marks (decided ones with their identity)."""
    out = []
    for t in tracks:
        if t.ended or t.last_frame != frame_index:
            continue
        m = t.match
        identified = t.decision == "identified" and m is not None
        out.append(FaceMark(tuple(float(v) for v in t.box), m.identity if identified else None,
                            m.similarity if (m is not None and t.decision) else None, decided=t.decision is not None))
    return out


def _text(img: np.ndarray, text: str, x: int, y: int, colour: tuple[int, int, int]) -> None:
    """Label with a dark backing so it reads on any image; kept inside the frame."""
    scale = max(0.4, min(img.shape[:2]) / 900)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x = int(np.clip(x, 0, max(img.shape[1] - tw - 2, 0)))
    y = int(np.clip(y, th + 2, img.shape[0] - base - 1))
    cv2.rectangle(img, (x, y - th - 2), (x + tw + 2, y + base), (0, 0, 0), cv2.FILLED)
    cv2.putText(img, text, (x + 1, y), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def _thickness(img: np.ndarray) -> int:
    return max(2, round(min(img.shape[:2]) / 300))


def draw_plan(img: np.ndarray, plan: DetectionPlan, tile_px: int, full_input: tuple[int, int] | None = None) -> np.ndarray:
    """The plan's windows on ``img`` (in place): full frame (with the detector input size it is
    letterboxed to), grid tiles and zones (by name)."""
    h, w = img.shape[:2]
    t = _thickness(img)
    if plan.full_frame:
        cv2.rectangle(img, (0, 0), (w - 1, h - 1), FULL_FRAME, 1)
        size = f" -> {full_input[0]}x{full_input[1]}" if full_input else ""
        _text(img, f"full frame {w}x{h}{size}", w, 0, FULL_FRAME)  # top right: tiles label bottom left
    if plan.tiled:
        for i, win in enumerate(plan.windows(w, h, tile_px)):
            cv2.rectangle(img, (win.x0, win.y0), (win.x1 - 1, win.y1 - 1), TILE, 1)
            _text(img, f"tile {i} {win.width}x{win.height}", win.x0 + 3, win.y1 - 4, TILE)
        for z in plan.zones:
            x0, y0 = max(z.x, 0), max(z.y, 0)
            x1, y1 = min(z.x + z.width, w) - 1, min(z.y + z.height, h) - 1
            cv2.rectangle(img, (x0, y0), (x1, y1), ZONE, t)
            _text(img, f"zone {z.name or '?'} {z.width}x{z.height} at {z.x},{z.y}", x0 + 3, y0 + 16, ZONE)
    return img


def draw_faces(img: np.ndarray, faces: Iterable[FaceMark]) -> np.ndarray:
    """Boxes and labels (identity or unknown, similarity, face height) on ``img`` (in place)."""
    t = _thickness(img)
    for f in faces:
        x1, y1, x2, y2 = (round(v) for v in f.box)
        cv2.rectangle(img, (x1, y1), (x2, y2), f.colour, t)
        _text(img, f.label, x1, y1 - t - 2, f.colour)
    return img


def write_image(path: Path, img: np.ndarray) -> None:
    """Encode then replace atomically: a failed write never leaves half an image."""
    ok, data = cv2.imencode(path.suffix or ".png", img)
    if not ok:
        raise FacefleetError(f"cannot encode an image as {path.suffix!r} (use .png or .jpg)")
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_bytes(data.tobytes())
    os.replace(tmp, path)


class ClipWriter:
    """Annotated frames -> a video file (mp4v in .mp4, MJPG in .avi), written beside the target
    and renamed into place on close; every frame is resized to the first frame's size."""

    def __init__(self, path: str | Path, fps: float = 25.0):
        self.path = Path(path)
        if self.path.suffix.lower() not in CLIP_SUFFIXES:
            raise FacefleetError(f"--annotate {self.path}: use a .mp4 or .avi file")
        if not self.path.parent.is_dir():
            raise FacefleetError(f"--annotate {self.path}: folder {self.path.parent} does not exist")
        self.fps = fps
        self.frames = 0
        self._tmp = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None

    def write(self, img: np.ndarray) -> None:
        if self._writer is None:
            self._size = (img.shape[1], img.shape[0])
            fourcc = cv2.VideoWriter_fourcc(*CLIP_SUFFIXES[self.path.suffix.lower()])
            self._writer = cv2.VideoWriter(str(self._tmp), fourcc, self.fps, self._size)
            if not self._writer.isOpened():
                raise FacefleetError(f"cannot write video {self.path}")
        if (img.shape[1], img.shape[0]) != self._size:
            img = cv2.resize(img, self._size)
        self._writer.write(img)
        self.frames += 1

    def close(self) -> None:
        if self._writer is None:
            log.warning("--annotate %s: no frames, nothing written", self.path)
            return
        self._writer.release()
        self._writer = None
        os.replace(self._tmp, self.path)


class AnnotatedSource(FrameSource):
    """Wraps the source a pipeline consumes: when the consumer asks for the next frame, the
    previous one has been processed, so its tracks (or, for stills, its decisions) are drawn
    on a copy and written to the clip. ``observe`` is given every published event."""

    def __init__(self, source: FrameSource, pipeline, writer: ClipWriter):
        super().__init__()
        self.source, self.pipeline, self.writer = source, pipeline, writer
        self.name, self.live = source.name, source.live
        self._events: list = []

    @property
    def skipped(self) -> int:  # the wrapped source's count, for the caller's final check
        return self.source.skipped

    @skipped.setter
    def skipped(self, value: int) -> None:
        pass

    def observe(self, event) -> None:
        self._events.append(event)

    def wrap_publish(self, publish: Callable) -> Callable:
        def both(event) -> None:
            self.observe(event)
            publish(event)
        return both

    def __iter__(self) -> Iterator[Frame]:
        for frame in self.source:
            self._events.clear()
            yield frame
            self._draw(frame)

    def _draw(self, frame: Frame) -> None:
        det = self.pipeline.detector
        plan = self.pipeline.cfg.detection.plan
        img = frame.image.copy()
        h, w = img.shape[:2]
        cw, ch = det.tile_canvas(plan)
        draw_plan(img, plan, min(cw, ch), det.input_size_for(w, h))
        if frame.still:
            faces = faces_from_events(self._events)
        else:
            faces = faces_from_tracks(self.pipeline.tracker.tracks, frame.index)
        draw_faces(img, faces)
        self.writer.write(img)

    def close(self) -> None:
        try:
            self.writer.close()
        finally:
            self.source.close()


def annotate_run(path: str, source: FrameSource, pipeline, publish: Callable, fps: float | None = None) -> tuple[AnnotatedSource, Callable]:
    """For ``facefleet run --annotate``: the source to iterate and the publish to call instead."""
    rate = fps or _source_fps(source) or 25.0
    ann = AnnotatedSource(source, pipeline, ClipWriter(path, rate))
    return ann, ann.wrap_publish(publish)


def _source_fps(source: FrameSource) -> float | None:
    target = getattr(source, "target", None)
    if target is None or getattr(source, "live", False):
        return None
    cap = cv2.VideoCapture(target)
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return float(fps) if fps and fps > 0 else None

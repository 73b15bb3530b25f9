"""Detector and Recognizer: a loaded model plus its spec-driven pre/post-processing.

Both check on construction that the model's outputs fit its ModelSpec (a self-test on a blank
input), so a wrong file is refused at load time, not at the first face.
"""

from __future__ import annotations

import numpy as np

from facefleet.errors import FacefleetError
from facefleet.runtime.base import LoadedModel
from facefleet.vision.detections import Detections, postprocess
from facefleet.vision.detectors import OutputMismatch
from facefleet.vision.letterbox import Letterbox, input_size, letterbox
from facefleet.vision.tiling import DetectionPlan, merge


def _item(output: np.ndarray, i: int, n: int) -> np.ndarray:
    """Image ``i`` of a batched output: batch-first, or (models without a batch axis) rows
    concatenated image after image."""
    if output.shape[0] == n:
        return output[i]
    return output.reshape(n, -1, output.shape[-1])[i]


def check_input_size(model: LoadedModel) -> None:
    """A spec whose fixed input size is not the model's is refused (one line), not left to the
    runtime's "invalid dimensions" at the first frame."""
    spec, (mw, mh) = model.spec, model.input_size()
    sw, sh = spec.input.width, spec.input.height
    for what, s, m in (("width", sw, mw), ("height", sh, mh)):
        if s is not None and m is not None and s != m:
            raise FacefleetError(f"model {spec.name}: spec input.{what} {s}, the model's input is {mw}x{mh} "
                                 f"(width x height): fix input.width/height in its spec")


class Detector:
    """Any detector family on any backend: letterbox -> infer -> the family's decoder -> frame
    coordinates -> NMS -> min size; tiles too. The family is the spec's ``detector.layout``."""

    def __init__(self, model: LoadedModel, max_side: int = 640, score_threshold: float | None = None,
                 nms_iou: float | None = None, min_face_px: float = 0.0):
        spec = model.spec
        if spec.kind != "detector" or spec.detector is None:
            raise FacefleetError(f"model {spec.name} is not a detector")
        d = spec.detector
        self.model = model
        self.spec = spec
        self.max_side = max_side
        self.score_threshold = d.score_threshold if score_threshold is None else score_threshold
        self.nms_iou = d.nms_iou if nms_iou is None else nms_iou
        self.min_face_px = min_face_px
        self.decoder = d.decoder()
        self._center = spec.input.letterbox == "center"
        check_input_size(model)
        fw, fh = model.input_size()
        self._fixed = (fw or spec.input.width, fh or spec.input.height)
        self._canvas: np.ndarray | None = None
        self._tiles: np.ndarray | None = None
        self.self_test()

    def fork(self) -> Detector:
        """The same model with its own scratch buffers: a second thread (an enrollment) can
        detect while cameras do, without their lock. Backends' ``run`` is thread-safe
        (onnxruntime sessions; HailoModel serializes on its own lock)."""
        import copy

        twin = copy.copy(self)
        twin._canvas, twin._tiles = None, None
        return twin

    def input_size_for(self, frame_w: int, frame_h: int) -> tuple[int, int]:
        return input_size(frame_w, frame_h, self._fixed[0], self._fixed[1], self.max_side, self.spec.input.size_multiple)

    def self_test(self) -> None:
        """Run a blank image; every output the spec names must exist with the size it implies."""
        w, h = self.input_size_for(self.max_side, self.max_side)
        out = self.model.run(np.zeros((1, h, w, 3), np.uint8))
        try:
            self.decoder.check(out, w, h)
        except OutputMismatch as e:
            raise FacefleetError(f"model {self.spec.name}: {e} (detector.layout {self.spec.detector.layout})") from None

    def decode(self, outputs: dict[str, np.ndarray], in_w: int, in_h: int) -> Detections:
        """Candidates of one image in detector-input pixels, before NMS."""
        return self.decoder.decode(outputs, in_w, in_h, self.score_threshold)

    def detect(self, image: np.ndarray, plan: DetectionPlan | None = None, run_tiles: bool = True) -> Detections:
        """Faces in a BGR frame, in frame pixels, best first.

        Without a plan: the letterboxed frame. With one: the plan's windows too (all tiles in
        one backend call), merged across windows.
        """
        tiles = plan is not None and plan.tiled and run_tiles
        parts = []
        if plan is None or plan.full_frame:
            parts.append(self._detect_full(image))
        if tiles:
            parts.append(self._detect_tiles(image, plan))
        if not parts:  # tiles only, and this is not a tile frame: tracks carry the faces
            return Detections.empty()
        det = merge(parts, self.nms_iou) if tiles else parts[0]
        if self.min_face_px > 0:
            det = det.take(np.flatnonzero(det.heights >= self.min_face_px))
        return det

    def _detect_full(self, image: np.ndarray) -> Detections:
        h, w = image.shape[:2]
        in_w, in_h = self.input_size_for(w, h)
        canvas, lb = letterbox(image, in_w, in_h, out=self._canvas, center=self._center)
        self._canvas = canvas
        out = self.model.run(canvas[None])
        cands = self.decode(out, in_w, in_h)
        cands.boxes = lb.to_frame(cands.boxes)
        cands.kps = lb.to_frame(cands.kps.reshape(-1, 10)).reshape(-1, 5, 2)
        return postprocess(cands, self.nms_iou, max_candidates=self.spec.detector.max_candidates)

    def tile_canvas(self, plan: DetectionPlan) -> tuple[int, int]:
        """Detector input for a tile: the model's fixed size, or the plan's tile side (dynamic)."""
        if self._fixed[0] is not None and self._fixed[1] is not None:
            return self._fixed[0], self._fixed[1]
        m = self.spec.input.size_multiple
        side = -(-(plan.tile_size or self.max_side) // m) * m
        return side, side

    def _detect_tiles(self, image: np.ndarray, plan: DetectionPlan) -> Detections:
        h, w = image.shape[:2]
        cw, ch = self.tile_canvas(plan)
        windows = plan.windows(w, h, min(cw, ch))
        n = len(windows)
        if self._tiles is None or self._tiles.shape[0] < n or self._tiles.shape[1:3] != (ch, cw):
            self._tiles = np.zeros((max(n, 1), ch, cw, 3), np.uint8)
        batch = self._tiles[:n]
        batch.fill(0)
        for i, win in enumerate(windows):  # native resolution: a crop, no scaling
            batch[i, :win.height, :win.width] = image[win.y0:win.y1, win.x0:win.x1]
        outputs = self.model.run(batch)
        parts = []
        for i, win in enumerate(windows):
            out = outputs if n == 1 else {k: _item(v, i, n) for k, v in outputs.items()}
            c = self.decode(out, cw, ch)
            c.boxes = Letterbox(1.0, win.x0, win.y0).to_frame(c.boxes)
            c.kps = Letterbox(1.0, win.x0, win.y0).to_frame(c.kps.reshape(-1, 10)).reshape(-1, 5, 2)
            keep = ~win.cut_by_edge(c.boxes)
            if plan.full_frame:
                # a face taller than the overlap may be cut in every tile; the full frame sees it whole
                keep &= (c.boxes[:, 3] - c.boxes[:, 1]) <= plan.overlap
            c = c.take(np.flatnonzero(keep))
            parts.append(postprocess(c, self.nms_iou, max_candidates=self.spec.detector.max_candidates))
        return Detections.concat(parts)


class Recognizer:
    """ArcFace-style embedder: aligned crops -> L2-normalized embeddings and pre_norm."""

    def __init__(self, model: LoadedModel):
        spec = model.spec
        if spec.kind != "recognizer" or spec.recognizer is None:
            raise FacefleetError(f"model {spec.name} is not a recognizer")
        self.model = model
        self.spec = spec
        self.rec = spec.recognizer
        check_input_size(model)
        mw, mh = model.input_size()
        self.size = spec.input.width or mw or 112
        if (spec.input.width or mw) != (spec.input.height or mh):
            raise FacefleetError(f"model {spec.name}: recognizer input must be square")
        self.self_test()

    @property
    def fingerprint(self) -> str:
        return self.spec.fingerprint

    def self_test(self) -> None:
        """A blank crop must give one finite vector of the spec's embedding size."""
        out = self.model.run(np.zeros((1, self.size, self.size, 3), np.uint8))
        if self.rec.output not in out:
            raise FacefleetError(f"model {self.spec.name}: output {self.rec.output!r} named by its spec is missing "
                                 f"(has {sorted(out)})")
        v = out[self.rec.output]
        if v.shape[-1] != self.rec.embedding_size or v.size != self.rec.embedding_size:
            raise FacefleetError(f"model {self.spec.name}: output {self.rec.output!r} has shape {list(v.shape)}, "
                                 f"spec says embedding_size {self.rec.embedding_size}")
        if not np.all(np.isfinite(v)):
            raise FacefleetError(f"model {self.spec.name}: self-test produced non-finite values")

    def embed(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``crops`` uint8 ``[n,s,s,3]`` BGR -> (embeddings ``[n,d]`` unit length, pre_norm ``[n]``), one call."""
        if len(crops) == 0:
            return np.zeros((0, self.rec.embedding_size), np.float32), np.zeros((0,), np.float32)
        raw = self.model.run(crops)[self.rec.output].reshape(len(crops), -1).astype(np.float32, copy=False)
        norms = np.linalg.norm(raw, axis=1)
        return raw / np.maximum(norms, 1e-12)[:, None], norms

"""The per-camera pipeline: frame -> faces -> tracks -> decisions -> events.

Pure and synchronous: no I/O besides the models it is given. The component and the CLI feed it
frames and forward the events it returns.
"""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from facefleet.config import PipelineConfig
from facefleet.events import Candidate, MatchEvent, Models, Quality
from facefleet.recognition.assign import assign
from facefleet.recognition.facestats import BLURRED, GATED, SMALL, USABLE, FaceStats, sharpness
from facefleet.recognition.gallery import GalleryIndex
from facefleet.recognition.models import Detector, Recognizer
from facefleet.recognition.strangers import Stranger, StrangerBook
from facefleet.recognition.tracker import Match, Track, Tracker, TrackingConfig
from facefleet.sources import Frame
from facefleet.vision.align import align_faces
from facefleet.vision.quality import quality_weights
from facefleet.vision.scene import CutDetector


@dataclass
class StageClock:
    """Wall time per stage, summed over frames (for bench and status events)."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    frames: int = 0

    @contextmanager
    def stage(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - t0

    def mean_ms(self) -> dict[str, float]:
        n = max(self.frames, 1)
        return {k: v * 1000 / n for k, v in self.seconds.items()}


@dataclass
class Counters:
    frames: int = 0
    faces: int = 0          # detections handed to the tracker
    embedded: int = 0       # faces run through the recognizer
    recognizer_calls: int = 0


class FacePipeline:
    """One camera's pipeline. Models and gallery index can be swapped between frames.

    ``strangers``: a book shared by several cameras' pipelines (one stranger, one id across
    cameras); default: the pipeline's own. ``face_stats`` counts frames with no usable face.
    """

    def __init__(self, detector: Detector, recognizer: Recognizer, index: GalleryIndex,
                 cfg: PipelineConfig, camera_id: str | None = None, strangers: StrangerBook | None = None):
        self.cfg = cfg
        self.camera_id = camera_id or cfg.camera_id
        self.clock = StageClock()
        self.counters = Counters()
        self.face_stats = FaceStats()
        self.strangers = strangers if strangers is not None else StrangerBook(cfg.unknowns, 1.0)
        self._ids = itertools.count(1)
        self.tracker = Tracker(cfg.tracking, self._ids)
        self.cuts = CutDetector(cfg.tracking.cut_threshold)
        self.cut_count = 0
        self._crop_buf: np.ndarray | None = None
        self.recognizer: Recognizer | None = None
        self.set_models(detector, recognizer, index)

    # ---- models ---------------------------------------------------------------------------
    def set_models(self, detector: Detector, recognizer: Recognizer, index: GalleryIndex) -> None:
        """Switch models atomically (between frames). The gallery index must match the recognizer."""
        if index.fingerprint != recognizer.fingerprint:
            raise ValueError("gallery index was embedded with another recognizer")
        if self.recognizer is not None and self.recognizer.fingerprint != recognizer.fingerprint:
            # open tracks keep their boxes; evidence from the old model lives in another space
            self.tracker.restart_evidence()
        rc = self.cfg.recognition
        self.detector, self.recognizer, self.index = detector, recognizer, index
        self.threshold = rc.match_threshold if rc.match_threshold is not None else recognizer.rec.match_threshold
        self.pre_norm_gate = rc.pre_norm_gate if rc.pre_norm_gate is not None else recognizer.rec.pre_norm_gate
        self.models = Models(detector=detector.spec.fingerprint, recognizer=recognizer.fingerprint)
        self.ignore = frozenset(self.cfg.unknowns.ignore) | index.ignored
        self.strangers.use_space(recognizer.fingerprint, self.threshold)

    def match(self, emb: np.ndarray) -> Match:
        idx, sims = self.index.search(emb[None], 1)
        if idx.shape[1] == 0:
            return Match(None, None, None, self.threshold)
        name, sim = self.index.names[idx[0, 0]], float(sims[0, 0])
        return Match(name if sim >= self.threshold else None, sim, name, self.threshold)

    # ---- frames ---------------------------------------------------------------------------
    def process(self, frame: Frame) -> list[MatchEvent]:
        """Run one frame; return the decisions made on it."""
        if frame.still:
            return self._process_still(frame)
        self.clock.frames += 1
        self.counters.frames += 1
        with self.clock.stage("detect"):
            plan = self.cfg.detection.plan
            dets = self.detector.detect(frame.image, plan, run_tiles=frame.index % plan.tile_every == 0)
        self.counters.faces += len(dets)
        events = []
        with self.clock.stage("track"):
            if self.cuts.is_cut(frame.image):
                self.cut_count += 1
                events += self.flush(frame)
            assigned, ended = self.tracker.associate(frame.index, dets.boxes, dets.scores)
        self.face_stats.frame(self._embed(frame, dets, assigned, self.tracker))
        with self.clock.stage("decide"):
            live = [t for t in assigned if t is not None and not t.ended]
            events += self._decide(self.tracker, live, frame, frame.index, final=False)
            events += self._decide(self.tracker, ended, frame, frame.index, final=True)
        return events

    def flush(self, frame: Frame | None = None) -> list[MatchEvent]:
        """End of stream (or a shot cut): decide every open track."""
        tracks = self.tracker.close_all()
        last = max((t.last_frame for t in tracks), default=0)
        return self._decide(self.tracker, tracks, frame, frame.index if frame is not None else last, final=True)

    def _decide(self, tracker: Tracker, tracks: list[Track], frame: Frame | None, frame_index: int,
                final: bool) -> list[MatchEvent]:
        """Decide the tracks that are ready, giving each identity to at most one face in view:
        an optimal assignment on similarity among the deciding tracks, minus the identities
        that other visible tracks already hold."""
        ready = [t for t in tracks if t.decision is None and t.hits >= tracker.cfg.min_hits]
        if not ready:
            return []
        matches = self._assigned_matches(tracker, ready, frame_index)
        events = []
        for t in ready:
            m = matches.get(t.id, Match(None, None, None, self.threshold))
            if not tracker.try_decide(t, frame_index, lambda _v, m=m: m, final=final):
                continue
            if t.decision == "identified" and t.match.identity in self.ignore:
                self.face_stats.ignored()  # a negative anchor (poster, TV, neighbour): decided, never announced
                continue
            stranger = None
            if t.decision == "unknown" and self._clusterable(t) and (v := t.aggregated()) is not None:
                stranger = self.strangers.observe(v, self.camera_id, t.best_crop, self.recognizer.fingerprint)
            events.append(self._event(t, frame, stranger))
        return events

    def _clusterable(self, t: Track) -> bool:
        """Only sightings good enough to tell strangers apart join the stranger book."""
        u = self.cfg.unknowns
        return u.cluster and t.best_pre_norm is not None and t.best_pre_norm >= u.min_quality * self.recognizer.rec.pre_norm_ref

    def _assigned_matches(self, tracker: Tracker, ready: list[Track], frame_index: int) -> dict[int, Match]:
        with_ev = [(t, v) for t in ready if (v := t.aggregated()) is not None]
        if not with_ev or len(self.index) == 0:
            return {}
        # at least two candidates: the margin over the runner-up explains the decision
        idx, sims = self.index.search(np.stack([v for _, v in with_ev]), max(self.cfg.recognition.top_k, 2))
        ready_ids = {t.id for t in ready}
        names = self.index.names
        held = {t.match.identity for t in tracker.tracks
                if t.id not in ready_ids and t.decision == "identified" and t.last_frame == frame_index}
        claimed = {i for i, n in enumerate(names) if n in held}
        chosen = assign(idx, sims, self.threshold, claimed)
        out = {}
        for row, (t, _) in enumerate(with_ev):
            c = int(chosen[row])
            if c >= 0:
                sim = float(sims[row][idx[row] == c][0])
                others = sims[row][idx[row] != c]
                margin = sim - float(others[0]) if len(others) else None
                out[t.id] = Match(names[c], sim, names[c], self.threshold, margin)
            else:
                margin = float(sims[row, 0] - sims[row, 1]) if sims.shape[1] > 1 else None
                out[t.id] = Match(None, float(sims[row, 0]), names[idx[row, 0]], self.threshold, margin)
        return out

    def _process_still(self, frame: Frame) -> list[MatchEvent]:
        """A photo is its own scene: every face becomes a track and is decided now."""
        self.counters.frames += 1
        self.clock.frames += 1
        cfg: TrackingConfig = self.cfg.tracking.model_copy(update={"min_hits": 1, "min_evidence": 1, "decide_after": 1})
        tracker = Tracker(cfg, self._ids)
        with self.clock.stage("detect"):
            dets = self.detector.detect(frame.image, self.cfg.detection.plan)
        self.counters.faces += len(dets)
        assigned, _ = tracker.associate(frame.index, dets.boxes, dets.scores)
        self.face_stats.frame(self._embed(frame, dets, assigned, tracker))
        with self.clock.stage("decide"):
            return self._decide(tracker, tracker.close_all(), frame, frame.index, final=True)

    def _embed(self, frame: Frame, dets, assigned: list[Track | None], tracker: Tracker) -> list[str]:
        """Embed the faces that need it; return a usability verdict per detection (see facestats)."""
        rc = self.cfg.recognition
        heights = dets.heights
        verdicts = [SMALL if heights[i] < rc.min_face_px else USABLE for i in range(len(assigned))]
        pick = [i for i, t in enumerate(assigned)
                if t is not None and heights[i] >= rc.min_face_px and tracker.wants_embedding(t, frame.index)]
        if not pick:
            return verdicts
        with self.clock.stage("align"):
            size = self.recognizer.size
            buf = self._crop_buf
            if buf is None or len(buf) < len(pick) or buf.shape[1] != size:
                buf = self._crop_buf = np.empty((max(len(pick), 8), size, size, 3), np.uint8)
            crops = align_faces(frame.image, dets.kps[pick], size, out=buf)
            if rc.min_sharpness > 0:
                sharp = sharpness(crops) >= rc.min_sharpness
                for i, ok in zip(pick, sharp, strict=True):
                    if not ok:
                        verdicts[i] = BLURRED
                        assigned[i].last_embed_frame = frame.index  # seen, too poor to count
                pick, crops = [i for i, ok in zip(pick, sharp, strict=True) if ok], crops[sharp]
                if not pick:
                    return verdicts
        keep_crops = self.cfg.unknowns.keep_crops
        with self.clock.stage("embed"):
            emb, pre_norm = self.recognizer.embed(crops)
        self.counters.embedded += len(pick)
        self.counters.recognizer_calls += 1
        with self.clock.stage("track"):
            weights = quality_weights(pre_norm, heights[pick], dets.scores[pick], self.recognizer.rec.pre_norm_ref)
            for j, i in enumerate(pick):
                t = assigned[i]
                if pre_norm[j] < self.pre_norm_gate:
                    t.last_embed_frame = frame.index  # seen, too poor to count
                    verdicts[i] = GATED
                    continue
                if t.decision is None:
                    tracker.add_evidence(t, frame.index, emb[j], float(pre_norm[j]), float(weights[j]))
                    if keep_crops and weights[j] > t.best_crop_weight:
                        t.best_crop, t.best_crop_weight = crops[j].copy(), float(weights[j])
                else:
                    nt = tracker.recheck(t, frame.index, emb[j], float(pre_norm[j]), float(weights[j]), self.match)
                    if nt is not None:
                        assigned[i] = nt
        return verdicts

    def _event(self, t: Track, frame: Frame | None, stranger: Stranger | None = None) -> MatchEvent:
        m = t.match or Match(None, None, None)
        identified = t.decision == "identified"
        best = None
        if not identified and m.candidate is not None and m.similarity is not None:
            best = Candidate(identity=m.candidate, similarity=float(np.clip(m.similarity, -1, 1)))
        return MatchEvent(
            device=self.cfg.device, camera_id=self.camera_id, track_id=t.id,
            decision="identified" if identified else "unknown",
            identity=m.identity if identified else None,
            similarity=None if m.similarity is None else float(np.clip(m.similarity, -1, 1)),
            best_candidate=best, threshold=self.threshold,
            frame_index=t.decided_frame if t.decided_frame is not None else t.last_frame,
            first_frame=t.first_frame, last_frame=t.last_frame,
            source_ms=frame.source_ms if frame is not None else None,
            source_name=frame.name if frame is not None else None,
            bbox=tuple(float(x) for x in t.box),
            quality=Quality(pre_norm=t.best_pre_norm, face_px=t.max_face_px, det_score=float(min(t.best_det_score, 1.0)),
                            evidence_frames=t.evidence_frames, evidence_weight=t.evidence_weight),
            models=self.models,
            margin=None if m.margin is None else float(np.clip(m.margin, -2, 2)),
            unknown_id=stranger.unknown_id if stranger is not None else None,
            unknown_count=stranger.count if stranger is not None else None,
            gallery_version=self.index.version,
        )

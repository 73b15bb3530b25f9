"""Faces -> tracks; evidence per track; one decision per track.

Per-frame embeddings of a face are noisy (pose, blur, size). A track aggregates its frames'
embeddings weighted by quality and decides its identity once, then stops embedding it (unless
a re-check interval is set). This is both the accuracy fix and the main speed lever.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from facefleet.vision.nms import iou_matrix


class TrackingConfig(BaseModel):
    """How tracks are formed and when they are decided."""

    model_config = ConfigDict(extra="forbid")
    iou_match: float = Field(0.3, gt=0, le=1, description="min IoU to continue a track with a detection")
    max_missed: int = Field(10, ge=0, description="frames a track survives without a detection")
    min_hits: int = Field(2, ge=1, description="detections before a track counts (drops one-frame false positives)")
    min_evidence: int = Field(3, ge=1, description="embedded frames before an identity may be declared")
    decide_after: int = Field(12, ge=1, description="embedded frames after which a non-match is declared unknown")
    unknown_margin: float = Field(
        0.15, ge=0, le=2,
        description="after min_evidence frames, a track whose best similarity is this far below the threshold is "
                    "declared unknown at once (a later re-check can still name it)")
    embed_every: int = Field(1, ge=1, description="while undecided, embed every k-th frame of the track")
    cut_threshold: float = Field(
        20.0, ge=0, le=255,
        description="a shot cut (mean abs difference of 32x18 gray thumbnails, 0-255) ends every track; 0: off")
    recheck_every: int = Field(10, ge=0, description="re-embed decided tracks every N frames to catch an identity change (0: never)")


@dataclass
class Match:
    """What the gallery says about one embedding."""

    identity: str | None      # accepted identity (>= threshold) or None
    similarity: float | None  # to the accepted identity, else to the best candidate
    candidate: str | None     # best candidate (accepted or not)
    threshold: float = 1.0    # the threshold the identity was accepted with
    margin: float | None = None  # similarity minus the runner-up identity's (None: no runner-up)


MatchFn = Callable[[np.ndarray], Match]


@dataclass
class Track:
    id: int
    first_frame: int
    last_frame: int
    box: np.ndarray
    hits: int = 1
    missed: int = 0
    evidence: np.ndarray | None = None
    evidence_weight: float = 0.0
    evidence_frames: int = 0
    best_pre_norm: float | None = None
    max_face_px: float = 0.0
    best_det_score: float = 0.0
    last_embed_frame: int = -(10 ** 9)
    decision: str | None = None  # "identified" | "unknown" once decided
    match: Match | None = None
    decided_frame: int | None = None
    ended: bool = False
    best_crop: np.ndarray | None = None  # aligned crop of the best-weighted evidence (kept only for strangers' crops)
    best_crop_weight: float = 0.0
    extra: dict = field(default_factory=dict)

    def observe(self, frame: int, box: np.ndarray, score: float) -> None:
        self.box = box
        self.last_frame = frame
        self.hits += 1
        self.missed = 0
        self.max_face_px = max(self.max_face_px, float(box[3] - box[1]))
        self.best_det_score = max(self.best_det_score, float(score))

    def aggregated(self) -> np.ndarray | None:
        if self.evidence is None or self.evidence_weight <= 0:
            return None
        v = self.evidence / self.evidence_weight
        return v / max(float(np.linalg.norm(v)), 1e-12)


class Tracker:
    """Greedy IoU association plus the per-track decision policy."""

    def __init__(self, cfg: TrackingConfig, ids: Iterator[int] | None = None):
        self.cfg = cfg
        self.tracks: list[Track] = []
        self._ids = ids if ids is not None else itertools.count(1)

    def _new_track(self, frame: int, box: np.ndarray, score: float) -> Track:
        t = Track(id=next(self._ids), first_frame=frame, last_frame=frame, box=box,
                  max_face_px=float(box[3] - box[1]), best_det_score=float(score))
        self.tracks.append(t)
        return t

    def associate(self, frame: int, boxes: np.ndarray, scores: np.ndarray) -> tuple[list[Track | None], list[Track]]:
        """Assign each detection to a track (new or continued); age the rest.

        Returns (track per detection, tracks that ended this frame).
        """
        assigned: list[Track | None] = [None] * len(boxes)
        live = [t for t in self.tracks if not t.ended]
        if live and len(boxes):
            ious = iou_matrix(boxes, np.stack([t.box for t in live]))
            pairs = np.argwhere(ious >= self.cfg.iou_match)
            order = np.argsort(-ious[pairs[:, 0], pairs[:, 1]], kind="stable")
            used_t: set[int] = set()
            for d, ti in pairs[order]:
                if assigned[d] is None and ti not in used_t:
                    assigned[d] = live[ti]
                    used_t.add(ti)
                    live[ti].observe(frame, boxes[d], scores[d])
        for d in range(len(boxes)):
            if assigned[d] is None:
                assigned[d] = self._new_track(frame, boxes[d], scores[d])
        seen = {id(t) for t in assigned}
        ended = []
        for t in self.tracks:
            if not t.ended and id(t) not in seen:
                t.missed += 1
                if t.missed > self.cfg.max_missed:
                    t.ended = True
                    ended.append(t)
        self.tracks = [t for t in self.tracks if not t.ended]
        return assigned, ended

    def wants_embedding(self, t: Track, frame: int) -> bool:
        since = frame - t.last_embed_frame
        if t.decision is None:
            return since >= self.cfg.embed_every
        return self.cfg.recheck_every > 0 and since >= self.cfg.recheck_every

    def add_evidence(self, t: Track, frame: int, emb: np.ndarray, pre_norm: float, weight: float) -> None:
        t.last_embed_frame = frame
        t.evidence = emb * weight if t.evidence is None else t.evidence + emb * weight
        t.evidence_weight += weight
        t.evidence_frames += 1
        t.best_pre_norm = pre_norm if t.best_pre_norm is None else max(t.best_pre_norm, pre_norm)

    def try_decide(self, t: Track, frame: int, match: MatchFn, final: bool = False) -> bool:
        """Decide ``t`` if it has enough evidence (or ``final``: the track ended). True if it did."""
        if t.decision is not None or t.hits < self.cfg.min_hits:
            return False
        agg = t.aggregated()
        m = match(agg) if agg is not None else Match(None, None, None)
        if m.identity is not None and (final or t.evidence_frames >= self.cfg.min_evidence):
            t.decision, t.match, t.decided_frame = "identified", m, frame
            return True
        clearly_not = (t.evidence_frames >= self.cfg.min_evidence and m.similarity is not None
                       and m.similarity < m.threshold - self.cfg.unknown_margin)
        if final or clearly_not or t.evidence_frames >= self.cfg.decide_after:
            t.decision, t.match, t.decided_frame = "unknown", m, frame
            return True
        return False

    def recheck(self, t: Track, frame: int, emb: np.ndarray, pre_norm: float, weight: float,
                match: MatchFn) -> Track | None:
        """A decided track's new embedding. If it clearly names someone else, the track is
        split: the old one ends silently (it was announced) and a new track starts with this
        evidence. Returns the new track, if any."""
        t.last_embed_frame = frame
        m = match(emb)
        same = (t.decision == "identified" and m.identity == t.match.identity) or \
               (t.decision == "unknown" and m.identity is None)
        if same or m.identity is None:
            return None
        t.ended = True
        self.tracks.remove(t)
        nt = self._new_track(frame, t.box, t.best_det_score)
        nt.hits = t.hits
        self.add_evidence(nt, frame, emb, pre_norm, weight)
        return nt

    def restart_evidence(self) -> None:
        """Forget every open track's embeddings (the recognizer changed: another space, maybe
        another size); boxes and decisions stay, undecided tracks collect evidence anew."""
        for t in self.tracks:
            t.evidence, t.evidence_weight, t.evidence_frames = None, 0.0, 0
            t.last_embed_frame = -(10**9)

    def open_tracks(self) -> list[Track]:
        return list(self.tracks)

    def close_all(self) -> list[Track]:
        ended = [t for t in self.tracks if not t.ended]
        for t in ended:
            t.ended = True
        self.tracks = []
        return ended

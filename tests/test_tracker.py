"""The decision policy on synthetic tracks: one decision per track, per-track evidence."""

import numpy as np

from facefleet.recognition.tracker import Match, Tracker, TrackingConfig


def _box(x: float) -> np.ndarray:
    return np.array([x, 0, x + 50, 60], np.float32)


def _matcher(identity_vec: np.ndarray, threshold: float = 0.5):
    def match(v: np.ndarray) -> Match:
        s = float(v @ identity_vec)
        return Match("alice" if s >= threshold else None, s, "alice", threshold)

    return match


def _unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


def test_identity_needs_min_evidence_then_is_decided_once():
    cfg = TrackingConfig(min_hits=1, min_evidence=3, decide_after=10, recheck_every=0, unknown_margin=2)
    tr = Tracker(cfg)
    alice = _unit([1, 0, 0])
    match = _matcher(alice)
    decisions = []
    for f in range(8):
        (t,), _ = tr.associate(f, _box(100 + f)[None], np.array([0.9]))
        if tr.wants_embedding(t, f):
            tr.add_evidence(t, f, _unit([1, 0.3, 0]), 20.0, 1.0)
        if tr.try_decide(t, f, match):
            decisions.append((f, t.decision, t.match.identity))
    assert decisions == [(2, "identified", "alice")]
    assert t.evidence_frames == 3  # decided tracks are not re-embedded (recheck off)


def test_evidence_is_quality_weighted():
    tr = Tracker(TrackingConfig(min_hits=1))
    (t,), _ = tr.associate(0, _box(0)[None], np.array([0.9]))
    tr.add_evidence(t, 0, _unit([1, 0]), 20.0, 0.9)
    tr.add_evidence(t, 1, _unit([0, 1]), 5.0, 0.1)
    agg = t.aggregated()
    assert agg[0] > 0.99 * np.cos(np.arctan(0.1 / 0.9)) and agg[0] > agg[1]


def test_unknown_after_decide_after_and_one_event():
    tr = Tracker(TrackingConfig(min_hits=1, min_evidence=2, decide_after=5, recheck_every=0, unknown_margin=2))
    match = _matcher(_unit([1, 0, 0]))
    decided = 0
    for f in range(20):
        (t,), _ = tr.associate(f, _box(10)[None], np.array([0.8]))
        if tr.wants_embedding(t, f):
            tr.add_evidence(t, f, _unit([0, 1, 0]), 20.0, 1.0)
        decided += tr.try_decide(t, f, match)
    assert decided == 1 and t.decision == "unknown" and t.match.candidate == "alice"
    assert t.decided_frame == 4


def test_tracks_end_after_max_missed_and_short_tracks_are_dropped():
    tr = Tracker(TrackingConfig(min_hits=2, max_missed=2))
    match = _matcher(_unit([1, 0]))
    (t,), _ = tr.associate(0, _box(0)[None], np.array([0.9]))
    ended_at = None
    for f in range(1, 6):
        _, ended = tr.associate(f, np.zeros((0, 4), np.float32), np.zeros(0))
        if ended:
            ended_at = f
            assert ended == [t]
    assert ended_at == 3
    assert not tr.try_decide(t, 3, match, final=True)  # one detection: not a face track


def test_two_faces_keep_their_tracks():
    tr = Tracker(TrackingConfig())
    ids = None
    for f in range(5):
        boxes = np.stack([_box(10 + 2 * f), _box(300 - 2 * f)])
        assigned, _ = tr.associate(f, boxes, np.array([0.9, 0.8]))
        now = [t.id for t in assigned]
        ids = ids or now
        assert now == ids
    assert ids[0] != ids[1]


def test_recheck_splits_a_track_that_changed_identity():
    """A shot cut can put another person where a decided track was; a re-check catches it."""
    cfg = TrackingConfig(min_hits=1, min_evidence=1, recheck_every=3)
    tr = Tracker(cfg)
    match = _matcher(_unit([1, 0]), threshold=0.5)
    (t,), _ = tr.associate(0, _box(0)[None], np.array([0.9]))
    tr.add_evidence(t, 0, _unit([0, 1]), 20.0, 1.0)
    assert tr.try_decide(t, 0, match, final=True) and t.decision == "unknown"
    assert not tr.wants_embedding(t, 1) and tr.wants_embedding(t, 3)
    new = tr.recheck(t, 3, _unit([1, 0.1]), 20.0, 1.0, match)
    assert new is not None and new.id != t.id and t.ended and new.evidence_frames == 1
    assert tr.try_decide(new, 3, match) and new.match.identity == "alice"
    # the same identity on a re-check keeps the track
    assert tr.recheck(new, 6, _unit([1, 0]), 20.0, 1.0, match) is None


def test_a_clear_non_match_is_decided_after_min_evidence():
    tr = Tracker(TrackingConfig(min_hits=1, min_evidence=3, decide_after=12, unknown_margin=0.15))
    match = _matcher(_unit([1, 0, 0]), threshold=0.5)
    for f in range(3):
        (t,), _ = tr.associate(f, _box(10)[None], np.array([0.8]))
        tr.add_evidence(t, f, _unit([0.45, 1, 0]), 20.0, 1.0)  # similarity 0.41: not 0.15 below 0.5
        assert not tr.try_decide(t, f, match)
    (t,), _ = tr.associate(3, _box(10)[None], np.array([0.8]))
    tr.add_evidence(t, 3, _unit([0, 1, 0]), 20.0, 1.0)
    assert t.match is None and tr.try_decide(t, 3, match) and t.decision == "unknown"

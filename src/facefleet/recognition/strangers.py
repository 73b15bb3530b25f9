"""Strangers as first-class: unknown tracks clustered on the device into stable ``unknown_id`` s.

Without this, "unknown" is a score: the same stranger passing five times is five alerts and
nobody can say "that one is the neighbour". Here every track decided unknown joins the nearest
cluster centroid (cosine >= ``join_threshold``) or starts a new cluster, so events carry one id
and a sighting count per person.

Memory is bounded: at most ``max_clusters`` centroids (one float vector each); when full, the
least recently seen cluster is evicted. No image is kept unless ``keep_crops`` is on, and then at
most ``max_crops`` PNG-encoded 112x112 crops per cluster (the best-quality face of each sighting).
Kept crops are what a promotion enrolls: :meth:`StrangerBook.promote` names a cluster (an
identity of the gallery) or turns it into an ignore anchor (a gallery identity flagged
``ignore``: matches to it raise no event).

Clusters live in one recognizer's embedding space: a recognizer swap starts an empty book.
One book may be shared by the pipelines of several cameras (it locks), so a stranger walking
from the door camera to the hall camera keeps one id.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from facefleet.errors import FacefleetError


class UnknownsConfig(BaseModel):
    """How unknown faces are clustered into strangers, and which identities are ignored."""

    model_config = ConfigDict(extra="forbid")
    cluster: bool = Field(True, description="cluster unknown tracks into stable unknown_id's (events carry the id and a count)")
    max_clusters: int = Field(128, ge=1, le=100_000, description="strangers remembered at most; the least recently seen is "
                              "forgotten first (memory: one embedding per stranger, plus crops if kept)")
    join_threshold: float | None = Field(None, ge=-1, le=1, description="cosine to a stranger's centroid to count as the same "
                                         "stranger (null: the match threshold)")
    min_quality: float = Field(0.75, ge=0, le=10, description="a track is clustered only if its best pre_norm reaches this "
                               "fraction of the recognizer's pre_norm_ref (ModelSpec): blurred, tiny or side-on faces embed "
                               "close to one another whoever they are, and would merge different strangers into one id; "
                               "below it an unknown event carries no unknown_id")
    keep_crops: bool = Field(False, description="keep the best aligned face crop of each sighting (in memory, PNG) so a "
                             "stranger can be promoted to a named identity or to ignore; off: no image is kept")
    max_crops: int = Field(3, ge=1, le=32, description="crops kept per stranger at most (the newest replace the oldest)")
    ignore: list[str] = Field(default_factory=list, max_length=1000,
                              description="gallery identities that are negative anchors (a neighbour, a poster, a TV): a "
                              "match to them raises no event. Identities enrolled with the gallery's ignore flag count too")


@dataclass
class Stranger:
    """One cluster: a unit centroid, how often it was seen, and (optionally) crops."""

    unknown_id: str
    centroid: np.ndarray
    count: int = 1
    first_seen: datetime = field(default_factory=lambda: datetime.now(UTC))
    last_seen: datetime = field(default_factory=lambda: datetime.now(UTC))
    cameras: set[str] = field(default_factory=set)
    crops: list[bytes] = field(default_factory=list)  # PNG

    def summary(self) -> dict:
        return {"unknown_id": self.unknown_id, "count": self.count, "first_seen": self.first_seen.isoformat(),
                "last_seen": self.last_seen.isoformat(), "cameras": sorted(self.cameras), "crops": len(self.crops)}


def _new_unknown_id() -> str:
    return "u" + uuid.uuid4().hex[:15]


class StrangerBook:
    """Bounded LRU set of stranger clusters in one recognizer's embedding space."""

    def __init__(self, cfg: UnknownsConfig, threshold: float, fingerprint: str | None = None,
                 new_id: Callable[[], str] = _new_unknown_id):
        self.cfg = cfg
        self.threshold = cfg.join_threshold if cfg.join_threshold is not None else threshold
        self.fingerprint = fingerprint
        self.evicted = 0
        self._new_id = new_id
        self._clusters: OrderedDict[str, Stranger] = OrderedDict()  # least recently seen first
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._clusters)

    def use_space(self, fingerprint: str, threshold: float) -> None:
        """The recognizer is ``fingerprint``: centroids of another model are meaningless there."""
        with self._lock:
            if self.cfg.join_threshold is None:
                self.threshold = threshold
            if fingerprint != self.fingerprint:
                self._clusters.clear()
                self.fingerprint = fingerprint

    def observe(self, embedding: np.ndarray, camera_id: str = "", crop: np.ndarray | None = None,
                fingerprint: str | None = None) -> Stranger:
        """One unknown sighting (a track's aggregated unit embedding). Returns its cluster.

        ``fingerprint`` names the recognizer that made the embedding. Cameras sharing a book switch
        models one frame apart during a swap: a sighting from another space than the book's is
        not clustered (it gets a one-off id) instead of being compared with centroids it cannot match."""
        v = np.asarray(embedding, np.float32).ravel()
        v = v / max(float(np.linalg.norm(v)), 1e-12)
        with self._lock:
            if fingerprint is not None and self.fingerprint is not None and fingerprint != self.fingerprint:
                now = datetime.now(UTC)
                return Stranger(self._new_id(), v.copy(), first_seen=now, last_seen=now)
            best, best_sim = None, -2.0
            if self._clusters:
                ids = list(self._clusters)
                sims = np.stack([self._clusters[i].centroid for i in ids]) @ v
                j = int(np.argmax(sims))
                best, best_sim = self._clusters[ids[j]], float(sims[j])
            now = datetime.now(UTC)
            if best is not None and best_sim >= self.threshold:
                s = best
                c = s.centroid * s.count + v
                s.centroid = c / max(float(np.linalg.norm(c)), 1e-12)
                s.count += 1
                s.last_seen = now
                self._clusters.move_to_end(s.unknown_id)
            else:
                s = Stranger(self._new_id(), v.copy(), first_seen=now, last_seen=now)
                self._clusters[s.unknown_id] = s
                while len(self._clusters) > self.cfg.max_clusters:
                    self._clusters.popitem(last=False)
                    self.evicted += 1
            if camera_id:
                s.cameras.add(camera_id)
            if self.cfg.keep_crops and crop is not None:
                ok, png = cv2.imencode(".png", crop)
                if ok:
                    s.crops.append(png.tobytes())
                    del s.crops[:-self.cfg.max_crops]
            return s

    def get(self, unknown_id: str) -> Stranger:
        with self._lock:
            if unknown_id not in self._clusters:
                raise FacefleetError(f"no stranger {unknown_id!r} (forgotten, or the recognizer changed)")
            return self._clusters[unknown_id]

    def list(self) -> list[dict]:
        """Most recently seen first."""
        with self._lock:
            return [s.summary() for s in reversed(self._clusters.values())]

    def crops(self, unknown_id: str) -> list[np.ndarray]:
        s = self.get(unknown_id)
        return [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR) for b in s.crops]

    def forget(self, unknown_id: str) -> None:
        with self._lock:
            self._clusters.pop(unknown_id, None)

    def promote(self, unknown_id: str, gallery, name: str | None = None, ignore: bool = False) -> str:
        """Enroll a stranger's kept crops into ``gallery`` as ``name`` (or as an ignore anchor,
        named ``name`` or the unknown_id). The cluster is forgotten: the next sighting matches
        the gallery identity. Returns the identity name. The caller rebuilds the gallery index."""
        s = self.get(unknown_id)
        if not s.crops:
            raise FacefleetError(f"stranger {unknown_id} has no kept crops to enroll (set unknowns.keep_crops: true)")
        if not ignore and not name:
            raise FacefleetError("promoting a stranger to an identity needs a name")
        target = name or unknown_id
        gallery.add(target, self.crops(unknown_id), sources=[f"stranger:{unknown_id}"] * len(s.crops), ignore=ignore)
        self.forget(unknown_id)
        return target

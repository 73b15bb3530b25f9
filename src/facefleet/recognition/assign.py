"""Per-frame identity assignment: within one frame an identity goes to at most one face.

A reflection, a poster or a screen can show an enrolled person twice. Greedy per-face matching
would name both; an optimal assignment on similarity gives the identity to the best face and
reports the other as unknown with its best candidate.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def assign(cand_idx: np.ndarray, cand_sim: np.ndarray, threshold: float,
           claimed: set[int] | frozenset[int] = frozenset()) -> np.ndarray:
    """Identity index per face, or -1.

    ``cand_idx``/``cand_sim`` ``[faces, k]``: each face's top-k gallery candidates. Only pairs at
    or above ``threshold`` may be assigned; identities in ``claimed`` (held by other faces
    visible in this frame) are not available. Maximizes the total similarity.
    """
    n = len(cand_idx)
    out = np.full(n, -1, np.int64)
    if n == 0 or cand_idx.size == 0:
        return out
    ok = (cand_sim >= threshold) & ~np.isin(cand_idx, list(claimed))
    if not ok.any():
        return out
    ids = np.unique(cand_idx[ok])
    col = {int(v): j for j, v in enumerate(ids)}
    gain = np.zeros((n, len(ids)))
    allowed = np.zeros((n, len(ids)), bool)
    for f, j in zip(*np.nonzero(ok), strict=True):
        c = col[int(cand_idx[f, j])]
        gain[f, c] = cand_sim[f, j]
        allowed[f, c] = True
    rows, cols = linear_sum_assignment(np.where(allowed, gain, -1e6), maximize=True)
    for r, c in zip(rows, cols, strict=True):
        if allowed[r, c]:
            out[r] = ids[c]
    return out

"""Check a detection plan against the frame it actually runs on.

Why: a plan validates without knowing the camera: a zone outside a 1280x720 frame, or an
overlap larger than the detector's own tile size, passes the schema and then fails EVERY frame.
The first frame of a source (and the first after a configuration change) is checked here; a
plan that does not fit is reported once and the camera runs on what does fit (the zones inside
the frame, or the letterboxed full frame), instead of failing frame after frame.
"""

from __future__ import annotations

import logging

from facefleet.errors import FacefleetError
from facefleet.vision.tiling import DetectionPlan

log = logging.getLogger(__name__)


class PlanGuard:
    """One per pipeline: re-checks when the frame size or the configuration object changes."""

    def __init__(self) -> None:
        self._checked: tuple[int, int, int, int] | None = None

    def check(self, pipeline, width: int, height: int) -> str | None:
        """Fit ``pipeline.cfg``'s plan to a ``width`` x ``height`` frame; a message if it had to change."""
        key = (id(pipeline.cfg), id(pipeline.detector), width, height)
        if key == self._checked:
            return None
        plan = pipeline.cfg.detection.plan
        message = None
        if plan.tiled:
            fitted, message = fit_plan(plan, pipeline.detector, width, height)
            if message:
                det = pipeline.cfg.detection.model_copy(update={"plan": fitted})
                pipeline.cfg = pipeline.cfg.model_copy(update={"detection": det})
        self._checked = (id(pipeline.cfg), id(pipeline.detector), width, height)
        return message


def _fits(plan: DetectionPlan, detector, width: int, height: int) -> str | None:
    cw, ch = detector.tile_canvas(plan)
    try:
        plan.windows(width, height, min(cw, ch))
    except FacefleetError as e:
        return str(e)
    return None


def fit_plan(plan: DetectionPlan, detector, width: int, height: int) -> tuple[DetectionPlan, str | None]:
    problem = _fits(plan, detector, width, height)
    if problem is None:
        return plan, None
    inside = [z for z in plan.zones if z.x < width and z.y < height and z.x + z.width > 0 and z.y + z.height > 0]
    candidate = None
    if plan.grid or inside:
        try:
            candidate = plan.model_copy(update={"zones": inside})
        except ValueError:
            candidate = None
        if candidate is not None and _fits(candidate, detector, width, height) is not None:
            candidate = None
    if candidate is None:
        candidate = DetectionPlan()  # the letterboxed full frame always fits
        what = "the letterboxed full frame only"
    else:
        what = f"{len(inside)} zone(s) inside the frame" + (" and the grid" if plan.grid else "")
    return candidate, f"{problem}; running {what} until the plan is fixed"

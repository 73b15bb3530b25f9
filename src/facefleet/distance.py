"""The operator's distance benchmark: how far can this camera recognize people?

Every photo of a folder-per-identity set is placed into a frame of the camera's resolution with
its face at a given height (112 px is close, 20 px is far), as a camera would see that person
at a distance, and run through the configured pipeline (models, detection plan, backend). One
photo per identity is enrolled at full resolution; the others are the queries.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from facefleet.errors import FacefleetError
from facefleet.recognition.gallery import Gallery
from facefleet.recognition.loader import gallery_index
from facefleet.recognition.models import Detector
from facefleet.recognition.pipeline import FacePipeline
from facefleet.sources import IMAGE_EXTS, Frame, read_image
from facefleet.vision.align import align_faces
from facefleet.vision.nms import iou_matrix

DEFAULT_HEIGHTS = (112, 80, 56, 40, 28, 20)
BACKGROUND = 114  # mid grey, like a letterbox pad


@dataclass
class Photo:
    identity: str
    path: Path
    image: np.ndarray
    box: np.ndarray  # the face (largest detection) in photo pixels
    kps: np.ndarray


def load_faces(folder: Path, detector: Detector) -> list[Photo]:
    """Photos of ``folder/<identity>/*``, each with its largest face (found at full size)."""
    if not folder.is_dir():
        raise FacefleetError(f"faces folder not found: {folder}")
    photos = []
    for ident in sorted(p for p in folder.iterdir() if p.is_dir()):
        for f in sorted(p for p in ident.iterdir() if p.suffix.lower() in IMAGE_EXTS):
            img = read_image(f)
            det = detector.detect(img)
            if len(det) == 0:
                continue
            i = int(np.argmax(det.heights))
            photos.append(Photo(ident.name, f, img, det.boxes[i], det.kps[i]))
    if len({p.identity for p in photos}) < 2:
        raise FacefleetError(f"{folder}: need photos of at least 2 identities (one folder each)")
    return photos


def place(photo: Photo, face_h: float, frame_w: int, frame_h: int, slot: int) -> tuple[np.ndarray, np.ndarray]:
    """A ``frame_w x frame_h`` frame with the photo scaled so its face is ``face_h`` px tall.

    The face centre cycles through a 5x3 grid of positions (``slot``) so faces land on tile
    edges too. Returns (frame, face box in frame pixels).
    """
    x0, y0, x1, y1 = photo.box
    s = face_h / max(y1 - y0, 1.0)
    img = photo.image
    h, w = img.shape[:2]
    gx, gy = slot % 5, (slot // 5) % 3
    cx = frame_w * (0.1 + 0.2 * gx) + 7 * (slot % 7)
    cy = frame_h * (0.2 + 0.3 * gy)
    fx, fy = (x0 + x1) / 2, (y0 + y1) / 2
    # scale first (INTER_AREA averages like a lens does; warpAffine would only sample), then shift
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    scaled = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=interp)
    m = np.array([[1, 0, cx - s * fx], [0, 1, cy - s * fy]], np.float32)
    frame = cv2.warpAffine(scaled, m, (frame_w, frame_h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=(BACKGROUND,) * 3)
    box = np.array([cx - s * (fx - x0), cy - s * (fy - y0), cx + s * (x1 - fx), cy + s * (y1 - fy)], np.float32)
    return frame, box


def run(pipeline: FacePipeline, photos: list[Photo], gallery: Gallery, heights: tuple[float, ...],
        frame_w: int, frame_h: int) -> dict:
    """Enroll the first photo of each identity; place every photo at every height; measure."""
    enrolled: dict[str, Photo] = {}
    for p in photos:
        enrolled.setdefault(p.identity, p)
    for ident, p in enrolled.items():
        gallery.add(ident, [align_faces(p.image, p.kps[None])[0].copy()], [p.path.name])
    pipeline.set_models(pipeline.detector, pipeline.recognizer, gallery_index(gallery, pipeline.recognizer))
    n_queries = sum(enrolled[p.identity] is not p for p in photos)
    min_rec = pipeline.cfg.recognition.min_face_px
    rows = []
    for h in heights:
        found = rank1 = matched = false_accepts = too_small = others = 0
        pre_norms: list[float] = []
        t0 = time.perf_counter()
        for slot, p in enumerate(photos):
            frame, box = place(p, h, frame_w, frame_h, slot)
            events = pipeline.process(Frame(slot, frame, None, still=True, name=p.path.name))
            if not events:
                continue
            boxes = np.array([e.bbox for e in events], np.float32)
            ious = iou_matrix(box[None], boxes)[0]
            j = int(np.argmax(ious))
            # the other faces of a group photo are other people (whose identity this set does not
            # label): named or not, they are not false accepts of this photo's person
            others += sum(e.decision == "identified" for k, e in enumerate(events) if k != j or ious[j] < 0.3)
            if ious[j] < 0.3:
                continue
            found += 1
            e = events[j]
            false_accepts += e.decision == "identified" and e.identity != p.identity
            if e.quality.face_px < min_rec:
                too_small += 1  # found, but below recognition.min_face_px: never embedded
            if e.quality.pre_norm is not None:
                pre_norms.append(e.quality.pre_norm)
            if enrolled[p.identity] is not p:  # a query, not the enrolled photo
                best = e.identity if e.decision == "identified" else (e.best_candidate.identity if e.best_candidate else None)
                rank1 += best == p.identity
                matched += e.decision == "identified" and e.identity == p.identity
        seconds = time.perf_counter() - t0
        rows.append({
            "face_px": h,
            "photos": len(photos), "queries": n_queries,
            "detection_rate": found / len(photos),
            "rank1": rank1 / max(n_queries, 1),
            "match_rate": matched / max(n_queries, 1),
            "false_accepts": false_accepts,
            "too_small": too_small,
            "other_faces_identified": others,
            "pre_norm_mean": float(np.mean(pre_norms)) if pre_norms else None,
            "fps": len(photos) / seconds,
        })
    plan = pipeline.cfg.detection.plan
    return {
        "frame": [frame_w, frame_h],
        "identities": len(enrolled),
        "threshold": pipeline.threshold,
        "models": pipeline.models.model_dump(),
        "plan": plan.model_dump(),
        "heights": rows,
        "advice": advice(rows, pipeline.cfg),
    }


def advice(rows: list[dict], cfg) -> list[str]:
    """Which setting to change, from the figures: faces found but too small to recognize,
    faces the detector loses."""
    out = []
    rc, plan = cfg.recognition, cfg.detection.plan
    def px_list(rs: list[dict]) -> str:
        return ", ".join(f"{r['face_px']:g}" for r in rs)

    small = [r for r in rows if r["too_small"]]
    if small:
        px = min(r["face_px"] for r in small)
        out.append(f"faces found at {px_list(small)} px are too small to recognize "
                   f"(recognition.min_face_px {rc.min_face_px:g}): to try them, lower recognition.min_face_px to "
                   f"{max(1, math.floor(px * 0.9)):g} and check rank1 at those heights")
    lost = [r for r in rows if r["detection_rate"] < 0.8]
    if lost and not plan.tiled:
        out.append(f"the detector loses faces at {px_list(lost)} px: add tiles "
                   f"(detection.plan grid: true, or zones where far faces appear)")
    elif lost:
        out.append(f"the detector loses faces at {px_list(lost)} px even with tiles: "
                   f"lower detection.min_face_px ({cfg.detection.min_face_px:g}) or detection.score_threshold")
    return out


def write_outputs(results: dict[str, dict], out_dir: Path, label: str = "distance") -> tuple[Path, Path]:
    """``<label>.json`` (every run) and ``<label>.png``: rates against face height, one line
    style per run (e.g. the single-letterbox baseline dashed, the tiling plan solid)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise FacefleetError("the distance plot needs matplotlib: pip install matplotlib") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    js = out_dir / f"{label}.json"
    js.write_text(json.dumps(results, indent=1))
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    colours = {"detection_rate": "tab:blue", "rank1": "tab:green", "match_rate": "tab:orange"}
    for name, result in results.items():
        dash = "--" if name == "baseline" else "-"
        hs = [r["face_px"] for r in result["heights"]]
        for key, colour in colours.items():
            ax.plot(hs, [r[key] for r in result["heights"]], dash, marker="o", ms=3, color=colour,
                    label=f"{key.replace('_', ' ')} ({name})")
    first = next(iter(results.values()))
    w, h = first["frame"]
    ax.set_xlabel("face height in the frame (px)")
    ax.set_ylabel("rate")
    ax.set_ylim(-0.02, 1.02)
    ax.invert_xaxis()
    ax.grid(alpha=0.3)
    ax.set_title(f"distance benchmark, {w}x{h} frame, threshold {first['threshold']:.2f}")
    ax.legend(loc="lower left", fontsize=7)
    png = out_dir / f"{label}.png"
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return js, png

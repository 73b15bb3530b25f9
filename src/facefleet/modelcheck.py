"""``facefleet models check MODEL --faces DIR``: prove a model's spec on the operator's own
photos (one folder per person) before it ships.

A wrong colour order or normalization passes the load self-test (the outputs have the right
shapes) and then names strangers. So the check runs the model on real faces, under the spec's
preprocessing AND the usual alternatives, and compares:

- detector: faces found per photo and landmark sanity (portraits: one face, eyes above the
  nose above the mouth, left before right);
- recognizer: separation of same-person from different-person pairs (AUC, d'), and a match
  threshold from these people: the highest stranger similarity, the closest pair of enrolled
  people, the threshold at a false-accept target and its true-accept rate.

A spec whose preprocessing is clearly worse than an alternative is refused with the reason;
``--write`` puts the findings (and the recommended threshold) into the model's sidecar.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from facefleet.errors import FacefleetError
from facefleet.modelspec import ModelSpec, Normalization, ResolvedModel, resolve_model
from facefleet.sources import IMAGE_EXTS, read_image
from facefleet.vision.align import align_faces
from facefleet.vision.detections import Detections

log = logging.getLogger(__name__)

# The conventions models are trained with, in RGB channel order (reversed for a BGR model).
# Candidates to try, not facts about a model: the spec's own choice is always tried too.
NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "(x-127.5)/127.5": ((127.5,) * 3, (127.5,) * 3),
    "(x-127.5)/128": ((127.5,) * 3, (128.0,) * 3),
    "x/255": ((0.0,) * 3, (255.0,) * 3),
    "raw 0-255": ((0.0,) * 3, (1.0,) * 3),
    "ImageNet mean/std": ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
    "Caffe mean (104,117,123)": ((123.0, 117.0, 104.0), (1.0,) * 3),
}
# A spec is refused when an alternative is this much better (detector: share of photos with
# one sane face; recognizer: d' ratio) or when it fails on its own.
MIN_DETECTOR_RATE = 0.5
DETECTOR_MARGIN = 0.25
MAX_FACES_PER_PORTRAIT = 3
RECOGNIZER_DPRIME_RATIO = 0.7
CONFIRM_RATIO = 0.98  # the spec's preprocessing is "confirmed" within 2 % of the best d'
MIN_AUC = 0.9


@dataclass
class Variant:
    """One preprocessing tried: colour order + normalization (None: the spec's own, for HEFs)."""

    color: str
    norm_name: str
    normalization: Normalization | None
    is_spec: bool = False

    @property
    def label(self) -> str:
        return f"{self.color} {self.norm_name}" + (" [spec]" if self.is_spec else "")

    def spec_update(self) -> dict:
        return {"color": self.color, "normalization": self.normalization.model_dump() if self.normalization else None,
                "normalization_name": self.norm_name}


def photos_by_person(folder: Path) -> dict[str, list[Path]]:
    """``folder/<person>/*.jpg`` -> photos per person (sorted); one-line errors for bad folders."""
    if not folder.is_dir():
        raise FacefleetError(f"faces folder not found: {folder}")
    people = {}
    for d in sorted(p for p in folder.iterdir() if p.is_dir()):
        photos = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if photos:
            people[d.name] = photos
    if not people:
        raise FacefleetError(f"{folder}: no photos: expected one sub-folder of photos per person")
    return people


def _norm_for(spec: ModelSpec, name: str) -> Normalization:
    mean, std = NORMALIZATIONS[name]
    if spec.input.color == "BGR":
        mean, std = mean[::-1], std[::-1]
    return Normalization(mean=mean, std=std)


def _name_of(spec: ModelSpec) -> str:
    """The candidate name of the spec's own normalization, or 'custom'."""
    if spec.normalization is None:
        return "in the HEF"
    for name in NORMALIZATIONS:
        n = _norm_for(spec, name)
        if np.allclose(n.mean, spec.normalization.mean, atol=0.6) and np.allclose(n.std, spec.normalization.std, rtol=0.01):
            return name
    return f"custom mean {list(spec.normalization.mean)} std {list(spec.normalization.std)}"


def variants(spec: ModelSpec) -> list[Variant]:
    """The spec's preprocessing first, then both colour orders x every candidate normalization
    (a HEF holds its normalization: only the colour order can be tried there)."""
    own = Variant(spec.input.color, _name_of(spec), spec.normalization, is_spec=True)
    out = [own]
    names = list(NORMALIZATIONS) if spec.normalization is not None else [None]
    for color in ("RGB", "BGR"):
        for name in names:
            flipped = spec.model_copy(update={"input": spec.input.model_copy(update={"color": color})})
            norm = _norm_for(flipped, name) if name else None
            v = Variant(color, name or own.norm_name, norm)
            if (v.color, v.norm_name) != (own.color, own.norm_name):
                out.append(v)
    return out


def _with(resolved: ResolvedModel, v: Variant) -> ResolvedModel:
    spec = resolved.spec
    update = {"input": spec.input.model_copy(update={"color": v.color}), "normalization": v.normalization}
    return ResolvedModel(spec=spec.model_copy(update=update), path=resolved.path)


def sane_landmarks(det: Detections) -> np.ndarray:
    """Per face: landmarks inside the box, left eye/mouth corner left of the right ones, eyes
    above the nose above the mouth, eyes apart by 15-80 % of the box width."""
    k, b = det.kps, det.boxes
    if len(det) == 0:
        return np.zeros(0, bool)
    inside = ((k[..., 0] >= b[:, None, 0]) & (k[..., 0] <= b[:, None, 2]) &
              (k[..., 1] >= b[:, None, 1]) & (k[..., 1] <= b[:, None, 3])).all(axis=1)
    order = (k[:, 0, 0] < k[:, 1, 0]) & (k[:, 3, 0] < k[:, 4, 0])
    eyes_y, mouth_y = k[:, :2, 1].mean(axis=1), k[:, 3:, 1].mean(axis=1)
    vertical = (eyes_y < k[:, 2, 1]) & (k[:, 2, 1] < mouth_y)
    width = np.maximum(b[:, 2] - b[:, 0], 1e-6)
    spread = (k[:, 1, 0] - k[:, 0, 0]) / width
    return inside & order & vertical & (spread > 0.15) & (spread < 0.8)


# --- detector ---------------------------------------------------------------------------------


@dataclass
class DetectorResult:
    variant: str
    photos: int
    with_face: int
    sane: int            # photos whose largest face has sane landmarks
    median_faces: float
    max_faces: int
    mean_score: float    # of the largest face, over photos with a face (tie-breaker)

    @property
    def rate(self) -> float:
        return self.sane / max(self.photos, 1)


def _run_detector(resolved: ResolvedModel, images: list[np.ndarray], backend, label: str) -> tuple[DetectorResult, list]:
    from facefleet.recognition.models import Detector

    model = backend.load(resolved)
    try:
        det = Detector(model)
        found = [det.detect(img) for img in images]
    finally:
        model.close()
    counts = [len(d) for d in found]
    sane, scores = 0, []
    for d in found:
        if len(d):
            i = int(np.argmax(d.heights))
            sane += bool(sane_landmarks(d.take(np.array([i])))[0])
            scores.append(float(d.scores[i]))
    res = DetectorResult(label, len(images), sum(c > 0 for c in counts), sane, float(np.median(counts)), max(counts),
                         round(float(np.mean(scores)), 3) if scores else 0.0)
    return res, found


def check_detector(resolved: ResolvedModel, people: dict[str, list[Path]], backend) -> dict:
    files = [p for ps in people.values() for p in ps]
    images = [read_image(p) for p in files]
    results, per_photo = [], []
    for v in variants(resolved.spec):
        r, found = _run_detector(_with(resolved, v), images, backend, v.label)
        results.append((v, r))
        if v.is_spec:
            per_photo = [{"photo": f"{p.parent.name}/{p.name}", "faces": len(d),
                          "score": round(float(d.scores.max()), 3) if len(d) else None,
                          "landmarks_ok": bool(sane_landmarks(d.take(np.array([int(np.argmax(d.heights))])))[0])
                          if len(d) else False}
                         for p, d in zip(files, found, strict=True)]
    spec_v, spec_r = results[0]
    best_v, best_r = max(results, key=lambda x: (x[1].rate, x[1].median_faces <= 1, x[1].mean_score))
    better = best_v is not spec_v and best_r.rate - spec_r.rate >= DETECTOR_MARGIN
    problems = []
    if spec_r.median_faces > MAX_FACES_PER_PORTRAIT:
        cause = ("the preprocessing" if better and best_r.median_faces <= MAX_FACES_PER_PORTRAIT
                 else "the spec's detector.layout or its outputs")
        problems.append(f"a median of {spec_r.median_faces:g} faces per portrait (max {spec_r.max_faces}): "
                        f"{cause} does not fit this model")
    if spec_r.rate < MIN_DETECTOR_RATE:
        problems.append(f"one sane face in only {spec_r.sane}/{spec_r.photos} photos")
    if better:
        problems.append(f"input {best_v.label} finds a sane face in {best_r.sane}/{best_r.photos} photos, the spec's "
                        f"{spec_v.label} in {spec_r.sane}/{spec_r.photos}: fix input.color / normalization")
    return {
        "kind": "detector", "model": resolved.spec.name, "fingerprint": resolved.spec.fingerprint,
        "photos": len(files), "people": len(people),
        "variants": [asdict(r) | {"rate": round(r.rate, 3)} for _, r in results],
        "spec": spec_v.spec_update(), "best": best_v.spec_update(),
        "confirmed": best_v is spec_v or (best_r.rate - spec_r.rate < 0.05 and best_r.mean_score <= spec_r.mean_score + 0.05),
        "better": (f"input {best_v.label} finds a sane face in {best_r.sane}/{best_r.photos} photos (mean score "
                   f"{best_r.mean_score:.3f}), the spec's in {spec_r.sane}/{spec_r.photos} ({spec_r.mean_score:.3f})"),
        "per_photo": per_photo,
        "refused": problems,
    }


# --- recognizer -------------------------------------------------------------------------------


@dataclass
class Separation:
    variant: str
    auc: float
    dprime: float
    same_mean: float
    same_min: float
    diff_mean: float
    diff_max: float
    extra: dict = field(default_factory=dict)


def _pairs(labels: np.ndarray, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sims = emb @ emb.T
    iu = np.triu_indices(len(labels), 1)
    same = labels[iu[0]] == labels[iu[1]]
    return sims[iu][same], sims[iu][~same]


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(same-person similarity > different-person similarity) (Mann-Whitney, ties half)."""
    allv = np.concatenate([pos, neg])
    order = allv.argsort(kind="stable")
    ranks = np.empty(len(allv))
    ranks[order] = np.arange(1, len(allv) + 1)
    _, inv, counts = np.unique(allv, return_inverse=True, return_counts=True)
    sums = np.zeros(len(counts))
    np.add.at(sums, inv, ranks)
    ranks = (sums / counts)[inv]
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def separation(label: str, labels: np.ndarray, emb: np.ndarray) -> Separation:
    same, diff = _pairs(labels, emb)
    d = (same.mean() - diff.mean()) / math.sqrt(max((same.var() + diff.var()) / 2, 1e-12))
    return Separation(label, round(_auc(same, diff), 4), round(float(d), 3), round(float(same.mean()), 3),
                      round(float(same.min()), 3), round(float(diff.mean()), 3), round(float(diff.max()), 3))


def threshold_figures(labels: np.ndarray, emb: np.ndarray, far: float) -> dict:
    """The match threshold these people support: above every stranger pair up to the
    false-accept target, and above the closest pair of enrolled people (one template each)."""
    same, diff = _pairs(labels, emb)
    names = sorted(set(labels.tolist()))
    templates = np.stack([emb[labels == n].mean(axis=0) for n in names])
    templates /= np.linalg.norm(templates, axis=1, keepdims=True)
    t = templates @ templates.T
    np.fill_diagonal(t, -1)
    i, j = np.unravel_index(int(np.argmax(t)), t.shape)
    allowed = math.floor(far * len(diff))  # stranger pairs allowed above the threshold
    ranked = np.sort(diff)[::-1]
    at_far = float(ranked[allowed]) if allowed < len(ranked) else float(ranked[-1])
    recommended = math.ceil(max(at_far, float(t[i, j])) * 100 + 1e-9) / 100
    return {
        "stranger_pairs": len(diff), "same_pairs": len(same),
        "highest_stranger": round(float(diff.max()), 3),
        "closest_enrolled_pair": {"people": [names[i], names[j]], "similarity": round(float(t[i, j]), 3)},
        "far_target": far, "threshold_at_far": round(at_far, 3),
        "far_resolution": round(1 / len(diff), 6),
        "recommended_match_threshold": recommended,
        "true_accept_rate": round(float((same >= recommended).mean()), 3),
    }


def face_crops(people: dict[str, list[Path]], detector) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(labels, aligned 112x112 crops of each photo's largest face, photos without a face)."""
    labels, crops, missing = [], [], []
    for name, photos in people.items():
        for p in photos:
            img = read_image(p)
            d = detector.detect(img)
            if len(d) == 0:
                missing.append(f"{name}/{p.name}")
                continue
            i = int(np.argmax(d.heights))
            crops.append(align_faces(img, d.kps[i:i + 1])[0].copy())
            labels.append(name)
    return np.array(labels), np.stack(crops) if crops else np.zeros((0, 112, 112, 3), np.uint8), missing


def check_recognizer(resolved: ResolvedModel, people: dict[str, list[Path]], backend, detector, far: float) -> dict:
    from facefleet.recognition.models import Recognizer

    labels, crops, missing = face_crops(people, detector)
    counts = {n: int((labels == n).sum()) for n in people}
    if len([n for n, c in counts.items() if c >= 1]) < 2 or not any(c >= 2 for c in counts.values()):
        raise FacefleetError("models check needs faces of at least 2 people, one of them in 2+ photos "
                             f"(faces found per person: {counts})")
    results = []
    for v in variants(resolved.spec):
        model = backend.load(_with(resolved, v))
        try:
            emb, _ = Recognizer(model).embed(crops)
        finally:
            model.close()
        s = separation(v.label, labels, emb)
        if v.is_spec:
            s.extra = threshold_figures(labels, emb, far)
            same, _ = _pairs(labels, emb)
            spec_tar = round(float((same >= resolved.spec.recognizer.match_threshold).mean()), 3)
        results.append((v, s))
    spec_v, spec_s = results[0]
    best_v, best_s = max(results, key=lambda x: (x[1].dprime, x[1].auc))
    problems = []
    if spec_s.auc < MIN_AUC:
        problems.append(f"same-person and different-person faces overlap (AUC {spec_s.auc:.3f}, strangers up to "
                        f"{spec_s.diff_max:.2f})")
    if best_v is not spec_v and spec_s.dprime < RECOGNIZER_DPRIME_RATIO * best_s.dprime:
        problems.append(f"input {best_v.label} separates people far better (d' {best_s.dprime:.2f}, AUC "
                        f"{best_s.auc:.3f}) than the spec's {spec_v.label} (d' {spec_s.dprime:.2f}, AUC "
                        f"{spec_s.auc:.3f}): fix input.color / normalization")
    return {
        "kind": "recognizer", "model": resolved.spec.name, "fingerprint": resolved.spec.fingerprint,
        "photos": sum(len(p) for p in people.values()), "people": len(people), "faces": len(labels),
        "no_face": missing,
        "variants": [asdict(s) for _, s in results],
        "spec": spec_v.spec_update(), "best": best_v.spec_update(),
        "confirmed": best_v is spec_v or spec_s.dprime >= CONFIRM_RATIO * best_s.dprime,
        "better": f"input {best_v.label} separates people better (d' {best_s.dprime:.2f} vs {spec_s.dprime:.2f})",
        "threshold": spec_s.extra, "spec_match_threshold": resolved.spec.recognizer.match_threshold,
        "spec_true_accept_rate": spec_tar,
        "refused": problems,
    }


# --- report, sidecar, CLI ---------------------------------------------------------------------


def render(report: dict) -> str:
    """The report as text (what the operator reads)."""
    lines = [f"{report['model']} ({report['kind']}, {report['fingerprint']}) on {report['photos']} photos of "
             f"{report['people']} people"]
    if report["kind"] == "detector":
        lines.append(f"  {'preprocessing':<40} {'sane face':>10} {'median faces':>13} {'max':>5} {'score':>6}")
        for r in report["variants"]:
            lines.append(f"  {r['variant']:<40} {r['sane']:>4}/{r['photos']:<5} {r['median_faces']:>13g} {r['max_faces']:>5}"
                         f" {r['mean_score']:>6.3f}")
        bad = [p for p in report["per_photo"] if p["faces"] != 1 or not p["landmarks_ok"]]
        for p in bad[:10]:
            lines.append(f"  check {p['photo']}: {p['faces']} faces, landmarks {'ok' if p['landmarks_ok'] else 'NOT sane'}")
    else:
        lines.append(f"  faces found in {report['faces']} photos" +
                     (f" (none in {', '.join(report['no_face'][:5])})" if report["no_face"] else ""))
        lines.append(f"  {'preprocessing':<40} {'AUC':>6} {'d-prime':>8} {'same mean/min':>14} {'strangers mean/max':>19}")
        for s in report["variants"]:
            lines.append(f"  {s['variant']:<40} {s['auc']:>6.3f} {s['dprime']:>8.2f} {s['same_mean']:>7.3f}/{s['same_min']:<6.3f}"
                         f" {s['diff_mean']:>10.3f}/{s['diff_max']:<6.3f}")
        t = report["threshold"]
        pair = t["closest_enrolled_pair"]
        lines.append(f"  highest stranger similarity {t['highest_stranger']:.3f}; closest enrolled pair "
                     f"{pair['similarity']:.3f} ({pair['people'][0]} / {pair['people'][1]})")
        lines.append(f"  at FAR {t['far_target']:g} over {t['stranger_pairs']} stranger pairs (resolution "
                     f"{t['far_resolution']:g}): threshold {t['threshold_at_far']:.3f}")
        lines.append(f"  recommended match_threshold {t['recommended_match_threshold']:.2f}: true-accept rate "
                     f"{t['true_accept_rate']:.3f} (spec: {report['spec_match_threshold']:.2f}, "
                     f"true-accept rate {report['spec_true_accept_rate']:.3f})")
    if report["refused"]:
        lines.append("REFUSED: " + "; ".join(report["refused"]))
    elif report["confirmed"]:
        lines.append("spec's preprocessing confirmed (best of the candidates tried)")
    else:
        lines.append(f"spec accepted, not the best candidate: {report['better']}: consider it (input.color / normalization)")
    return "\n".join(lines)


def write_sidecar(resolved: ResolvedModel, report: dict) -> Path:
    """Write (or update) ``<model>.json`` with the findings; a recognizer's match_threshold
    becomes the recommended one. The file is replaced atomically."""
    spec = resolved.spec
    summary = {k: report[k] for k in ("photos", "people", "spec", "confirmed")}
    summary["date"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    update: dict = {}
    if report["kind"] == "recognizer":
        summary["threshold"] = report["threshold"]
        summary["separation"] = report["variants"][0]
        update["recognizer"] = spec.recognizer.model_copy(
            update={"match_threshold": report["threshold"]["recommended_match_threshold"]})
    else:
        summary["detections"] = report["variants"][0]
    update["provenance"] = {**spec.provenance, "models_check": summary}
    new = spec.model_copy(update=update)
    ModelSpec.model_validate(new.model_dump())  # still a valid spec
    path = resolved.path.with_suffix(".json")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(new.model_dump_json(indent=1) + "\n")
    tmp.replace(path)
    return path


def run_check(model: str | Path, faces: str | Path, detector: str | Path | None = None, far: float = 1e-3,
              backend=None) -> tuple[ResolvedModel, dict]:
    from facefleet.assets import default_model
    from facefleet.recognition.models import Detector
    from facefleet.runtime import create_backend

    resolved = resolve_model(model)
    if resolved.spec.format != "onnx":
        raise FacefleetError(f"models check runs ONNX models on the CPU; {Path(model).name} is a "
                             f"{resolved.spec.format} file: check the ONNX it was compiled from")
    if not 0 < far < 1:
        raise FacefleetError(f"--far must be between 0 and 1, got {far}")
    people = photos_by_person(Path(faces))
    backend = backend or create_backend("onnx")
    if resolved.spec.kind == "detector":
        return resolved, check_detector(resolved, people, backend)
    det_model = backend.load(resolve_model(detector or default_model("detector"), kind="detector"))
    try:
        report = check_recognizer(resolved, people, backend, Detector(det_model), far)
    finally:
        det_model.close()
    return resolved, report


def cmd_check(args) -> int:
    resolved, report = run_check(args.model, args.faces, args.detector, args.far)
    print(json.dumps(report, indent=1) if args.json else render(report))
    if report["refused"]:
        raise FacefleetError(f"{resolved.path.name}: spec refused: {'; '.join(report['refused'])}")
    if args.write:
        path = write_sidecar(resolved, report)
        print(f"wrote {path}")
    return 0


def register(models_sub) -> None:
    """``facefleet models check MODEL --faces DIR [--write]``."""
    c = models_sub.add_parser("check", help="prove a model's spec on photos of your own people (one folder each)")
    c.add_argument("model", help="model file (its spec: sidecar <model>.json or the catalog)")
    c.add_argument("--faces", required=True, help="folder with one sub-folder of photos per person")
    c.add_argument("--detector", help="recognizers: the detector that finds the faces (default: the shared det_500m)")
    c.add_argument("--far", type=float, default=1e-3, help="false-accept target for the recommended threshold")
    c.add_argument("--write", action="store_true", help="write the findings (and the threshold) into <model>.json")
    c.add_argument("--json", action="store_true", help="print the full report as JSON")
    c.set_defaults(func=cmd_check)

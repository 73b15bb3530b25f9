"""facefleet's pipeline against InsightFace's ``FaceAnalysis``, on the same video, in one process.

Why: InsightFace's ``FaceAnalysis`` is the reference most people reach for (same SCRFD-500M
detector, same ArcFace MobileFaceNet recognizer), so it is the baseline facefleet's speed and its
answers are judged against. Both sides run the same two model files on the same onnxruntime
(CPU, default thread settings) in the same process, alternating round after round so the machine
is in the same state for both. Frames are decoded up front: only processing is timed.

What each side does per frame:

- InsightFace: ``app.get(frame)`` (SCRFD at det_size 640x640, then ArcFace on EVERY face, one
  recognizer call per face), then each ``face.normed_embedding`` is compared with the two enrolled
  embeddings InsightFace computed itself from the enrollment photos (largest face in each).
- facefleet: ``pipeline.process(frame)`` for every frame, then ``pipeline.flush()`` (SCRFD at the
  frame's aspect, tracking, embedding only until a track is decided, plus periodic re-checks).

Reported: fps (median of ``--rounds``), ms per frame, the ratio facefleet/InsightFace, and whether
the same people were found: identities InsightFace matched in any frame (cosine >= the
recognizer's threshold from ``artifacts/models.json``) against identities in facefleet's
``identified`` events, plus faces seen and faces embedded by each side.

InsightFace is NOT a facefleet dependency: it lives only in a separate benchmark venv::

    python3 -m venv .bench-venv
    .bench-venv/bin/pip install -e '.[onnx]' insightface onnxruntime
    .bench-venv/bin/python benchmarks/insightface_compare.py [--assets DIR] [--rounds 3] [--json OUT]

No model is downloaded: the shared assets' ``det_500m.onnx`` and ``w600k_mbf_fp32.onnx`` are linked
into a temporary ``models/buffalo_sc/`` that ``FaceAnalysis`` loads, and the script checks from
InsightFace's own log that it loaded exactly those two files.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facefleet import __version__ as facefleet_version
from facefleet.config import PipelineConfig
from facefleet.recognition.gallery import Gallery, GalleryIndex
from facefleet.recognition.loader import ModelPair, enroll_images, gallery_index, load_models
from facefleet.recognition.pipeline import FacePipeline
from facefleet.runtime import create_backend
from facefleet.sources import Frame, open_source, read_image

REPO = Path(__file__).resolve().parents[1]
ASSETS_ENV = "FACEFLEET_ASSETS"
DETECTOR = "models/det_500m.onnx"
RECOGNIZER = "models/w600k_mbf_fp32.onnx"  # the float model; InsightFace knows it as buffalo_sc/w600k_mbf.onnx
VIDEO = "video/hamilton_clip.mp4"
ENROLL = ("enroll/lin-manuel-miranda.png", "enroll/obama.jpg")
IF_PACK = "buffalo_sc"
IF_FILES = {"detection": ("det_500m.onnx", DETECTOR), "recognition": ("w600k_mbf.onnx", RECOGNIZER)}
DET_SIZE = (640, 640)


# ---- results -------------------------------------------------------------------------------------
@dataclass
class IdentityHits:
    """Where one identity was found: matched face-frames (InsightFace), or identified tracks
    (facefleet: from a track's first frame to the frame it was decided at)."""

    count: int = 0
    first_frame: int | None = None
    last_frame: int | None = None
    max_similarity: float = -1.0

    def add(self, first: int, last: int, similarity: float) -> None:
        self.count += 1
        self.first_frame = first if self.first_frame is None else min(self.first_frame, first)
        self.last_frame = last if self.last_frame is None else max(self.last_frame, last)
        self.max_similarity = max(self.max_similarity, similarity)


@dataclass
class RoundResult:
    """One timed pass over all frames by one side."""

    seconds: float
    frames: int
    faces_seen: int
    faces_embedded: int
    recognizer_calls: int
    identities: dict[str, IdentityHits] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds


# ---- arguments and inputs ------------------------------------------------------------------------
def default_assets() -> Path:
    env = os.environ.get(ASSETS_ENV)
    return Path(env) if env else REPO.parent / "shared" / "assets"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="facefleet vs InsightFace FaceAnalysis on the Hamilton clip (run in .bench-venv).")
    p.add_argument("--assets", type=Path, default=default_assets(),
                   help=f"shared assets folder (default: ${ASSETS_ENV}, else ../shared/assets from the repo)")
    p.add_argument("--rounds", type=int, default=3, help="timed passes per side, alternating; the median is reported")
    p.add_argument("--warmup", type=int, default=3, help="frames run by each side before timing (not counted)")
    p.add_argument("--spin", choices=["off", "on"], default="off",
                   help="onnxruntime intra-op thread spinning, set alike on both sides (facefleet's default: off)")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON to OUT")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.warmup < 0:
        p.error("--rounds must be >= 1 and --warmup >= 0")
    missing = [r for r in (DETECTOR, RECOGNIZER, VIDEO, *ENROLL) if not (args.assets / r).is_file()]
    if missing:
        p.error(f"not in assets folder {args.assets}: {', '.join(missing)}")
    return args


def decode_video(path: Path) -> list[Frame]:
    """Every frame, decoded into memory before anything is timed."""
    source = open_source(str(path))
    try:
        return list(source)
    finally:
        source.close()


# ---- facefleet side ------------------------------------------------------------------------------
def facefleet_setup(assets: Path, gallery_dir: Path, spin: bool) -> tuple[PipelineConfig, ModelPair, GalleryIndex]:
    """Models, a fresh gallery with the enrollment photos (names = file stems), its index."""
    cfg = PipelineConfig()
    models = load_models(create_backend(cfg.models.backend, spin=spin), cfg, assets / DETECTOR, assets / RECOGNIZER)
    gallery = Gallery.open(gallery_dir, create=True)
    for rel in ENROLL:
        image = assets / rel
        enroll_images(gallery, models.detector, image.stem, [image])
    return cfg, models, gallery_index(gallery, models.recognizer)


def new_pipeline(cfg: PipelineConfig, models: ModelPair, index: GalleryIndex) -> FacePipeline:
    """A pipeline with empty tracker and counters (one per pass), on the shared loaded models."""
    return FacePipeline(models.detector, models.recognizer, index, cfg)


def run_facefleet(pipeline: FacePipeline, frames: list[Frame]) -> RoundResult:
    t0 = time.perf_counter()
    events = [ev for f in frames for ev in pipeline.process(f)]
    events += pipeline.flush()
    seconds = time.perf_counter() - t0
    found: dict[str, IdentityHits] = {}
    for ev in events:
        if ev.decision == "identified" and ev.identity is not None:
            found.setdefault(ev.identity, IdentityHits()).add(ev.first_frame, ev.frame_index, ev.similarity or 0.0)
    c = pipeline.counters
    return RoundResult(seconds, len(frames), c.faces, c.embedded, c.recognizer_calls, found,
                       {"events": len(events), "unknown_events": sum(ev.decision == "unknown" for ev in events)})


# ---- InsightFace side ----------------------------------------------------------------------------
class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def stage_insightface_models(assets: Path, root: Path) -> Path:
    """``root/models/buffalo_sc/`` with links to the shared model files: nothing to download."""
    pack = root / "models" / IF_PACK
    pack.mkdir(parents=True)
    for name, rel in IF_FILES.values():
        (pack / name).symlink_to((assets / rel).resolve())
    return pack


def session_options(spin: bool) -> Any:
    """The onnxruntime session options facefleet's backend uses, for InsightFace's sessions."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def insightface_app(root: Path, pack: Path, spin: bool) -> tuple[Any, list[str]]:
    """``FaceAnalysis`` on the staged pack; fails unless its log shows it loaded both staged files."""
    try:
        from insightface.app import FaceAnalysis
    except ImportError as e:
        sys.exit(f"insightface is not installed in this interpreter ({e}); see the module docstring for the bench venv")
    warnings.filterwarnings("ignore", category=FutureWarning, module="insightface")  # scikit-image deprecation noise
    logger = logging.getLogger("insightface")
    records, old = _Records(), (logger.level, logger.propagate)
    logger.addHandler(records)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # captured here, not printed
    try:
        app = FaceAnalysis(name=IF_PACK, root=str(root), allowed_modules=["detection", "recognition"],
                           providers=["CPUExecutionProvider"], sess_options=session_options(spin))
        app.prepare(ctx_id=-1, det_size=DET_SIZE)
    finally:
        logger.removeHandler(records)
        logger.setLevel(old[0])
        logger.propagate = old[1]
    loaded = [m for m in records.messages if m.startswith("find model:")]
    for task, (name, _) in IF_FILES.items():
        staged = str(pack / name)
        if not any(m.startswith(f"find model: {staged} {task} ") for m in loaded):
            raise SystemExit(f"InsightFace did not log loading {staged} as {task}; log: {records.messages}")
        if app.models[task].model_file != staged:
            raise SystemExit(f"InsightFace {task} model is {app.models[task].model_file}, expected {staged}")
    if sorted(app.models) != sorted(IF_FILES):
        raise SystemExit(f"InsightFace loaded tasks {sorted(app.models)}, expected {sorted(IF_FILES)}")
    return app, loaded


def insightface_enroll(app: Any, images: list[Path]) -> tuple[list[str], np.ndarray]:
    """Names (file stems) and unit embeddings ``[n,512]`` of the largest face of each photo."""
    names, embs = [], []
    for path in images:
        faces = app.get(read_image(path))
        if not faces:
            raise SystemExit(f"InsightFace found no face in {path}")
        largest = max(faces, key=lambda f: float((f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1])))
        names.append(path.stem)
        embs.append(largest.normed_embedding)
    return names, np.stack(embs).astype(np.float32)


def run_insightface(app: Any, frames: list[Frame], names: list[str], templates: np.ndarray,
                    threshold: float) -> RoundResult:
    matches: list[tuple[int, int, float]] = []  # (identity index, frame, similarity)
    faces = 0
    t0 = time.perf_counter()
    for f in frames:
        for face in app.get(f.image):
            faces += 1
            sims = templates @ face.normed_embedding
            j = int(np.argmax(sims))
            if sims[j] >= threshold:
                matches.append((j, f.index, float(sims[j])))
    seconds = time.perf_counter() - t0
    found: dict[str, IdentityHits] = {}
    for j, frame, sim in matches:
        found.setdefault(names[j], IdentityHits()).add(frame, frame, sim)
    return RoundResult(seconds, len(frames), faces, faces, faces, found)


# ---- the comparison ------------------------------------------------------------------------------
def median_round(rounds: list[RoundResult]) -> RoundResult:
    return sorted(rounds, key=lambda r: r.fps)[len(rounds) // 2]


def same_answers(rounds: list[RoundResult]) -> bool:
    """Every pass found the same identities (the pipelines are deterministic; a sanity check)."""
    return all(sorted(r.identities) == sorted(rounds[0].identities) for r in rounds)


def side_summary(rounds: list[RoundResult], det_input: tuple[int, int]) -> dict[str, Any]:
    med = median_round(rounds)
    return {
        "fps_median": statistics.median(r.fps for r in rounds),
        "ms_per_frame_median": statistics.median(r.seconds * 1000 / r.frames for r in rounds),
        "fps_rounds": [round(r.fps, 2) for r in rounds],
        "detector_input": list(det_input),
        "faces_seen": med.faces_seen,
        "faces_embedded": med.faces_embedded,
        "recognizer_calls": med.recognizer_calls,
        "identities": sorted(med.identities),
        "identity_hits": {k: asdict(v) for k, v in sorted(med.identities.items())},
        "same_identities_every_round": same_answers(rounds),
        **med.extra,
    }


def git_revision() -> str | None:
    """The checkout measured (facefleet is installed editable from it), ``+dirty`` if modified."""
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty=+dirty"],
                             capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev or None


def environment(load_before: tuple[float, ...], spin: bool) -> dict[str, Any]:
    import insightface
    import onnxruntime

    return {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "facefleet": facefleet_version, "git": git_revision(),
            "onnxruntime": onnxruntime.__version__, "insightface": insightface.__version__,
            "ort_threads": f"default thread count, spinning {'on' if spin else 'off'} on both sides",
            "loadavg_1m_before": load_before[0]}


def compare(args: argparse.Namespace) -> dict[str, Any]:
    assets: Path = args.assets
    load_before = os.getloadavg()  # other work on the machine makes every figure noisy: recorded, not hidden
    frames = decode_video(assets / VIDEO)
    h, w = frames[0].image.shape[:2]
    with tempfile.TemporaryDirectory(prefix="facefleet-ifbench-") as tmp:
        spin = args.spin == "on"
        cfg, models, index = facefleet_setup(assets, Path(tmp) / "gallery", spin)
        pack = stage_insightface_models(assets, Path(tmp) / "insightface")
        app, loaded = insightface_app(Path(tmp) / "insightface", pack, spin)
        threshold = new_pipeline(cfg, models, index).threshold
        names, templates = insightface_enroll(app, [assets / r for r in ENROLL])

        warm = frames[:args.warmup]
        run_facefleet(new_pipeline(cfg, models, index), warm)
        run_insightface(app, warm, names, templates, threshold)
        ff_rounds: list[RoundResult] = []
        if_rounds: list[RoundResult] = []
        for r in range(args.rounds):  # alternate which side goes first
            order = ("if", "ff") if r % 2 == 0 else ("ff", "if")
            for side in order:
                if side == "ff":
                    ff_rounds.append(run_facefleet(new_pipeline(cfg, models, index), frames))
                else:
                    if_rounds.append(run_insightface(app, frames, names, templates, threshold))

        enroll_cos = {n: float(templates[i] @ index.templates[index.names.index(n)]) for i, n in enumerate(names)}
        ff = side_summary(ff_rounds, models.detector.input_size_for(w, h))
        ins = side_summary(if_rounds, app.det_model.input_size)
        models.close()
    return {
        "video": {"file": VIDEO, "frames": len(frames), "width": w, "height": h},
        "rounds": args.rounds,
        "onnxruntime_spinning": args.spin,
        "warmup_frames": len(warm),
        "threshold": threshold,
        "enrolled": names,
        "enrollment_cosine_facefleet_vs_insightface": enroll_cos,
        "insightface_loaded": loaded,
        "facefleet": ff,
        "insightface": ins,
        "ratio_fps_facefleet_over_insightface": ff["fps_median"] / ins["fps_median"],
        "same_people_found": ff["identities"] == ins["identities"],
        "environment": environment(load_before, args.spin == "on"),
    }


# ---- output --------------------------------------------------------------------------------------
def _hits(side: dict[str, Any], unit: str) -> list[str]:
    return [f"  {name}: {h['count']} {unit}, frames {h['first_frame']}-{h['last_frame']}, max cosine {h['max_similarity']:.3f}"
            for name, h in side["identity_hits"].items()] or ["  (nobody)"]


def format_report(r: dict[str, Any]) -> str:
    ff, ins = r["facefleet"], r["insightface"]
    v, env = r["video"], r["environment"]
    rows = [
        ("fps (median)", f"{ff['fps_median']:.1f}", f"{ins['fps_median']:.1f}"),
        ("ms/frame (median)", f"{ff['ms_per_frame_median']:.2f}", f"{ins['ms_per_frame_median']:.2f}"),
        ("fps per round", ", ".join(f"{x:.1f}" for x in ff["fps_rounds"]), ", ".join(f"{x:.1f}" for x in ins["fps_rounds"])),
        ("detector input", "x".join(map(str, ff["detector_input"])), "x".join(map(str, ins["detector_input"]))),
        ("faces seen", str(ff["faces_seen"]), str(ins["faces_seen"])),
        ("faces embedded", str(ff["faces_embedded"]), str(ins["faces_embedded"])),
        ("recognizer calls", str(ff["recognizer_calls"]), str(ins["recognizer_calls"])),
        ("identities found", ", ".join(ff["identities"]) or "-", ", ".join(ins["identities"]) or "-"),
    ]
    lines = [
        f"facefleet vs InsightFace FaceAnalysis ({IF_PACK}: det_500m + w600k_mbf fp32)",
        f"video {v['file']}: {v['frames']} frames {v['width']}x{v['height']}, decoded up front; "
        f"{r['rounds']} alternating rounds per side after {r['warmup_frames']} warm-up frames",
        f"facefleet {env['facefleet']} (git {env['git']}), "
        f"onnxruntime {env['onnxruntime']} CPU ({env['ort_threads']}, {env['cpus']} CPUs), insightface {env['insightface']}, "
        f"python {env['python']}; load average (1 min) before the run {env['loadavg_1m_before']:.2f}",
        f"match threshold {r['threshold']} (cosine); insightface loaded: "
        + "; ".join(m.removeprefix("find model: ") for m in r["insightface_loaded"]),
        "",
        f"{'':<20}{'facefleet':>28}{'insightface':>28}",
        *(f"{a:<20}{b:>28}{c:>28}" for a, b, c in rows),
        "",
        f"ratio facefleet/insightface: {r['ratio_fps_facefleet_over_insightface']:.2f}x fps",
        f"same people found: {'yes' if r['same_people_found'] else 'NO'}",
        f"facefleet embedded {ff['faces_embedded']} of {ff['faces_seen']} faces seen "
        f"({100 * ff['faces_embedded'] / max(ff['faces_seen'], 1):.0f}%); "
        f"{ff['events']} events, {ff['unknown_events']} unknown",
        "facefleet identified tracks (first frame to decision frame):", *_hits(ff, "track(s)"),
        "insightface matched faces:", *_hits(ins, "face-frame(s)"),
        "enrollment embeddings, cosine facefleet vs insightface: "
        + ", ".join(f"{n} {c:.3f}" for n, c in r["enrollment_cosine_facefleet_vs_insightface"].items()),
    ]
    if not (ff["same_identities_every_round"] and ins["same_identities_every_round"]):
        lines.append("WARNING: identities found differ between rounds")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    result = compare(args)
    print(format_report(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

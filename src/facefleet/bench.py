"""Benchmarks: measured figures, never asserted in tests.

``host overhead`` is all pipeline wall time that is not spent inside the runtime's inference
call (letterbox, decode, NMS, alignment, tracking, matching, event making).
"""

from __future__ import annotations

import time

import numpy as np

from facefleet.recognition.gallery import GalleryIndex
from facefleet.recognition.pipeline import FacePipeline
from facefleet.sources import Frame, open_source


def _frames(source: str, repeat: int):
    src = open_source(source)
    try:
        frames = list(src)
    finally:
        src.close()
    if repeat > 1 or (len(frames) == 1 and frames[0].still):
        # an image fed as a video: the same frame again and again (a camera on a still scene)
        one = frames[0]
        frames = [Frame(i, one.image, None) for i in range(max(repeat, 1))]
    return frames


def bench_pipeline(pipeline: FacePipeline, source: str, repeat: int = 1) -> dict:
    frames = _frames(source, repeat)  # decoded up front: the benchmark measures the pipeline
    det, rec = pipeline.detector.model, pipeline.recognizer.model
    det0, rec0 = det.infer_seconds, rec.infer_seconds
    calls0 = rec.calls
    events = 0
    t0 = time.perf_counter()
    for f in frames:
        events += len(pipeline.process(f))
    events += len(pipeline.flush())
    wall = time.perf_counter() - t0
    n = len(frames)
    det_s, rec_s = det.infer_seconds - det0, rec.infer_seconds - rec0
    c = pipeline.counters
    return {
        "source": source,
        "frames": n,
        "fps": n / wall,
        "ms_per_frame": wall * 1000 / n,
        "stage_ms": {k: round(v, 3) for k, v in pipeline.clock.mean_ms().items()},
        "inference_ms": {"detector": det_s * 1000 / n, "recognizer": rec_s * 1000 / n},
        "host_overhead_ms": (wall - det_s - rec_s) * 1000 / n,
        "faces_seen": c.faces,
        "faces_per_frame": c.faces / n,
        "faces_embedded": c.embedded,
        "recognizer_calls": rec.calls - calls0,
        "events": events,
        "models": pipeline.models.model_dump(),
    }


def bench_search(identities: int, dim: int = 512, queries: int = 5, repeats: int = 20, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    t = rng.standard_normal((identities, dim), dtype=np.float32)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    index = GalleryIndex("bench", [f"id{i}" for i in range(identities)], t)
    q = t[rng.choice(identities, queries, replace=False)] + 0.05 * rng.standard_normal((queries, dim), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    index.search(q, 5)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        index.search(q, 5)
        times.append((time.perf_counter() - t0) * 1000)
    return {"identities": identities, "dim": dim, "queries_per_call": queries,
            "ms_median": float(np.median(times)), "ms_p90": float(np.percentile(times, 90)),
            "ms_min": float(np.min(times))}


def format_result(r: dict) -> str:
    if "runs" in r:
        lines = []
        for name, run in r["runs"].items():
            plan = run["plan"]
            where = "tiles" if plan["grid"] or plan["zones"] else "letterboxed full frame only"
            lines.append(f"{name} ({where}), {run['identities']} identities, threshold {run['threshold']:.2f}:")
            for h in run["heights"]:
                pn = f"{h['pre_norm_mean']:.1f}" if h["pre_norm_mean"] is not None else "-"
                small = f"  found, too small to recognize {h['too_small']}" if h.get("too_small") else ""
                lines.append(f"  {h['face_px']:>5.0f}px  det {h['detection_rate']:.2f}  rank1 {h['rank1']:.2f}  "
                             f"match {h['match_rate']:.2f}  FA {h['false_accepts']}  pre_norm {pn}  {h['fps']:.1f} fps{small}")
            lines += [f"  advice: {a}" for a in run.get("advice", [])]
        lines.append(f"wrote {r['json']} and {r['png']}")
        return "\n".join(lines)
    if "identities" in r:
        return (f"gallery search {r['identities']} x {r['dim']}, {r['queries_per_call']} queries/call: "
                f"median {r['ms_median']:.2f} ms, p90 {r['ms_p90']:.2f} ms")
    stages = ", ".join(f"{k} {v:.2f}" for k, v in r["stage_ms"].items())
    return (f"{r['frames']} frames: {r['fps']:.1f} fps ({r['ms_per_frame']:.2f} ms/frame)\n"
            f"stages ms/frame: {stages}\n"
            f"inference ms/frame: detector {r['inference_ms']['detector']:.2f}, recognizer {r['inference_ms']['recognizer']:.2f}\n"
            f"host overhead: {r['host_overhead_ms']:.2f} ms/frame\n"
            f"faces seen {r['faces_seen']} ({r['faces_per_frame']:.2f}/frame), embedded {r['faces_embedded']} "
            f"in {r['recognizer_calls']} recognizer calls; {r['events']} events")

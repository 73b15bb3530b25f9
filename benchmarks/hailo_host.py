"""Host time per frame on the Hailo path, without the device's compute, at 1 and 5 faces.

Why: at full rate a Hailo-8 takes a new scrfd_10g frame every ~2.3 ms (zoo: 440 FPS) and an
arcface_mobilefacenet face every ~0.19 ms (5191 FPS). Those are THROUGHPUT intervals (the zoo's
FPS is measured pipelined, many frames in flight), not the latency of one frame, which is longer:
measure it on the Pi with ``hailortcli run <hef> --measure-latency`` and pass it with
``--device-latency-ms``. The host work per frame (letterbox, BGR->RGB into the input buffer,
run_async/wait, SCRFD decode + NMS, alignment, embedding normalization) is compared with the
throughput interval (goal: < 50 %), or the chip idles while Python works.

Without a device this runs through the ``hailo_platform`` test double (tests/hailo/doubles) on
zoo-shaped HEFs: ``scrfd_10g`` (its vstream names and 80/40/20 grids; the ONNX twin is
SCRFD-2.5G raw heads, which has the same heads) and ``arcface_mobilefacenet`` (512-d ``fc1``; twin
w600k_mbf). The double's twin compute is timed (``DOUBLE.compute_seconds``) and subtracted, so
what remains is facefleet's host code plus HailoRT-API overhead as the double imitates it. With
``--hef-det/--hef-rec`` (HEFs with sidecar specs) and the real ``hailo_platform`` on a Pi, the
model's ``infer_seconds`` (time waiting for the device) is subtracted instead.

    .venv/bin/python benchmarks/hailo_host.py [--frames 120] [--faces 1 5] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
# Model Zoo v2.18, Hailo-8 (hailort_api.md §10): pipelined throughput, NOT one frame's latency
ZOO_FPS = {"scrfd_10g": 440.0, "arcface_mobilefacenet": 5191.0}
SCRFD_10G_BOX_SCALES = {"conv42": 0.8807, "conv50": 0.9315, "conv57": 1.1424}  # the zoo HEF's Mul is inside
# scrfd_10g zoo vstream names (hailort_api.md §8): scores, boxes, landmarks per stride 8/16/32
SCRFD_10G = {
    "conv41": ("439", (80, 80, 2)), "conv49": ("477", (40, 40, 2)), "conv56": ("515", (20, 20, 2)),
    "conv42": ("440", (80, 80, 8)), "conv50": ("478", (40, 40, 8)), "conv57": ("516", (20, 20, 8)),
    "conv43": ("442", (80, 80, 20)), "conv51": ("480", (40, 40, 20)), "conv58": ("518", (20, 20, 20)),
}


def _use_double() -> object:
    """Import the test double of hailo_platform (tests/hailo/doubles) and the HEF writer."""
    sys.path.insert(0, str(REPO / "tests" / "hailo" / "doubles"))
    sys.path.insert(0, str(REPO / "tests" / "hailo"))
    from hailo_platform.pyhailort import pyhailort

    return pyhailort.DOUBLE


def _double_hefs(assets: Path, frames: list[np.ndarray], out: Path) -> tuple[Path, Path]:
    from hailo_hefs import ARCFACE, TWIN_NORM, catalog_spec, with_sidecar, write_hef

    from facefleet.vision.letterbox import letterbox

    calib = np.stack([letterbox(frames[i], 640, 640)[0][..., ::-1] for i in (0, len(frames) // 2)])
    det = write_hef(out / "scrfd_10g.hef", "scrfd_10g", assets / "models" / "scrfd_2.5g_rawheads.onnx",
                    TWIN_NORM["scrfd"], (640, 640, 3), SCRFD_10G, calib, scales=SCRFD_10G_BOX_SCALES)
    rec = write_hef(out / "arcface_mobilefacenet.hef", "arcface_mobilefacenet", assets / "models" / "w600k_mbf_fp32.onnx",
                    TWIN_NORM["arcface"], (112, 112, 3), ARCFACE,
                    np.full((2, 112, 112, 3), 127, np.uint8) + np.arange(2, dtype=np.uint8)[:, None, None, None] * 60)
    with_sidecar(det, catalog_spec("scrfd_2.5g_rawheads"), name="scrfd_10g")
    with_sidecar(rec, catalog_spec("w600k_mbf_fp32"), name="arcface_mobilefacenet")
    return det, rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=120, help="frames per face count (default 120)")
    ap.add_argument("--faces", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--hef-det", type=Path, help="a real detector HEF (sidecar spec beside it)")
    ap.add_argument("--hef-rec", type=Path, help="a real recognizer HEF (sidecar spec beside it)")
    ap.add_argument("--tiles", action="store_true",
                    help="also: host time per detection tile (1280x720 frames, grid of 640x640 tiles, issue 7)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--device-latency-ms", type=float, nargs=2, metavar=("DET", "PER_FACE"),
                    help="measured one-frame device latency: detector ms and recognizer ms per face "
                         "(hailortcli run HEF --measure-latency); the zoo FPS is throughput, not latency")
    args = ap.parse_args(argv)

    from facefleet.assets import assets_dir
    from facefleet.modelspec import resolve_model
    from facefleet.recognition.models import Detector, Recognizer
    from facefleet.runtime.hailo import HailoBackend
    from facefleet.vision.align import align_faces

    assets = assets_dir()
    cap = cv2.VideoCapture(str(assets / "video" / "hamilton_clip.mp4"))
    frames = []
    while len(frames) < 275:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    double = None
    tmp = tempfile.TemporaryDirectory()
    if args.hef_det and args.hef_rec:
        det_path, rec_path = args.hef_det, args.hef_rec
    else:
        double = _use_double()
        det_path, rec_path = _double_hefs(assets, frames, Path(tmp.name))

    backend = HailoBackend()
    det = Detector(backend.load(resolve_model(det_path, kind="detector")))
    rec = Recognizer(backend.load(resolve_model(rec_path, kind="recognizer")))
    with_faces = [f for f in frames if len(det.detect(f)) > 0]
    load = os.getloadavg()

    def device_seconds() -> float:
        if double is not None:
            return double.compute_seconds
        return det.model.infer_seconds + rec.model.infer_seconds

    rows = []
    for k in args.faces:
        host, wall, dev, ours = [], [], [], []
        for i in range(args.warmup + args.frames):
            frame = with_faces[i % len(with_faces)]
            d0, w0, t0 = device_seconds(), det.model.infer_seconds + rec.model.infer_seconds, time.perf_counter()
            dets = det.detect(frame)
            kps = np.resize(dets.kps, (k, 5, 2))  # this frame's faces, repeated up to k
            rec.embed(align_faces(frame, kps, 112))
            t1, d1, w1 = time.perf_counter(), device_seconds(), det.model.infer_seconds + rec.model.infer_seconds
            if i >= args.warmup:
                wall.append(t1 - t0)
                dev.append(d1 - d0)
                host.append((t1 - t0) - (d1 - d0))
                ours.append((t1 - t0) - (w1 - w0))
        budget = 1000.0 / ZOO_FPS["scrfd_10g"] + k * 1000.0 / ZOO_FPS["arcface_mobilefacenet"]  # throughput interval
        h = statistics.median(host) * 1e3
        latency = args.device_latency_ms[0] + k * args.device_latency_ms[1] if args.device_latency_ms else None
        rows.append({"faces": k, "host_ms_median": round(h, 3), "host_ms_p90": round(float(np.percentile(host, 90)) * 1e3, 3),
                     "facefleet_ms_median": round(statistics.median(ours) * 1e3, 3),
                     "wall_ms_median": round(statistics.median(wall) * 1e3, 3),
                     "subtracted_ms_median": round(statistics.median(dev) * 1e3, 3),
                     "zoo_interval_ms": round(budget, 3), "host_over_interval": round(h / budget, 3),
                     "device_latency_ms": latency, "device_wait_ms_median": None if double is not None else
                     round(statistics.median(dev) * 1e3, 3)})
    tiles = _tile_rows(det, with_faces, device_seconds, args) if args.tiles else None
    backend.close()
    tmp.cleanup()
    mode = "double (twin compute subtracted)" if double is not None else "hailo_platform (device wait subtracted)"
    print(f"Hailo path host time per frame, {mode}; load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("host = wall - subtracted; facefleet = wall - whole HailoRT calls (run_async..wait), i.e. our code alone")
    print("zoo 1/FPS = the chip's pipelined throughput interval (not latency); latency = --device-latency-ms "
          "(hailortcli run --measure-latency)")
    print(f"{'faces':>5} {'host ms':>8} {'p90':>7} {'facefleet':>9} {'wall ms':>8} {'subtracted':>10} {'zoo 1/FPS':>10} "
          f"{'host/int':>8} {'latency':>8}")
    for r in rows:
        lat = f"{r['device_latency_ms']:>8.3f}" if r["device_latency_ms"] is not None else f"{'-':>8}"
        print(f"{r['faces']:>5} {r['host_ms_median']:>8.3f} {r['host_ms_p90']:>7.3f} {r['facefleet_ms_median']:>9.3f} "
              f"{r['wall_ms_median']:>8.3f} "
              f"{r['subtracted_ms_median']:>10.3f} {r['zoo_interval_ms']:>10.3f} {r['host_over_interval']:>8.2f} {lat}")
    if tiles:
        print(f"detection on 1280x720 frames: full frame only {tiles['full_host_ms']:.3f} ms host; with "
              f"{tiles['tiles']} tiles of 640x640 {tiles['tiled_host_ms']:.3f} ms host -> {tiles['host_ms_per_tile']:.3f} ms "
              f"host per tile (Hailo-8 zoo throughput interval per tile: {1000.0 / ZOO_FPS['scrfd_10g']:.3f} ms)")
    if args.json:
        args.json.write_text(json.dumps({"mode": mode, "loadavg": load, "rows": rows, "tiles": tiles}, indent=1))
    return 0


def _tile_rows(det, frames: list[np.ndarray], device_seconds, args) -> dict:
    """Host time of detection per frame with and without a tiling plan; the difference per tile."""
    from facefleet.vision.tiling import DetectionPlan

    plan = DetectionPlan(grid=True, overlap=96)
    big = [cv2.resize(f, (1280, 720), interpolation=cv2.INTER_LINEAR) for f in frames[:40]]
    n_tiles = len(plan.windows(1280, 720, 640))
    out = {}
    for label, p in (("full", None), ("tiled", plan)):
        host = []
        for i in range(args.warmup + args.frames):
            frame = big[i % len(big)]
            d0, t0 = device_seconds(), time.perf_counter()
            det.detect(frame, p)
            t1, d1 = time.perf_counter(), device_seconds()
            if i >= args.warmup:
                host.append((t1 - t0) - (d1 - d0))
        out[label] = statistics.median(host) * 1e3
    return {"tiles": n_tiles, "full_host_ms": round(out["full"], 3), "tiled_host_ms": round(out["tiled"], 3),
            "host_ms_per_tile": round((out["tiled"] - out["full"]) / n_tiles, 3)}


if __name__ == "__main__":
    raise SystemExit(main())

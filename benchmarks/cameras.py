"""N cameras through the component, in real time: aggregate fps, drops, capture-to-event latency.

Each camera plays ``--source`` (a video file) as a LIVE camera paced at ``--fps`` (frame i is
available at start + i/fps whether or not the pipeline is ready; the camera's reader keeps only
the newest frame, older ones are dropped and counted). ``--fps 0`` reads the file frame by frame
as fast as the pipeline goes (unpaced: the throughput figure). ``--mode component`` (default)
runs the cameras IN the component (``facefleet.component.service.Component``: its camera
threads, ServingSlot, models, gallery index, spool and publisher; a counting sink instead of
IPC; only how a camera is opened is replaced, by the paced file). ``--mode serialized`` is the
runtime before issue 13: one process-wide lock around every camera's frame.

``--backend hailo-timed`` stands in for a Hailo-8 without one: the ONNX twin's outputs are
computed once (a warm pass over every frame and every face of the file) and replayed, and each
call waits for a simulated device: one device shared by all models (ROUND_ROBIN), busy n/FPS
per call of n images (zoo throughput), result ready ``latency`` after the call starts work.
Figures (``ZOO``): Hailo Model Zoo v2.18 HAILO8 tables via shared/reference/hailort_api.md §10
(scrfd_2.5g 1058 FPS, scrfd_500m 1332 FPS, arcface_mobilefacenet 5191 FPS at batch 1:
THROUGHPUT). The zoo gives no latency; ``LATENCY_PER_FRAME_TIME`` = 2.8 comes from the one
hailortcli benchmark found (community.hailo.ai/t/82: yolov5m_wo_spp_60p, 218.1 FPS hw_only,
12.84 ms HW latency: latency = 2.8 / FPS). Not modelled: scheduler model-switch cost (not
established, hailort_api.md §10), PCIe transfer (Pi 5 gen2/gen3).

    .venv/bin/python benchmarks/cameras.py --cameras 2 --fps 0 --json
    .venv/bin/python benchmarks/cameras.py --cameras 4 --fps 15 --backend hailo-timed --seconds 20 --json

host_ms_per_frame is the pipeline's wall time per processed frame minus the time it waited for
the (simulated) device (on the CPU backend everything is host time); with several cameras it
includes time the thread waited for the GIL or a core, so host_cpu_ms_per_frame gives the camera
threads' CPU time too (onnxruntime's own threads not counted). rss_mb is the process RSS
at the end (models, N readers and pipelines).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from facefleet.assets import assets_dir  # noqa: E402
from facefleet.capture.paced import PacedSource  # noqa: E402
from facefleet.capture.reader import CameraReader  # noqa: E402
from facefleet.capture.stats import CameraStats  # noqa: E402
from facefleet.runtime import BackendPool  # noqa: E402
from facefleet.sources import open_source  # noqa: E402

log = logging.getLogger("bench.cameras")

# model spec name -> (zoo network, Hailo-8 FPS at batch 1 = device throughput)
ZOO = {
    "scrfd_2.5g_kps": ("scrfd_2.5g", 1058.0), "scrfd_2.5g_rawheads": ("scrfd_2.5g", 1058.0),
    "det_500m": ("scrfd_500m", 1332.0), "scrfd_500m_kps": ("scrfd_500m", 1332.0),
    "w600k_mbf_fp32": ("arcface_mobilefacenet", 5191.0), "w600k_mbf_int8dyn": ("arcface_mobilefacenet", 5191.0),
}
LATENCY_PER_FRAME_TIME = 2.8  # HW latency / (1/FPS), hailortcli on yolov5m (see the docstring)


# ---- the simulated Hailo-8 -----------------------------------------------------------------------
class Device:
    """One accelerator shared by every model: work is queued on its clock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.free_at = 0.0
        self.busy_s = 0.0
        self.waited_s = 0.0  # all threads: time callers waited for results
        self.timed = False
        self.local = threading.local()

    def run(self, n: int, fps: float) -> None:
        per = 1.0 / fps
        with self.lock:
            now = time.perf_counter()
            start = max(now, self.free_at)
            self.free_at = start + n * per
            self.busy_s += n * per
        done = start + n * per + (LATENCY_PER_FRAME_TIME - 1) * per
        wait = done - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        self.local.waited = getattr(self.local, "waited", 0.0) + max(done - now, 0.0)
        with self.lock:
            self.waited_s += max(done - now, 0.0)


def _key(a: np.ndarray) -> bytes:
    """Cheap content key of one image (a strided sample): the twin's outputs are looked up by it."""
    return np.ascontiguousarray(a[::7, ::5]).tobytes() + bytes(str(a.shape), "ascii")


class TimedModel:
    """LoadedModel: replays the ONNX twin's outputs, waits for the simulated device."""

    def __init__(self, inner, device: Device):
        self.inner, self.device, self.spec = inner, device, inner.spec
        if self.spec.name not in ZOO:
            raise SystemExit(f"hailo-timed: no zoo figure for model {self.spec.name}; known: {sorted(ZOO)}")
        self.zoo, self.fps = ZOO[self.spec.name]
        self.cache: dict[bytes, dict[str, np.ndarray]] = {}
        self.misses = 0
        self.infer_seconds, self.calls = 0.0, 0
        self._lock = threading.Lock()

    def input_size(self):
        return self.inner.input_size()

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        per_image = [self.cache.get(_key(im)) for im in images]
        if any(o is None for o in per_image):
            with self._lock:  # the twin computes per image so every crop is cached on its own
                for i, im in enumerate(images):
                    if per_image[i] is None:
                        per_image[i] = self.cache[_key(im)] = self.inner.run(im[None])
                        if self.device.timed:
                            self.misses += 1
        self.calls += 1
        if self.device.timed:
            t0 = time.perf_counter()
            self.device.run(len(images), self.fps)
            self.infer_seconds += time.perf_counter() - t0
        if len(images) == 1:
            return per_image[0]
        return {k: np.concatenate([o[k] for o in per_image]) for k in per_image[0]}

    def close(self) -> None:
        self.inner.close()


class TimedPool(BackendPool):
    """The component's backend pool with the onnx backend wrapped in the timed device."""

    def __init__(self, device: Device):
        super().__init__()
        self.device = device

    def get(self, name: str):
        if name not in self._backends:
            from facefleet.runtime.onnx import OnnxBackend

            inner, device = OnnxBackend(), self.device

            class Timed:
                name = "hailo-timed"

                def load(self, model):
                    return TimedModel(inner.load(model), device)

                def close(self):
                    inner.close()

            self._backends[name] = Timed()
        return self._backends[name]


# ---- component plumbing ------------------------------------------------------------------------------
class _Ipc:
    """The few GreengrassCoreIPCClientV2 calls Component.start makes; nothing else is used here."""

    def __init__(self, config: dict):
        self.config = config

    def get_configuration(self, key_path=None, component_name=None):
        return type("R", (), {"value": json.loads(json.dumps(self.config))})()

    def update_state(self, state=None):
        pass

    def __getattr__(self, name):  # subscriptions: accepted, never fired
        return lambda *a, **k: (None, None)


class CountingSink:
    def __init__(self):
        self.events = 0

    def send(self, items):
        self.events += len(items)
        return [True] * len(items)

    def close(self):
        pass


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# ---- the run ------------------------------------------------------------------------------------------
def warm(comp, source: str) -> None:
    """Every frame, every face of the file through the twin once (cache for the replay)."""
    from facefleet.vision.align import align_faces

    det, rec = comp.models.detector, comp.models.recognizer
    plan = comp.cfg.detection.plan
    for frame in open_source(source):
        d = det.detect(frame.image, plan)
        if len(d):
            rec.embed(align_faces(frame.image, d.kps, rec.size))


def camera_pipelines(comp, n: int) -> list:
    from facefleet.recognition.pipeline import FacePipeline

    return [FacePipeline(comp.models.detector.fork(), comp.models.recognizer, comp.index, comp.cfg, camera_id=f"cam{i}")
            for i in range(n)]


class _Empty:
    """A finite source with no frames: a camera whose paced run is over ends (no reconnect)."""

    live, name, skipped, reconnects = False, "done", 0, 0

    def __iter__(self):
        return iter(())

    def close(self):
        pass


class Player:
    """Opens the component's cameras as paced (or looped) files; the run starts when ``go`` is set."""

    def __init__(self, source: str, args):
        self.source, self.args = source, args
        self.go = threading.Event()
        self.start = 0.0
        self.opened: dict[str, int] = {}
        self.stats: dict[str, CameraStats] = {}
        self.lock = threading.Lock()

    def open(self, cam, stats: CameraStats):
        args = self.args
        with self.lock:
            n = self.opened.get(cam.id, 0)
            self.opened[cam.id] = n + 1
            self.stats[cam.id] = stats
        if n:  # the paced file ended: this camera is done
            return CameraReader(_Empty(), stats=stats).start()
        self.go.wait()
        i = int(cam.id[3:])
        offset = i / (args.cameras * args.fps) if args.fps > 0 else 0.0  # unsynchronised cameras
        time.sleep(max(self.start + offset - time.monotonic(), 0))
        src = PacedSource(lambda: open_source(self.source), args.fps, seconds=args.seconds) if args.fps > 0 \
            else _Looped(self.source, args.loops)
        return CameraReader(src, stats=stats).start()

    def play_component(self, comp, device: Device) -> dict:
        self.start = time.monotonic() + 0.5
        self.go.set()
        while not comp.finished:
            time.sleep(0.05)
        seconds = time.monotonic() - self.start
        comp.forwarder.drain(10)
        workers = list(comp.cameras.values())
        stats = [self.stats[w.cam.id] for w in workers]
        busy_s = sum(sum(w.pipeline.clock.seconds.values()) for w in workers)
        return _report(seconds, stats, comp, host_s=busy_s - device.waited_s, cpu_s=None, waited_s=device.waited_s, errors=[])


def run(args) -> dict:
    assets = Path(args.assets) if args.assets else assets_dir()
    source = str(Path(args.source) if args.source else assets / "video" / "hamilton_clip.mp4")
    detector = args.detector or ("scrfd_2.5g_kps.onnx" if args.backend == "hailo-timed" else "det_500m.onnx")
    load_before = os.getloadavg()
    device = Device()
    with tempfile.TemporaryDirectory(prefix="bench-cameras-") as tmp:
        work = Path(tmp)
        config = {"models": {"backend": "onnx", "detector": detector, "recognizer": args.recognizer},
                  "cameras": [], "status_interval_s": 86400, "spool": {"path": "spool.sqlite"}}
        _enroll(work / "gallery", assets, detector)
        from facefleet.component.service import Component

        sink = CountingSink()
        player = Player(source, args)
        if args.mode == "component":
            config["cameras"] = [{"id": f"cam{i}", "source": source, "detect_fps": None} for i in range(args.cameras)]
        comp = Component(_Ipc(config), work, artifacts=assets / "models", thing="bench", environ={}, sink=sink,
                         opener=player.open)
        if args.backend == "hailo-timed":
            comp.backends = TimedPool(device)
        comp.start()
        try:
            if args.backend == "hailo-timed":
                warm(comp, source)
                device.timed = True
            rss_models = _rss_mb()
            if args.mode == "component":
                result = player.play_component(comp, device)
            else:
                result = _play(comp, camera_pipelines(comp, args.cameras), source, args, device)
        finally:
            comp.stop()
    result.update({
        "cameras": args.cameras, "fps_target": args.fps, "backend": args.backend, "mode": args.mode,
        "detector": detector, "recognizer": args.recognizer, "source": source,
        "rss_mb_after_models": round(rss_models, 1),
        "rss_mb_per_camera": round((result["rss_mb"] - rss_models) / args.cameras, 1),
        "rss_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
    })
    if args.backend == "hailo-timed":
        m = comp.models
        result["device"] = {"utilisation": round(device.busy_s / result["seconds"], 3),
                            "replay_misses": m.detector.model.misses + m.recognizer.model.misses,
                            "replay_cache_mb": round(sum(v.nbytes for mm in (m.detector.model, m.recognizer.model)
                                                         for o in mm.cache.values() for v in o.values()) / 2**20, 1),
                            "figures": {mm.spec.name: {"zoo": mm.zoo, "throughput_fps": mm.fps,
                                                       "latency_ms": round(LATENCY_PER_FRAME_TIME * 1000 / mm.fps, 3)}
                                        for mm in (m.detector.model, m.recognizer.model)}}
    return result


def _enroll(gallery: Path, assets: Path, detector: str) -> None:
    from facefleet.config import PipelineConfig
    from facefleet.recognition.gallery import Gallery
    from facefleet.recognition.loader import enroll_images, load_detector
    from facefleet.runtime.onnx import OnnxBackend

    det = load_detector(OnnxBackend(), assets / "models" / detector, PipelineConfig())
    g = Gallery.open(gallery, create=True)
    for img in sorted((assets / "enroll").iterdir()):
        enroll_images(g, det, img.stem, [img])
    det.model.close()


def _play(comp, pipelines: list, source: str, args, device: Device) -> dict:
    n = len(pipelines)
    stats = [CameraStats(window=1_000_000) for _ in range(n)]
    proc_s = [0.0] * n
    waited_s = [0.0] * n
    cpu_s = [0.0] * n
    errors: list[str] = []
    lock = threading.Lock()  # serialized: one lock around every camera's frame (before issue 13)
    start = time.monotonic() + 0.5

    def make_source(i: int):
        if args.fps > 0:
            return PacedSource(lambda: open_source(source), args.fps, seconds=args.seconds)
        return _Looped(source, args.loops)

    def camera(i: int) -> None:
        # unsynchronised cameras: start times spread over one frame interval
        offset = i / (n * args.fps) if args.fps > 0 else 0.0
        time.sleep(max(start + offset - time.monotonic(), 0))
        reader = CameraReader(make_source(i), stats=stats[i]).start()
        p = pipelines[i]
        try:
            for frame in reader:
                with lock:
                    t0, c0 = time.perf_counter(), time.thread_time()  # inside the lock: waiting for it is not work
                    w0 = getattr(device.local, "waited", 0.0)
                    events = p.process(frame)
                    proc_s[i] += time.perf_counter() - t0
                    cpu_s[i] += time.thread_time() - c0
                    waited_s[i] += getattr(device.local, "waited", 0.0) - w0
                for ev in events:
                    comp.publish(ev)
            for ev in p.flush():
                comp.publish(ev)
        except Exception as e:  # reported, not raised: the other cameras finish their run
            errors.append(f"cam{i}: {type(e).__name__}: {e}")
        finally:
            reader.close()

    threads = [threading.Thread(target=camera, args=(i,), name=f"cam{i}") for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - start
    comp.forwarder.drain(10)
    return _report(seconds, stats, comp, host_s=sum(proc_s) - sum(waited_s), cpu_s=sum(cpu_s), waited_s=sum(waited_s),
                   errors=errors)


def _report(seconds: float, stats: list, comp, host_s: float, cpu_s: float | None, waited_s: float, errors: list) -> dict:
    """The benchmark's JSON, the same for every mode. ``cpu_s``: CPU time of the camera threads in
    the pipeline (onnxruntime's own threads not included); None where it is not measured per thread."""
    lat = np.concatenate([np.asarray(s.latencies_ms()) for s in stats]) if any(s.processed for s in stats) else np.zeros(0)
    processed = [s.processed for s in stats]
    frames = max(sum(processed), 1)
    return {
        "seconds": round(seconds, 2),
        "total_fps": round(sum(processed) / seconds, 2),
        "per_camera_fps": [round(p / seconds, 2) for p in processed],
        "processed": processed,
        "decoded": [s.decoded for s in stats],
        "dropped": sum(s.dropped for s in stats),
        "dropped_per_camera": [s.dropped for s in stats],
        "latency_ms_p50": round(float(np.percentile(lat, 50)), 1) if lat.size else None,
        "latency_ms_p99": round(float(np.percentile(lat, 99)), 1) if lat.size else None,
        "host_ms_per_frame": round(1000 * host_s / frames, 2),
        "host_cpu_ms_per_frame": round(1000 * cpu_s / frames, 2) if cpu_s is not None else None,
        "device_wait_ms_per_frame": round(1000 * waited_s / frames, 2),
        "events": comp.spool.depth + comp._sink.events,  # spooled + confirmed by the counting sink
        "rss_mb": round(_rss_mb(), 1),
        "errors": errors,
    }


class _Looped:
    """The file read frame by frame, ``loops`` times (unpaced: every frame, nothing dropped)."""

    live = False

    def __init__(self, source: str, loops: int):
        self.source, self.loops, self.name, self.skipped, self.reconnects = source, loops, source, 0, 0
        self._closed = False

    def __iter__(self):
        from dataclasses import replace

        n = 0
        for _ in range(self.loops):
            for frame in open_source(self.source):
                if self._closed:
                    return
                yield replace(frame, index=n, captured=None)
                n += 1

    def close(self):
        self._closed = True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", help="video file (default: shared/assets/video/hamilton_clip.mp4)")
    ap.add_argument("--cameras", type=int, default=1)
    ap.add_argument("--fps", type=float, default=15.0, help="camera rate; 0: unpaced, every frame as fast as possible")
    ap.add_argument("--seconds", type=float, default=20.0, help="paced: run length (the file loops)")
    ap.add_argument("--loops", type=int, default=1, help="unpaced: times each camera reads the file")
    ap.add_argument("--backend", choices=["onnx", "hailo-timed"], default="onnx")
    ap.add_argument("--mode", choices=["component", "serialized"], default="component",
                    help="component: the cameras run in the component (parallel camera threads); serialized: one lock "
                    "around every camera's frame, as before issue 13")
    ap.add_argument("--detector", help="detector file in the assets' models (default: det_500m; hailo-timed: scrfd_2.5g_kps)")
    ap.add_argument("--recognizer", default="w600k_mbf_fp32.onnx")
    ap.add_argument("--assets", help="shared assets folder")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.cameras < 1 or args.fps < 0:
        ap.error("--cameras >= 1 and --fps >= 0")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for k, v in result.items():
            print(f"{k:>26}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``facefleet component ...``: benchmarks of the component's transport and model swap.

    facefleet component bench-spool [--port N | --start-mosquitto] [--events 20000] [--rate 2000]
    facefleet component bench-swap [--repeat 3]
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from facefleet.errors import FacefleetError

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser("component", help="Greengrass component tools (benchmarks)")
    sub = p.add_subparsers(dest="component_command", required=True)
    s = sub.add_parser("bench-spool", help="events/s and publish latency through the durable spool to an MQTT broker")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=1883)
    s.add_argument("--start-mosquitto", action="store_true", help="start a private mosquitto on a free loopback port")
    s.add_argument("--events", type=int, default=20_000, help="events in the burst run")
    s.add_argument("--rate", type=float, default=2000.0, help="events/s offered in the paced (latency) run")
    s.add_argument("--seconds", type=float, default=5.0, help="length of the paced run")
    s.add_argument("--batch", type=int, default=200, help="events in flight per forwarder round")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_bench_spool)
    w = sub.add_parser("bench-swap", help="hot swap time w600k_mbf_fp32 <-> mobilefacenet_128 with a gallery re-embed")
    w.add_argument("--repeat", type=int, default=3)
    w.add_argument("--json", action="store_true")
    w.set_defaults(func=cmd_bench_swap)


def _sample_event(i: int):
    from facefleet.events import MatchEvent, Models, Quality

    return MatchEvent(device="bench", camera_id="cam0", track_id=i, decision="identified", identity="someone", similarity=0.61,
                      threshold=0.3, frame_index=i, first_frame=max(0, i - 10), last_frame=i, bbox=(10.0, 20.0, 110.0, 140.0),
                      quality=Quality(pre_norm=21.5, face_px=120.0, det_score=0.88, evidence_frames=4, evidence_weight=3.2),
                      models=Models(detector="5e4447f50245bbd7", recognizer="c4c390b6b3f1a2aa"))


def _p(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    import numpy as np

    return float(np.percentile(values, q * 100))


class _Mosquitto:
    def __init__(self):
        binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if binary is None:
            raise FacefleetError("mosquitto is not installed (apt-get install mosquitto)")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = tempfile.TemporaryDirectory()
        conf = Path(self.dir.name) / "m.conf"
        # set_tcp_nodelay: without it mosquitto's PUBACKs wait ~40 ms for delayed ACKs (Nagle)
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 0\n"
                        "max_queued_messages 0\nset_tcp_nodelay true\n")
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise FacefleetError("mosquitto did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.dir.cleanup()


def _run_spool(host: str, port: int, n: int, rate: float, seconds: float, batch: int) -> dict:
    from facefleet.events import to_json
    from facefleet.transport.mqtt import MqttSink
    from facefleet.transport.spool import Forwarder, Spool, event_topic

    with tempfile.TemporaryDirectory() as d:
        spool = Spool(Path(d) / "spool.sqlite", max_events=max(n, 100_000) * 2)
        sink = MqttSink(host, port)
        if not sink.connected.wait(10):
            raise FacefleetError(f"cannot connect to the MQTT broker at {host}:{port}")
        fwd = Forwarder(spool, sink, batch=batch).start()
        topic = event_topic("facefleet/{thing}/events/{type}", "bench", "match")
        payloads = [to_json(_sample_event(i)) for i in range(200)]
        try:
            # burst: everything spooled one event at a time as fast as it comes, until all confirmed
            t0 = time.perf_counter()
            for i in range(n):
                spool.put(topic, "match", payloads[i % 200])
            put_s = time.perf_counter() - t0
            if not fwd.drain(300):
                raise FacefleetError("the broker did not confirm every event")
            burst_s = time.perf_counter() - t0
            # paced: the offered rate, latency from spool.put to PUBACK
            fwd.latencies.clear()
            total = int(rate * seconds)
            t1 = time.perf_counter()
            for i in range(total):
                due = t1 + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                spool.put(topic, "match", payloads[i % 200])
            fwd.drain(60)
            paced_s = time.perf_counter() - t1
            lat = [x * 1000 for x in fwd.latencies]
        finally:
            fwd.stop()
            sink.close()
            spool.close()
    return {"events": n, "payload_bytes": len(payloads[0]), "spool_put_per_s": round(n / put_s),
            "events_per_s": round(n / burst_s), "paced_rate": rate, "paced_events": total, "paced_achieved_per_s": round(total / paced_s),
            "latency_ms_p50": round(_p(lat, 0.5), 2), "latency_ms_p99": round(_p(lat, 0.99), 2), "latency_ms_max": round(max(lat), 2)}


def cmd_bench_spool(args) -> int:
    broker = _Mosquitto() if args.start_mosquitto else None
    try:
        port = broker.port if broker else args.port
        res = _run_spool(args.host, port, args.events, args.rate, args.seconds, args.batch)
    finally:
        if broker:
            broker.stop()
    _print(res, args.json)
    return 0


def cmd_bench_swap(args) -> int:
    from facefleet.assets import assets_dir
    from facefleet.component.models import ModelPaths, load_pair
    from facefleet.component.serving import Serving, ServingSlot
    from facefleet.component.swap import hot_swap
    from facefleet.config import ComponentConfig
    from facefleet.recognition.gallery import Gallery
    from facefleet.recognition.loader import gallery_index, largest_face_crop
    from facefleet.runtime import BackendPool
    from facefleet.sources import read_image

    assets = assets_dir()
    m = assets / "models"
    cfg = ComponentConfig(device="bench")
    paths = [ModelPaths("onnx", m / "det_500m.onnx", m / "w600k_mbf_fp32.onnx"),
             ModelPaths("onnx", m / "det_500m.onnx", m / "mobilefacenet_128.onnx")]
    with tempfile.TemporaryDirectory() as d:
        gallery = Gallery.open(Path(d) / "g", create=True)
        backends = BackendPool()
        models = load_pair(cfg, paths[0], backends)
        photos = sorted((assets / "faces" / "people").glob("*/*.jpg"))
        for p in photos:
            crop = largest_face_crop(models.detector, read_image(p))
            if crop is not None:
                gallery.add(p.parent.name, [crop], [p.name])
        slot = ServingSlot(Serving(models, gallery_index(gallery, models.recognizer), cfg))
        times = []
        for i in range(args.repeat * 2):
            # a fresh gallery cache each time: the swap re-embeds every crop, as on a device
            for f in (Path(d) / "g" / "cache").glob("*.npz"):
                f.unlink()
            res = hot_swap(cfg, paths[(i + 1) % 2], gallery, slot, backends)  # closes the replaced pair
            times.append(res.ms)
        slot.close()
        backends.close()
    crops = sum(len(gallery.info(n)["crops"]) for n in gallery.names())
    _print({"swaps": len(times), "gallery_identities": len(gallery.names()), "gallery_crops": crops,
            "swap_ms_median": round(statistics.median(times), 1), "swap_ms_max": round(max(times), 1),
            "swap_ms_each": [round(t, 1) for t in times]}, args.json)
    return 0


def _print(res: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(res, indent=1))
    else:
        for k, v in res.items():
            print(f"{k}\t{v}")

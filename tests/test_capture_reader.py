"""The per-camera reader: a live source keeps only its newest frame (stale ones dropped and
counted, memory bounded), a file is processed frame by frame, processing is paced at detect_fps."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from facefleet.capture.paced import PacedSource
from facefleet.capture.reader import CameraReader
from facefleet.capture.stats import CameraStats
from facefleet.errors import FacefleetError
from facefleet.sources import Frame, FrameSource


class ScriptedSource(FrameSource):
    """Frame 0, then (once the pipeline holds frame 0) a burst of ``burst`` frames, then the end."""

    def __init__(self, live: bool, burst: int):
        super().__init__()
        self.live, self.burst, self.name = live, burst, "scripted"
        self.pipeline_busy = threading.Event()
        self.produced = 0

    def __iter__(self):
        img = np.zeros((4, 4, 3), np.uint8)
        yield Frame(0, img, None)
        self.produced = 1
        assert self.pipeline_busy.wait(10)
        for i in range(1, self.burst + 1):
            yield Frame(i, img, None)
            self.produced = i + 1


class FastSource(FrameSource):
    """A live camera faster than any pipeline: frames as fast as the thread can make them."""

    live = True

    def __init__(self, n: int):
        super().__init__()
        self.n, self.name = n, "fast"

    def __iter__(self):
        img = np.zeros((8, 8, 3), np.uint8)
        for i in range(self.n):
            yield Frame(i, img, None)


def test_live_reader_hands_over_the_newest_frame_and_counts_the_stale_ones():
    src = ScriptedSource(live=True, burst=50)
    reader = CameraReader(src).start()
    frames = iter(reader)
    first = next(frames)
    assert first.index == 0
    src.pipeline_busy.set()  # the pipeline works on frame 0 while the camera sends 50 more
    reader._thread.join(10)  # the burst is over: the source ended
    assert src.produced == 51 and reader.pending == 1
    second = next(frames)
    assert second.index == 50  # the newest, not frame 1
    assert list(frames) == []
    assert reader.stats.dropped == 49 and reader.stats.decoded == 51 and reader.stats.processed == 2
    assert reader.max_pending == 1


def test_file_reader_processes_every_frame_in_order():
    src = ScriptedSource(live=False, burst=50)
    reader = CameraReader(src, detect_fps=5.0, depth=2).start()  # detect_fps does not apply to files
    got = []
    for f in reader:
        if f.index == 0:
            src.pipeline_busy.set()
        got.append(f.index)
    assert got == list(range(51))
    assert reader.stats.dropped == 0 and reader.stats.processed == 51
    assert reader.max_pending <= 2  # the decoder waits for the pipeline: bounded memory


def test_a_source_faster_than_the_pipeline_keeps_latency_bounded_and_counts_drops():
    n = 3000
    reader = CameraReader(FastSource(n)).start()
    seen = []
    for f in reader:
        seen.append(f.index)
        # a slow pipeline: at least one more frame is decoded before this one is done
        np.linalg.svd(np.random.default_rng(f.index).random((60, 60)))
    s = reader.stats
    assert s.decoded == n and s.processed == len(seen) and s.processed + s.dropped == n
    assert s.dropped > 0 and seen == sorted(seen) and seen[-1] == n - 1  # the last (newest) frame is never lost
    assert reader.max_pending == 1  # at most one frame waits: staleness is one frame, never a queue
    assert len(s.latencies_ms()) == s.processed


def test_detect_fps_paces_a_live_source():
    t = [100.0]
    waits: list[float] = []

    def wait(dt: float) -> None:
        waits.append(dt)
        t[0] += dt

    src = ScriptedSource(live=True, burst=0)
    src.pipeline_busy.set()
    reader = CameraReader(src, detect_fps=4.0, clock=lambda: t[0], wait=wait)
    reader._buf.extend([Frame(1, np.zeros((2, 2, 3), np.uint8), None)])
    assert reader.get().index == 1  # the first frame is taken at once
    t[0] += 0.05  # the pipeline took 50 ms
    reader._buf.extend([Frame(2, np.zeros((2, 2, 3), np.uint8), None)])
    assert reader.get().index == 2
    assert waits == [pytest.approx(0.2)]  # next frame 1/4 s after the previous one was taken


def test_a_lost_stream_reaches_the_consumer_as_its_error():
    class Lost(FrameSource):
        live = True

        def __iter__(self):
            yield Frame(0, np.zeros((2, 2, 3), np.uint8), None)
            raise FacefleetError("stream cam lost and did not come back")

    reader = CameraReader(Lost()).start()
    with pytest.raises(FacefleetError, match="lost and did not come back"):
        for _ in reader:
            pass


def test_close_stops_the_reader_and_counts_what_it_held():
    reader = CameraReader(FastSource(10**9)).start()
    it = iter(reader)
    next(it)
    reader.close()
    assert not reader._thread.is_alive()
    s = reader.stats
    assert s.decoded == s.processed + s.dropped + (1 if s.processed == 0 else 0)


def test_paced_source_releases_frames_at_the_camera_rate():
    t = [0.0]
    sleeps: list[float] = []

    class Clip(FrameSource):
        def __iter__(self):
            for i in range(3):
                yield Frame(i, np.zeros((2, 2, 3), np.uint8), i * 40.0)

    def sleep(dt):
        sleeps.append(dt)
        t[0] += dt

    paced = PacedSource(Clip, fps=10.0, seconds=0.5, clock=lambda: t[0], sleep=sleep)
    frames = list(paced)
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]  # looped to fill 0.5 s at 10 fps
    assert [f.captured for f in frames] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert sleeps == pytest.approx([0.1] * 4)


def test_stats_report_rates_and_percentiles():
    t = [0.0]
    stats = CameraStats(window=4, clock=lambda: t[0])
    for i in range(10):
        stats.on_decoded()
        if i % 2:
            stats.on_dropped()
            continue
        t[0] += 0.01 * (i + 1)  # latency grows: 10, 30, 50, 70, 90 ms
        stats.on_processed(t[0] - 0.01 * (i + 1))
    t[0] = 2.0
    r = stats.report()
    assert (r.decoded, r.processed, r.dropped) == (10, 5, 5)
    assert r.decode_fps == 5.0 and r.processed_fps == 2.5
    assert r.latency_ms_p50 == pytest.approx(60.0)  # window of 4: 30, 50, 70, 90
    assert r.latency_ms_p99 == pytest.approx(89.4)


def test_the_real_pipeline_behind_a_live_camera_takes_the_newest_frames(assets, tmp_path, load_detector, load_recognizer):
    """The Hamilton clip as a live camera that decodes as fast as it can (faster than the
    pipeline): the pipeline sees a subsequence of the newest frames, every other frame is counted
    as dropped and at most one frame ever waits."""
    from facefleet.config import PipelineConfig
    from facefleet.recognition.gallery import Gallery
    from facefleet.recognition.loader import gallery_index
    from facefleet.recognition.pipeline import FacePipeline
    from facefleet.sources import open_source

    class LiveClip(FrameSource):
        live = True

        def __iter__(self):
            yield from open_source(str(assets / "video" / "hamilton_clip.mp4"))

    det, rec = load_detector(), load_recognizer()
    gallery = Gallery.open(tmp_path / "g", create=True)
    pipeline = FacePipeline(det, rec, gallery_index(gallery, rec), PipelineConfig())
    reader = CameraReader(LiveClip()).start()
    seen = []
    for frame in reader:
        seen.append(frame.index)
        pipeline.process(frame)
    s = reader.stats
    assert s.decoded == 275 and s.processed == len(seen) and s.processed + s.dropped == 275
    assert s.dropped > 0 and reader.max_pending == 1
    assert seen == sorted(seen) and seen[-1] == 274
    assert len(s.latencies_ms()) == s.processed

"""Issue 13 item 4: cameras overlap host and device work on a Hailo. Calls from several threads
to one model are in flight on the device together (async jobs, ROUND_ROBIN VDevice), up to the
backend's ``max_in_flight`` per model, and each gets its own results."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from facefleet.modelspec import resolve_model
from facefleet.runtime.hailo import HailoBackend

pytestmark = pytest.mark.usefixtures("surface")  # every HailoRT surface

OUT = "arcface_mobilefacenet/fc1"


def _device_inflight(model) -> int:
    """Frames the double's configured model holds on the chip now (its own counter)."""
    return model._cfg.configured._cpp_ref.inflight


def _until(cond, timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def _threads(rec, crops, idx: list[int], results: dict, errors: list) -> list[threading.Thread]:
    def call(i: int) -> None:
        try:
            results[i] = rec.run(np.ascontiguousarray(crops[i:i + 1]))[OUT].copy()
        except Exception as e:  # reported by the test, not lost in the thread
            errors.append(e)

    return [threading.Thread(target=call, args=(i,), daemon=True) for i in idx]


def test_two_threads_jobs_are_in_flight_at_once(hefs, machine, people):
    backend = HailoBackend(max_in_flight=2)
    try:
        rec = backend.load(resolve_model(hefs["rec"]))
        _, crops = people
        want = {i: rec.run(np.ascontiguousarray(crops[i:i + 1]))[OUT].copy() for i in (0, 5)}
        machine.stall()  # jobs hang on the chip until released
        results, errors = {}, []
        threads = _threads(rec, crops, [0, 5], results, errors)
        for t in threads:
            t.start()
        # with a per-model lock around the whole call, the second job never reaches the device
        assert _until(lambda: _device_inflight(rec) == 2), f"in flight on the device: {_device_inflight(rec)}"
        machine.release_stalled()
        for t in threads:
            t.join(20)
        assert not errors, errors
        for i in (0, 5):  # each thread got its own frame's outputs, not the other's
            np.testing.assert_array_equal(results[i], want[i])
        assert rec.peak_in_flight == 2
    finally:
        machine.release_stalled()
        backend.close()


def test_in_flight_work_per_model_is_bounded(hefs, machine, people):
    backend = HailoBackend(max_in_flight=2)
    try:
        rec = backend.load(resolve_model(hefs["rec"]))
        _, crops = people
        idx = [0, 3, 5, 7]
        want = {i: rec.run(np.ascontiguousarray(crops[i:i + 1]))[OUT].copy() for i in idx}
        machine.stall()
        results, errors = {}, []
        threads = _threads(rec, crops, idx, results, errors)
        for t in threads:
            t.start()
        assert _until(lambda: _device_inflight(rec) == 2)
        assert rec.in_flight == 2  # the other two wait on the host for a slot, not on the device
        machine.unstall()
        machine.release_stalled()
        for t in threads:
            t.join(20)
        assert not errors, errors
        assert rec.peak_in_flight == 2 and rec.in_flight == 0
        for i in idx:
            np.testing.assert_array_equal(results[i], want[i])
    finally:
        machine.release_stalled()
        backend.close()

"""AWS IoT Jobs on the device, over Greengrass IPC: how a fleet erase reaches every device.

A ``facefleet gallery erase`` is an IoT job on a thing group; IoT Core queues one execution per
device and keeps it while the device is offline. The device follows the Jobs MQTT API
(https://docs.aws.amazon.com/iot/latest/developerguide/jobs-mqtt-api.html, "Programming devices
to work with jobs" workflow, jobs-workflow-device-online.html):

- subscribe ``$aws/things/{thing}/jobs/notify-next`` (a NextJobExecutionChanged message whenever
  the next pending execution changes) and ``$aws/things/{thing}/jobs/start-next/accepted``;
- at start (a device back online) and after every notification, publish ``{}`` to
  ``$aws/things/{thing}/jobs/start-next`` (StartNextPendingJobExecution): the reply on
  ``start-next/accepted`` is ``{"execution": {"jobId", "status": "IN_PROGRESS", "jobDocument",
  ...}}``, or no ``execution`` when nothing is pending;
- run the document (``{"command": "erase", "name": ...}``, parsed like a command-topic command)
  and publish ``{"status": "SUCCEEDED"|"FAILED", "statusDetails": {"message": ...}}`` to
  ``$aws/things/{thing}/jobs/{jobId}/update``; then ask for the next one.

A device whose connection dropped and came back without a restart may have missed the
notification (it is only queued for a persistent session), so it also asks every ``poll_s``
(an hour: one small message per device, not a load). Publishes are QoS 1: the nucleus spools
them while it is offline. Each job runs once per process
(a notification and a start-next reply may both carry it); an erase is idempotent anyway.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable

from facefleet.config import IOT_CORE_MAX_PAYLOAD
from facefleet.errors import FacefleetError

log = logging.getLogger(__name__)

DETAIL_CHARS = 1000  # statusDetails values are strings of at most 1024 characters (UpdateJobExecution)
REMEMBERED_JOBS = 1000
POLL_S = 3600.0


def jobs_topic(thing: str, tail: str) -> str:
    return f"$aws/things/{thing}/jobs/{tail}"


class DeviceJobs:
    """``run(document) -> message`` executes a job document (raises FacefleetError on failure)."""

    def __init__(self, ipc, thing: str, run: Callable[[dict], str], stop: threading.Event | None = None,
                 poll_s: float = POLL_S):
        self.ipc, self.thing, self.run = ipc, thing, run
        self.stop, self.poll_s = stop or threading.Event(), poll_s
        self._lock = threading.Lock()
        self._done: OrderedDict[str, str] = OrderedDict()  # jobId -> final status

    def start(self, subscriptions, guard: Callable) -> DeviceJobs:
        from awsiot.greengrasscoreipc.model import QOS

        for name, tail, handler in (("jobs-next", "notify-next", self.on_notify),
                                    ("jobs-start", "start-next/accepted", self.on_start_next)):
            topic = jobs_topic(self.thing, tail)
            subscriptions.open(name, f"SubscribeToIoTCore {topic}",
                               lambda t=topic, **h: self.ipc.subscribe_to_iot_core(topic_name=t, qos=QOS.AT_LEAST_ONCE, **h),
                               guard(handler))
        self.request_next()
        threading.Thread(target=self._poll, name="jobs-poll", daemon=True).start()
        return self

    def _poll(self) -> None:
        while not self.stop.wait(self.poll_s):
            try:
                self.request_next()
            except Exception as e:  # the nucleus refused (spool full, offline QoS 0 rules): next time
                log.warning("jobs: start-next not sent: %s", e)

    def _publish(self, topic: str, body: dict) -> None:
        from awsiot.greengrasscoreipc.model import QOS

        self.ipc.publish_to_iot_core(topic_name=topic, qos=QOS.AT_LEAST_ONCE, payload=json.dumps(body).encode())

    def request_next(self) -> None:
        self._publish(jobs_topic(self.thing, "start-next"), {})

    @staticmethod
    def _execution(payload: bytes) -> dict | None:
        if len(payload) > IOT_CORE_MAX_PAYLOAD:
            raise FacefleetError(f"job message of {len(payload)} bytes is over IoT Core's limit")
        try:
            data = json.loads(payload)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise FacefleetError("job message is not JSON") from None
        ex = data.get("execution") if isinstance(data, dict) else None
        return ex if isinstance(ex, dict) and isinstance(ex.get("jobId"), str) else None

    def on_notify(self, event) -> None:
        """The next pending execution changed: start it (the reply carries its document)."""
        if self._execution(event.message.payload) is not None:
            self.request_next()

    def on_start_next(self, event) -> None:
        ex = self._execution(event.message.payload)
        if ex is None:
            return  # nothing pending
        job_id = ex["jobId"]
        with self._lock:
            if job_id in self._done:
                return
            self._done[job_id] = "IN_PROGRESS"
            while len(self._done) > REMEMBERED_JOBS:
                self._done.popitem(last=False)
        doc = ex.get("jobDocument")
        try:
            if not isinstance(doc, dict):
                raise FacefleetError("job document is not a JSON object")
            status, message = "SUCCEEDED", self.run(doc)
        except Exception as e:  # a bad document or a failed erase: FAILED with the reason, never a lost job
            status, message = "FAILED", str(e).splitlines()[0] if str(e) else type(e).__name__
        log.info("job %s: %s (%s)", job_id, status, message)
        self._publish(jobs_topic(self.thing, f"{job_id}/update"),
                      {"status": status, "statusDetails": {"message": message[:DETAIL_CHARS]}})
        with self._lock:
            self._done[job_id] = status
        self.request_next()

"""A real mosquitto broker on a free loopback port, which the tests can stop and restart."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if Path(p).exists()), None)


class Broker:
    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        conf = folder / "mosquitto.conf"
        # mosquitto started as root drops to the 'mosquitto' user (mosquitto.conf(5) 'user'), which cannot
        # write pytest's 0700 folders: its persistent sessions would be lost at every restart, and a
        # subscriber would miss what arrives before it subscribes again. This loopback test broker keeps root.
        user = "user root\n" if os.geteuid() == 0 else ""
        conf.write_text(f"{user}listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                        f"persistence_location {folder}/\nmax_queued_messages 100000\nmax_inflight_messages 0\nset_tcp_nodelay true\n")
        self.conf = conf

    def start(self) -> None:
        with open(self.folder / "mosquitto.log", "ab") as logf:
            self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=logf)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()  # SIGTERM: mosquitto saves its persistent sessions
            self.proc.wait(10)
            self.proc = None


class Collector:
    """A persistent-session QoS 1 subscriber: messages that arrive while it is reconnecting after
    a broker restart are kept for it by the broker."""

    def __init__(self, port: int, topic: str = "facefleet/#"):
        from awscrt import mqtt5

        self.ids: set[str] = set()
        self.received = 0
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        self._topic = topic
        self._mqtt5 = mqtt5
        self.client = mqtt5.Client(mqtt5.ClientOptions(
            host_name="127.0.0.1", port=port,
            connect_options=mqtt5.ConnectPacket(client_id="facefleet-test-collector", session_expiry_interval_sec=3600),
            session_behavior=mqtt5.ClientSessionBehaviorType.REJOIN_ALWAYS,
            min_reconnect_delay_ms=100, max_reconnect_delay_ms=500,
            on_publish_callback_fn=self._on_publish,
            on_lifecycle_event_connection_success_fn=self._on_connected))
        self.client.start()

    def _on_connected(self, data) -> None:
        if not data.connack_packet.session_present:
            self.client.subscribe(self._mqtt5.SubscribePacket(subscriptions=[
                self._mqtt5.Subscription(topic_filter=self._topic, qos=self._mqtt5.QoS.AT_LEAST_ONCE)])).add_done_callback(
                lambda _f: self.subscribed.set())
        else:
            self.subscribed.set()

    def _on_publish(self, data) -> None:
        import json

        event_id = json.loads(data.publish_packet.payload)["event_id"]
        with self._lock:
            self.received += 1
            self.ids.add(event_id)

    def wait_for(self, ids: set[str], timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if ids <= self.ids:
                    return True
            time.sleep(0.1)
        return False

    def close(self) -> None:
        self.client.stop()

"""End to end on loopback: the component in local mode -> spool -> mosquitto -> the cloud consumer.

Every event the device made arrives exactly once in the consumer's store, across a broker that is
down when the run starts and restarted in the middle.
"""

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from facefleet.cloud.consumer import Consumer, MqttSubscriber, SqliteStore


@pytest.fixture
def broker():
    from component.broker import Broker, mosquitto_binary

    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed: ./scripts/test installs it")
    folder = Path(tempfile.mkdtemp(prefix="facefleet-broker-"))
    folder.chmod(0o777)  # mosquitto drops to its own user and must write its persistence file
    b = Broker(folder)
    yield b
    b.stop()
    shutil.rmtree(folder, ignore_errors=True)


def test_component_to_consumer_exactly_once(broker, tmp_path, assets, cli_env):
    gallery = tmp_path / "gallery"
    for photo in sorted((assets / "enroll").iterdir()):
        r = subprocess.run([sys.executable, "-m", "facefleet", "-q", "gallery", "add", "--gallery", str(gallery),
                            "--name", photo.stem, str(photo)], capture_output=True, text=True, env=cli_env, timeout=120)
        assert r.returncode == 0, r.stderr
    cfg = tmp_path / "device.yaml"
    cfg.write_text(yaml.safe_dump({"device": "pi-lobby", "mqtt": {"host": "127.0.0.1", "port": broker.port},
                                   "spool": {"path": str(tmp_path / "spool.sqlite")}}))
    device_log = tmp_path / "device-events.jsonl"
    broker.start()
    store = SqliteStore(tmp_path / "cloud.db")
    consumer = Consumer(store)
    sub = MqttSubscriber("127.0.0.1", broker.port, consumer.handle, client_id="ff-e2e-consumer")
    try:
        assert sub.wait_ready(15)
        broker.stop()  # the device starts while the broker is down: its events wait in the spool
        run = subprocess.Popen([sys.executable, "-m", "facefleet", "run", "--source", str(assets / "video" / "hamilton_clip.mp4"),
                                "--gallery", str(gallery), "--config", str(cfg), "--events", str(device_log)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env)
        time.sleep(4)
        broker.start()
        time.sleep(1.5)
        broker.stop()  # and once more in the middle
        time.sleep(1)
        broker.start()
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
        made = [json.loads(line)["event_id"] for line in device_log.read_text().splitlines()]
        assert len(made) >= 10
        end = time.monotonic() + 60
        while time.monotonic() < end and store.count() < len(made):
            time.sleep(0.2)
        ids = {row[0] for row in store._db.execute("SELECT event_id FROM events")}
        assert ids == set(made), (len(ids), len(made))
        assert consumer.stats.invalid == 0 and consumer.stats.stored == len(made)
    finally:
        sub.stop()
        store.close()

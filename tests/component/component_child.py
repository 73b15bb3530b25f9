"""A component process for the kill/restart test: the real Component on the real models, IPC
from the in-memory double, events to a real broker through MqttSink. Runs until killed."""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from fake_ipc import FakeIpcClient

from facefleet.component.service import Component
from facefleet.transport.mqtt import MqttSink

work, artifacts, port, config = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
comp = Component(FakeIpcClient(config), work, artifacts=artifacts, thing="thing-1", environ={}, sink=MqttSink("127.0.0.1", port))
comp.start()
print("serving", flush=True)
while True:
    time.sleep(1)

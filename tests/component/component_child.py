"""A component process for the kill/restart test: the real Component on the real models, IPC
through the real GreengrassCoreIPCClientV2 to the parent's nucleus stand-in (found through the
environment, as on a device), events to a real broker through MqttSink. Runs until killed."""

import sys
import time

from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

from facefleet.component.service import Component
from facefleet.transport.mqtt import MqttSink

work, artifacts, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
comp = Component(GreengrassCoreIPCClientV2(), work, artifacts=artifacts, thing="thing-1", environ={},
                 sink=MqttSink("127.0.0.1", port))
comp.start()
print("serving", flush=True)
while True:
    time.sleep(1)

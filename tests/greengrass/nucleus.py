"""A wire-level stand-in for the Greengrass nucleus's IPC service (test double, lives under tests/).

The component under test uses the REAL ``GreengrassCoreIPCClientV2`` and awscrt: it finds this
server through ``AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT`` and ``SVCUID``, exactly as
on a core device. Framing is in ``eventstream.py``. Request/response/event JSON comes from the
SDK's own model classes (awsiot/greengrasscoreipc/model.py: ``_from_payload`` / ``_to_payload``),
so the shapes are the ones the client sends and expects.

Every behaviour below cites aws-greengrass/aws-greengrass-nucleus at tag v2.18.2 (N: = that tag):
- CONNECT: payload ``{"authToken": ...}`` names the component; an unknown token is refused
  (N: ipc/IPCEventStreamService.java:132-159); the ``:version`` header must match, else
  CONNECT_ACK without CONNECTION_ACCEPTED (N: eventstreamrpc/ServiceOperationMappingContinuationHandler.java:84-127).
- A response closes a non-streaming operation's stream (TERMINATE_STREAM on the response); a
  modeled error is an APPLICATION_ERROR with TERMINATE_STREAM (N: eventstreamrpc/OperationContinuationHandler.java:234-281);
  any other exception becomes ServiceError with its message (N: ipc/common/ExceptionUtil.java:31-40).
  Closing a stream from the server side is an empty APPLICATION_MESSAGE with TERMINATE_STREAM
  (N: OperationContinuationHandler.java:204-212).
- Authorization of IoT Core topics: PublishToIoTCore / SubscribeToIoTCore against the component's
  ``accessControl`` ``aws.greengrass.ipc.mqttproxy`` policies, MQTT-style matching (``*``, ``+``,
  ``#``, ``${c}`` escapes) -> ``UnauthorizedError("Not Authorized")``
  (N: builtin/services/mqttproxy/MqttProxyIPCAgent.java:99-106, 192-199, 310-318;
  authorization/AuthorizationHandler.java:214-250; authorization/WildcardTrie.java:148-160, 248-332).
  Local pub/sub (``aws.greengrass.ipc.pubsub``) uses standard matching (only ``*``) and the
  AuthorizationException text (N: builtin/services/pubsub/PubSubIPCEventStreamAgent.java:135-139, 237-240, 329-331).
- ``{iot:thingName}`` in the configuration (accessControl included) is interpolated ONLY when the
  nucleus has ``interpolateComponentConfiguration: true``; the default is false
  (N: componentmanager/KernelConfigResolver.java:165-176; deployment/DeviceConfiguration.java:461).
- PublishToIoTCore: topic/payload/QoS checks -> InvalidArgumentsError (MqttProxyIPCAgent.java:278-307);
  then MqttClient.publish: a payload over ``maxMessageSizeInBytes`` (default 128 KiB) is refused
  (N: mqttclient/MqttClient.java:124, 736-745) -> ServiceError "Publish to topic T failed: ..."
  (MqttProxyIPCAgent.java:127-134); otherwise the message is added to the spooler and the call
  returns (MqttClient.java:684-716). The spooler is in memory, 2.5 MiB by default
  (N: mqttclient/spool/Spool.java:39-40); when full it drops only QoS 0 messages and otherwise
  REJECTS the new one: "Message spool is full. Message could not be added." (Spool.java:356-376);
  a message larger than the whole spool: "Message is larger than the size of message spool.".
- SubscribeToIoTCore: a message is forwarded only after the subscription response was sent;
  closing the stream unsubscribes (MqttProxyIPCAgent.java:160-182, 243-275).
- GetConfiguration: unknown component or key -> ResourceNotFoundError("Key not found"); a leaf is
  returned as ``{name: value}`` (N: builtin/services/configstore/ConfigStoreIPCEventStreamAgent.java:186-227).
- SubscribeToConfigurationUpdate: ONE event per changed leaf, its key path relative to
  ``configuration`` (ConfigStoreIPCEventStreamAgent.java:431-464), sent after the whole merge is
  in place (N: deployment/activator/DeploymentActivator.java:101, config/Topic.java:260).
- SendConfigurationValidityReport only for an outstanding validation request, else
  InvalidArgumentsError("Validation request either timed out or was never made")
  (ConfigStoreIPCEventStreamAgent.java:135-158).
- DeferComponentUpdate: InvalidArgumentsError if not subscribed to component updates;
  ServiceError("Time limit to respond to PreComponentUpdateEvent exceeded") without an
  outstanding pre-update (N: builtin/services/lifecycle/LifecycleIPCEventStreamAgent.java:274-292).
- UpdateState: records RUNNING / ERRORED (LifecycleIPCEventStreamAgent.java:137-157).

Callbacks: the SDK's V2 client runs ``on_stream_event`` on its own ThreadPoolExecutor
(awsiot/greengrasscoreipc/clientv2.py, ``__create_stream_handler``), so the component sees
events on pool threads, concurrently with its own calls.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import socket
import tempfile
import threading
import uuid
from collections import deque
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

from awsiot.greengrasscoreipc import model

from . import eventstream as es

COMPONENT = "com.facefleet.FaceRecognition"
VERSION = "0.1.0"  # awsiot/eventstreamrpc.py VERSION_TUPLE; the nucleus compares it (see module doc)
DEFAULT_MAX_MESSAGE = 128 * 1024                 # MqttClient.java:124
DEFAULT_SPOOL_BYTES = int(2.5 * 1024 * 1024)     # Spool.java:40
MQTT_PROXY, PUBSUB = "aws.greengrass.ipc.mqttproxy", "aws.greengrass.ipc.pubsub"


def _operations() -> dict[str, type]:
    """Operation name -> the SDK's operation model class (request/response/stream types)."""
    out = {}
    for name in dir(model):
        cls = getattr(model, name)
        if name.startswith("_") and name.endswith("Operation") and isinstance(cls, type) and hasattr(cls, "_model_name"):
            out[cls._model_name()] = cls
    return out


OPERATIONS = _operations()


# ---- resource matching (WildcardTrie semantics, as regular expressions) ---------------------------
def _pattern(resource: str, mqtt: bool) -> re.Pattern:
    out, i = [], 0
    while i < len(resource):
        c = resource[i]
        if c == "$" and len(resource) - i >= 4 and resource[i + 1] == "{" and resource[i + 3] == "}":
            out.append(re.escape(resource[i + 2]))  # ${c}: the literal character (WildcardTrie.java:148-178)
            i += 4
            continue
        if c == "*":
            out.append(".*")
        elif mqtt and c == "+" and (i == 0 or resource[i - 1] == "/") and (i + 1 == len(resource) or resource[i + 1] == "/"):
            out.append("[^/]*")
        elif mqtt and c == "#" and i + 1 == len(resource) and (i == 0 or resource[i - 1] == "/"):
            if out and out[-1] == "/":   # "abc/#" also matches "abc" (WildcardTrie.java:296-306)
                out[-1] = "(?:/.*)?"
            else:
                out.append(".*")
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out))


def resource_matches(resource: str, value: str, mqtt: bool) -> bool:
    return _pattern(resource, mqtt).fullmatch(value) is not None


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT subscription filter match (+ one level, # the rest)."""
    f, t = topic_filter.split("/"), topic.split("/")
    for i, part in enumerate(f):
        if part == "#":
            return True
        if i >= len(t) or (part != "+" and part != t[i]):
            return False
    return len(f) == len(t)


def interpolate(value, thing: str):
    """``{iot:thingName}`` system parameter interpolation (KernelConfigResolver.java:165-176)."""
    if isinstance(value, str):
        return value.replace("{iot:thingName}", thing)
    if isinstance(value, list):
        return [interpolate(v, thing) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, thing) for k, v in value.items()}
    return value


def _leaves(d, prefix=()) -> dict[tuple, object]:
    """Configuration leaves: a list is one leaf (a Topic), a map is interior (Topics)."""
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_leaves(v, (*prefix, k)) if isinstance(v, dict) and v else {(*prefix, k): v})
    return out


def _set(d: dict, path: tuple, value) -> None:
    for k in path[:-1]:
        if not isinstance(d.get(k), dict):
            d[k] = {}
        d = d[k]
    d[path[-1]] = copy.deepcopy(value)


def _remove(d: dict, path: tuple) -> None:
    for k in path[:-1]:
        d = d.get(k, {})
    d.pop(path[-1], None)


class _Stream:
    def __init__(self, conn: _Connection, stream_id: int, operation: str):
        self.conn, self.id, self.operation = conn, stream_id, operation
        self.kind: str | None = None       # subscription kind once the response was sent
        self.topic: str | None = None
        self.key_path: tuple = ()
        self.pending_kind: str | None = None
        self.responded = threading.Event()  # events only after the subscription's response
        self.open = True

    def send_event(self, shape) -> None:
        self.responded.wait(10)
        if self.open:
            self.conn.send(es.rpc(es.APPLICATION_MESSAGE, self.id, 0, _shape_headers(shape), _json(shape)))

    def close(self) -> None:
        """Server-side close: empty APPLICATION_MESSAGE with TERMINATE_STREAM."""
        if self.open:
            self.open = False
            self.conn.streams.pop(self.id, None)
            self.conn.send(es.rpc(es.APPLICATION_MESSAGE, self.id, es.TERMINATE_STREAM))


def _json(shape) -> bytes:
    return json.dumps(shape._to_payload()).encode()


def _shape_headers(shape) -> list[es.Header]:
    return [es.string(":content-type", "application/json"), es.string("service-model-type", shape._model_name())]


class _Connection:
    def __init__(self, nucleus: Nucleus, sock: socket.socket):
        self.nucleus, self.sock = nucleus, sock
        self.component: str | None = None
        self.streams: dict[int, _Stream] = {}
        self.last_stream_id = 0
        self._send_lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="nucleus-conn", daemon=True)

    def send(self, msg: es.Message) -> None:
        data = es.encode(msg)
        with self._send_lock, contextlib.suppress(OSError):
            self.sock.sendall(data)

    def _recv_exactly(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                return b""
            buf += chunk
        return buf

    def _run(self) -> None:
        try:
            while True:
                msg = es.read_message(self._recv_exactly)
                if msg is None:
                    break
                self._on_message(msg)
        except (OSError, es.FramingError) as e:
            self.nucleus.protocol_errors.append(str(e))
        finally:
            for s in list(self.streams.values()):
                s.open = False
                self.nucleus._on_stream_closed(s)
            self.streams.clear()
            self.sock.close()

    def _on_message(self, msg: es.Message) -> None:
        mtype, flags, sid = msg.get(":message-type"), msg.get(":message-flags", 0), msg.get(":stream-id", 0)
        if mtype == es.CONNECT:
            token = json.loads(msg.payload or b"{}").get("authToken")
            component = self.nucleus.tokens.get(token)
            ok = msg.get(":version") == VERSION and component is not None
            self.component = component if ok else None
            self.send(es.rpc(es.CONNECT_ACK, 0, es.CONNECTION_ACCEPTED if ok else 0))
            return
        if mtype == es.PING:
            self.send(es.rpc(es.PING_RESPONSE, 0))
            return
        if self.component is None:
            self.send(es.rpc(es.PROTOCOL_ERROR, 0, payload=b'{"message": "not connected"}'))
            return
        stream = self.streams.get(sid)
        if stream is None:
            if flags & es.TERMINATE_STREAM:
                return  # a late close of a stream we already ended
            operation = msg.get("operation")
            if operation is None or sid <= self.last_stream_id:
                self.send(es.rpc(es.PROTOCOL_ERROR, sid, es.TERMINATE_STREAM,
                                 payload=b'{"message": "The first message for on a non-zero :stream-id must contain '
                                         b'an operation header value."}'))
                return
            self.last_stream_id = sid
            stream = self.streams[sid] = _Stream(self, sid, operation)
            self.nucleus._activate(stream, msg)
        elif flags & es.TERMINATE_STREAM:
            stream.open = False
            self.streams.pop(sid, None)
            self.nucleus._on_stream_closed(stream)


class Nucleus:
    """The IPC side of a core device. Test-facing API: ``environ()``, ``cloud`` (what reached IoT
    Core), ``events()``, ``states``, ``reports``, ``deferrals``, ``push_*`` and ``set_configuration``."""

    def __init__(self, configuration: dict, *, thing: str = "thing-1", component: str = COMPONENT,
                 interpolate_component_configuration: bool = False, max_message_bytes: int = DEFAULT_MAX_MESSAGE,
                 spool_bytes: int = DEFAULT_SPOOL_BYTES):
        self.thing, self.component = thing, component
        self.interpolate = interpolate_component_configuration
        self.max_message_bytes, self.spool_bytes = max_message_bytes, spool_bytes
        self.config: dict[str, dict] = {component: self._resolve(configuration)}
        self.token = uuid.uuid4().hex
        self.tokens = {self.token: component}
        self._dir = tempfile.mkdtemp(prefix="gg-", dir="/tmp")  # a Unix socket path has a 108-byte limit
        self.socket_path = str(Path(self._dir) / "ipc.socket")
        self._lock = threading.RLock()
        self.online = True
        self.spooler: deque[tuple[str, int, bytes]] = deque()
        self.cloud: list[tuple[str, str, bytes]] = []          # (topic, qos, payload) delivered to IoT Core
        self.local: list[tuple[str, dict]] = []
        self.states: list[str] = []
        self.reports: list[model.ConfigurationValidityReport] = []
        self.deferrals: list[tuple[str, str, int]] = []
        self.errors_sent: list[tuple[str, str]] = []           # (operation, error model name)
        self.protocol_errors: list[str] = []
        self.requests: list[str] = []                          # operation names, in order
        self._validations: dict[tuple[str, str], Future] = {}
        self._pre_updates: dict[tuple[str, str], Future] = {}
        self._connections: list[_Connection] = []
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(self.socket_path)
        self._server.listen(8)
        self._accept_thread = threading.Thread(target=self._accept, name="nucleus-accept", daemon=True)
        self._accept_thread.start()

    # ---- process environment, lifetime --------------------------------------------------------------
    def environ(self) -> dict[str, str]:
        """What the nucleus puts in a component process's environment."""
        return {"AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT": self.socket_path, "SVCUID": self.token,
                "AWS_IOT_THING_NAME": self.thing}

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._server.accept()
            except OSError:
                return
            conn = _Connection(self, sock)
            with self._lock:
                self._connections.append(conn)
            conn.thread.start()

    def close(self) -> None:
        self._server.close()
        with self._lock:
            conns = list(self._connections)
        for c in conns:
            with contextlib.suppress(OSError):
                c.sock.shutdown(socket.SHUT_RDWR)
        for p in Path(self._dir).glob("*"):
            p.unlink()
        os.rmdir(self._dir)

    # ---- configuration ------------------------------------------------------------------------------
    def _resolve(self, configuration: dict) -> dict:
        cfg = json.loads(json.dumps(configuration))
        return interpolate(cfg, self.thing) if self.interpolate else cfg

    def _streams(self, kind: str) -> list[_Stream]:
        with self._lock:
            return [s for c in self._connections for s in list(c.streams.values()) if s.kind == kind and s.open]

    def set_configuration(self, configuration: dict) -> list[tuple]:
        """Replace the component's configuration as a deployment does: the whole merge is one
        task on the nucleus's publish queue (N: deployment/activator/DeploymentActivator.java:101),
        and each changed leaf queues its own change notification behind it (N: config/Topic.java:260),
        so every leaf is in place before the first update event, then ONE event per changed or
        removed leaf. Returns the changed key paths."""
        new = _leaves(self._resolve(configuration))
        with self._lock:
            cfg = self.config[self.component]
            old = _leaves(cfg)
            changed = []
            for path, value in new.items():
                if path not in old or old[path] != value:
                    _set(cfg, path, value)
                    changed.append(path)
            for path in old:
                if path not in new and not any(p[:len(path)] == path for p in new):
                    _remove(cfg, path)
                    changed.append(path)
        for path in changed:
            self._config_event(path)
        return changed

    def _config_event(self, path: tuple) -> None:
        ev = model.ConfigurationUpdateEvents(configuration_update_event=model.ConfigurationUpdateEvent(
            component_name=self.component, key_path=list(path)))
        for s in self._streams("config"):
            if tuple(path[:len(s.key_path)]) == s.key_path:
                s.send_event(ev)

    # ---- the deployment side -------------------------------------------------------------------------
    def push_validation(self, configuration, deployment_id: str = "dep-1", timeout: float = 30.0):
        """Ask subscribers to validate; return the report, or None (timeout / nobody subscribed)."""
        streams = self._streams("validate")
        if not streams:
            return None
        fut: Future = Future()
        with self._lock:
            self._validations[(self.component, deployment_id)] = fut
        ev = model.ValidateConfigurationUpdateEvents(validate_configuration_update_event=model.ValidateConfigurationUpdateEvent(
            configuration=copy.deepcopy(configuration), deployment_id=deployment_id))
        for s in streams:
            s.send_event(ev)
        try:
            return fut.result(timeout)
        except FutureTimeout:
            return None
        finally:
            with self._lock:
                self._validations.pop((self.component, deployment_id), None)

    def push_component_update(self, deployment_id: str = "dep-2", timeout: float = 10.0):
        """Send a PreComponentUpdateEvent; return the DeferComponentUpdateRequest (or None).
        ``timeout=0``: the nucleus's wait is already over when the component answers."""
        fut: Future = Future()
        with self._lock:
            if timeout > 0:
                self._pre_updates[(self.component, deployment_id)] = fut
        ev = model.ComponentUpdatePolicyEvents(pre_update_event=model.PreComponentUpdateEvent(
            deployment_id=deployment_id, is_ggc_restarting=False))
        for s in self._streams("component"):
            s.send_event(ev)
        if timeout <= 0:
            return None
        try:
            return fut.result(timeout)
        except FutureTimeout:
            return None
        finally:
            with self._lock:
                self._pre_updates.pop((self.component, deployment_id), None)

    def push_iot_message(self, topic: str, payload: bytes | str) -> int:
        """A message from IoT Core; returns how many subscriptions it was forwarded to."""
        raw = payload.encode() if isinstance(payload, str) else payload
        if len(raw) > DEFAULT_MAX_MESSAGE:
            raise ValueError(f"IoT Core refuses a {len(raw)}-byte payload (128 KB limit): it can never reach the device")
        ev = model.IoTCoreMessage(message=model.MQTTMessage(topic_name=topic, payload=raw))
        n = 0
        for s in self._streams("iot"):
            if topic_matches(s.topic, topic):
                s.send_event(ev)
                n += 1
        return n

    def close_streams(self, kind: str) -> int:
        """The nucleus ends subscriptions of one kind (e.g. on a reconnect of its MQTT client)."""
        streams = self._streams(kind)
        for s in streams:
            s.close()
        return len(streams)

    def fail_streams(self, kind: str, error=None) -> int:
        """A stream error: a modeled error on an open subscription, which also ends it
        (OperationContinuationHandler.sendModeledError, TERMINATE_STREAM)."""
        streams = self._streams(kind)
        for s in streams:
            self._send_error(s, error or model.ServiceError(message="stream failed"))
        return len(streams)

    def subscribed_topics(self, reserved: bool = False) -> list[str]:
        """IoT Core subscriptions; those on AWS reserved topics (``$aws/...``, the jobs API) only with ``reserved``."""
        return [s.topic for s in self._streams("iot") if reserved or not s.topic.startswith("$aws/")]

    def set_online(self, online: bool) -> None:
        with self._lock:
            self.online = online
            if online:
                while self.spooler:
                    topic, qos, payload = self.spooler.popleft()
                    self.cloud.append((topic, str(qos), payload))

    def spooled_bytes(self) -> int:
        with self._lock:
            return sum(len(p) for _, _, p in self.spooler)

    def events(self, kind: str | None = None) -> list[dict]:
        with self._lock:
            out = [json.loads(p) for t, _, p in self.cloud if not t.startswith("$aws/")]  # jobs API: jobs_messages()
        return [e for e in out if kind is None or e["type"] == kind]

    def jobs_messages(self, thing: str = "thing-1") -> list[tuple[str, dict]]:
        """(topic tail, payload) of what the component sent to the AWS IoT Jobs MQTT API."""
        prefix = f"$aws/things/{thing}/jobs/"
        with self._lock:
            return [(t[len(prefix):], json.loads(p)) for t, _, p in self.cloud if t.startswith(prefix)]

    # ---- request handling ---------------------------------------------------------------------------
    def _activate(self, stream: _Stream, msg: es.Message) -> None:
        op = OPERATIONS.get(stream.operation)
        self.requests.append(stream.operation)
        try:
            if op is None:
                raise model.ServiceError(message=f"unknown operation {stream.operation}")
            request = op._request_type()._from_payload(json.loads(msg.payload or b"{}"))
            handler = getattr(self, "_op_" + op._model_name().split("#")[1], None)
            if handler is None:
                raise model.ServiceError(message=f"the nucleus stand-in does not implement {stream.operation}")
            response = handler(stream, request)
        except model.GreengrassCoreIPCError as err:
            self._send_error(stream, err)
            return
        except Exception as e:  # ExceptionUtil.translateExceptions
            self._send_error(stream, model.ServiceError(message=str(e)))
            return
        streaming = op._response_stream_type() is not None
        if streaming:
            stream.kind = stream.pending_kind  # visible now; events wait for the response (``responded``)
        stream.conn.send(es.rpc(es.APPLICATION_MESSAGE, stream.id, 0 if streaming else es.TERMINATE_STREAM,
                                _shape_headers(response), _json(response)))
        stream.responded.set()
        if not streaming:
            stream.open = False
            stream.conn.streams.pop(stream.id, None)

    def _send_error(self, stream: _Stream, err) -> None:
        self.errors_sent.append((stream.operation, err._model_name()))
        stream.open = False
        stream.conn.streams.pop(stream.id, None)
        stream.conn.send(es.rpc(es.APPLICATION_ERROR, stream.id, es.TERMINATE_STREAM, _shape_headers(err), _json(err)))

    def _on_stream_closed(self, stream: _Stream) -> None:
        stream.kind = None  # SubscribeToIoTCore: onStreamClosed unsubscribes

    def _authorize(self, service: str, operation: str, resource: str, mqtt: bool) -> bool:
        policies = (self.config[self.component].get("accessControl") or {}).get(service) or {}
        for pol in policies.values():
            ops = pol.get("operations") or []
            if operation not in ops and "*" not in ops:
                continue
            if any(resource_matches(r, resource, mqtt) for r in pol.get("resources") or []):
                return True
        return False

    # mqttproxy
    def _op_PublishToIoTCore(self, stream, req: model.PublishToIoTCoreRequest):
        if req.topic_name is None:
            raise model.InvalidArgumentsError(message="Topic is required")
        if not self._authorize(MQTT_PROXY, stream.operation, req.topic_name, mqtt=True):
            raise model.UnauthorizedError(message="Not Authorized")
        if req.payload is None:
            raise model.InvalidArgumentsError(message="Payload is required")
        if req.qos is None:
            raise model.InvalidArgumentsError(message="QoS is required")
        if req.qos not in (model.QOS.AT_MOST_ONCE, model.QOS.AT_LEAST_ONCE):
            raise model.InvalidArgumentsError(message=f"Invalid QoS value: {req.qos}")
        fail = f"Publish to topic {req.topic_name} failed: "
        size = len(req.payload)
        if size > self.max_message_bytes:
            raise model.ServiceError(message=fail + f"The publishing message size {size} bytes exceeds the configured "
                                     f"limit of {self.max_message_bytes} bytes")
        qos = int(req.qos)
        with self._lock:
            if not self.online and qos == 0:
                raise model.ServiceError(message=fail + "Device is offline. Dropping QoS 0 message.")
            if size > self.spool_bytes:
                raise model.ServiceError(message=fail + "Message is larger than the size of message spool.")
            if self.spooled_bytes() + size > self.spool_bytes:
                kept = [m for m in self.spooler if m[1] != 0]  # only QoS 0 messages make room
                self.spooler = deque(kept)
                if self.spooled_bytes() + size > self.spool_bytes:
                    raise model.ServiceError(message=fail + "Message spool is full. Message could not be added.")
            self.spooler.append((req.topic_name, qos, req.payload))
            if self.online:
                self.set_online(True)
        return model.PublishToIoTCoreResponse()

    def _op_SubscribeToIoTCore(self, stream, req: model.SubscribeToIoTCoreRequest):
        if req.topic_name is None:
            raise model.InvalidArgumentsError(message="Topic is required")
        if not self._authorize(MQTT_PROXY, stream.operation, req.topic_name, mqtt=True):
            raise model.UnauthorizedError(message="Not Authorized")
        if req.qos not in (model.QOS.AT_MOST_ONCE, model.QOS.AT_LEAST_ONCE):
            raise model.InvalidArgumentsError(message="QoS is required" if req.qos is None else f"Invalid QoS value: {req.qos}")
        stream.topic, stream.pending_kind = req.topic_name, "iot"
        return model.SubscribeToIoTCoreResponse()

    # pubsub
    def _op_PublishToTopic(self, stream, req: model.PublishToTopicRequest):
        if req.topic is None:
            raise model.InvalidArgumentsError(message="Publish topic must not be null")
        if any(c in req.topic for c in "#+"):
            raise model.InvalidArgumentsError(message="Publish topic must not contain a wildcard.")
        if not self._authorize(PUBSUB, stream.operation, req.topic, mqtt=False):
            raise model.UnauthorizedError(message=f"Principal {self.component} is not authorized to perform "
                                          f"{PUBSUB}:{stream.operation} on resource {req.topic}")
        msg = req.publish_message
        body = msg.json_message.message if msg and msg.json_message else None
        with self._lock:
            self.local.append((req.topic, body))
        return model.PublishToTopicResponse()

    # configuration
    def _op_GetConfiguration(self, stream, req: model.GetConfigurationRequest):
        name = req.component_name or self.component
        with self._lock:
            if name not in self.config:
                raise model.ResourceNotFoundError(message="Key not found")
            node = self.config[name]
            for k in req.key_path or []:
                if not isinstance(node, dict) or k not in node:
                    raise model.ResourceNotFoundError(message="Key not found")
                node = node[k]
            value = copy.deepcopy(node) if isinstance(node, dict) else {req.key_path[-1]: copy.deepcopy(node)}
        return model.GetConfigurationResponse(component_name=name, value=value)

    def _op_SubscribeToConfigurationUpdate(self, stream, req: model.SubscribeToConfigurationUpdateRequest):
        name = req.component_name or self.component
        if name not in self.config:
            raise model.ResourceNotFoundError(message="Key not found")
        stream.key_path, stream.pending_kind = tuple(req.key_path or ()), "config"
        return model.SubscribeToConfigurationUpdateResponse()

    def _op_SubscribeToValidateConfigurationUpdates(self, stream, req):
        stream.pending_kind = "validate"
        return model.SubscribeToValidateConfigurationUpdatesResponse()

    def _op_SendConfigurationValidityReport(self, stream, req: model.SendConfigurationValidityReportRequest):
        report = req.configuration_validity_report
        if report is None or report.deployment_id is None:
            raise model.InvalidArgumentsError(
                message="Cannot accept configuration validity report, the deployment ID provided was null")
        with self._lock:
            fut = self._validations.pop((self.component, report.deployment_id), None)
            if fut is None:
                raise model.InvalidArgumentsError(message="Validation request either timed out or was never made")
            self.reports.append(report)
        fut.set_result(report)
        return model.SendConfigurationValidityReportResponse()

    # lifecycle
    def _op_UpdateState(self, stream, req: model.UpdateStateRequest):
        if req.state not in (model.ReportedLifecycleState.RUNNING, model.ReportedLifecycleState.ERRORED):
            raise model.ServiceError(message=f"No enum constant State.{req.state}")
        with self._lock:
            self.states.append(req.state)
        return model.UpdateStateResponse()

    def _op_SubscribeToComponentUpdates(self, stream, req):
        stream.pending_kind = "component"
        return model.SubscribeToComponentUpdatesResponse()

    def _op_DeferComponentUpdate(self, stream, req: model.DeferComponentUpdateRequest):
        if not self._streams("component"):
            raise model.InvalidArgumentsError(message="Component is not subscribed to component update events")
        if req.deployment_id is None:
            raise model.InvalidArgumentsError(message="Cannot defer the update, the deployment ID provided was null")
        with self._lock:
            fut = self._pre_updates.pop((self.component, req.deployment_id), None)
            if fut is None:
                raise model.ServiceError(message="Time limit to respond to PreComponentUpdateEvent exceeded")
            self.deferrals.append((req.deployment_id, req.message, req.recheck_after_ms))
        fut.set_result(req)
        return model.DeferComponentUpdateResponse()

"""A slow link between a client and a real broker: a TCP relay that delays every byte from the
broker by ``delay_s`` (so CONNACK and each PUBACK arrive late, as on a congested cellular link).
Client-to-broker bytes pass at once. Test double, lives under tests/."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import deque


class SlowLink:
    def __init__(self, broker_port: int, delay_s: float):
        self.broker_port, self.delay_s = broker_port, delay_s
        self._srv = socket.create_server(("127.0.0.1", 0))
        self.port = self._srv.getsockname()[1]
        self._stop = threading.Event()
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self._srv.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self._srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            broker = socket.create_connection(("127.0.0.1", self.broker_port))
            self._socks += [client, broker]
            threading.Thread(target=self._pipe, args=(client, broker, 0.0), daemon=True).start()
            threading.Thread(target=self._pipe, args=(broker, client, self.delay_s), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, delay: float) -> None:
        queue: deque[tuple[float, bytes]] = deque()
        cond = threading.Condition()

        def sender() -> None:
            while not self._stop.is_set():
                with cond:
                    while not queue and not self._stop.is_set():
                        cond.wait(0.2)
                    if not queue:
                        continue
                    due, data = queue.popleft()
                time.sleep(max(0.0, due - time.monotonic()))
                try:
                    dst.sendall(data)
                except OSError:
                    return

        threading.Thread(target=sender, daemon=True).start()
        while not self._stop.is_set():
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                return
            with cond:
                queue.append((time.monotonic() + delay, data))
                cond.notify()

    def close(self) -> None:
        self._stop.set()
        for s in [self._srv, *self._socks]:
            with contextlib.suppress(OSError):
                s.close()

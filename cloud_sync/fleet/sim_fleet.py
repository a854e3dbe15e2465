"""Many simulated devices on one network thread, for fleet-scale benchmarks.

`SimDevice.start()` gives each device paho's own network thread, which waits with select() on the client's
socket and a wake-up socket pair: a few hundred devices per process at most (select() cannot watch a
descriptor above 1024), and thousands of threads waking up and contending for the GIL cost a whole core
with the fleet idle. `SimFleet` drives the clients of many `SimDevice`s itself: one epoll selector (on Linux)
over their sockets, `loop_read` when one is readable, `loop_write` while one has bytes queued, `loop_misc`
(keepalive) once a second. One descriptor per device and one thread per fleet; the devices behave on the
wire exactly as with `start()`. A device whose connection drops is not reconnected (a benchmark should see
that, not hide it).

    fleet = SimFleet()
    devices = [fleet.add(SimDevice(f"sim-{i}", "line-1", host, port)) for i in range(2000)]
    fleet.start()
    ...
    fleet.stop()
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

from cloud_sync.fleet.simulator import SimDevice

__all__ = ["SimFleet"]


class SimFleet:
    def __init__(self, misc_interval_s: float = 1.0) -> None:
        self.devices: list[SimDevice] = []
        self.misc_interval_s = misc_interval_s
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgeloop-sim-fleet", daemon=True)

    def add(self, device: SimDevice) -> SimDevice:
        """Connect `device` (blocking TCP connect, CONNECT queued) and hand its socket to the fleet's loop."""
        client = device.client
        client.on_socket_close = self._on_socket_close
        client.connect(device.host, device.port)
        sock = client.socket()
        if sock is None:
            raise ConnectionError(f"{device.device_id}: no socket after connect")
        self._selector.register(sock, selectors.EVENT_READ, device)  # epoll: safe while the loop waits
        self.devices.append(device)
        self._flush(client)
        self._wake()
        return device

    def start(self) -> SimFleet:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Disconnect every device (a clean DISCONNECT: the broker does not send their last will), then stop."""
        for device in self.devices:
            with contextlib.suppress(OSError, ValueError):
                device.client.disconnect()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(d.client.socket() is not None for d in self.devices):
            time.sleep(0.05)
        self._stop.set()
        self._wake()
        self._thread.join(timeout)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    # -- the loop -----------------------------------------------------------------------------------
    def _run(self) -> None:
        next_misc = time.monotonic() + self.misc_interval_s
        while not self._stop.is_set():
            ready = self._selector.select(timeout=max(0.0, min(0.2, next_misc - time.monotonic())))
            for key, mask in ready:
                device = key.data
                if device is None:
                    self._drain_wake()
                    continue
                client: mqtt.Client = device.client
                if mask & selectors.EVENT_READ:
                    client.loop_read()
                if mask & selectors.EVENT_WRITE:
                    client.loop_write()
                self._flush(client)
            if time.monotonic() >= next_misc:
                for device in self.devices:
                    device.client.loop_misc()
                    self._flush(device.client)
                next_misc = time.monotonic() + self.misc_interval_s

    def _flush(self, client: mqtt.Client) -> None:
        """Write what callbacks queued; watch the socket for writability only while bytes remain."""
        if client.want_write():
            client.loop_write()
        sock = client.socket()
        if sock is None:
            return
        wanted = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.want_write() else 0)
        try:
            key = self._selector.get_key(sock)
        except (KeyError, ValueError):
            return
        if key.events != wanted:
            self._selector.modify(sock, wanted, key.data)

    def _on_socket_close(self, _client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(sock)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

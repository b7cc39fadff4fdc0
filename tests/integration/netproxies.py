"""Small real proxies for network tests: a fault-injecting TCP relay and an HTTP CONNECT proxy.

Both listen on a free loopback port and relay bytes between real sockets with a
thread per direction; neither looks at what it carries (TLS goes through as it is).
"""

from __future__ import annotations

import base64
import contextlib
import socket
import threading
import time
from collections.abc import Callable


def _pipe(
    src: socket.socket, dst: socket.socket, gate: Callable[[], bool], seen: Callable[[], None]
) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            while not gate():  # blackholed: hold the bytes, send nothing, say nothing
                time.sleep(0.05)
            seen()
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


class FaultProxy:
    """A TCP relay to ``target`` that can go silent (blackhole) or kill idle connections."""

    def __init__(self, target: tuple[str, int], idle_kill_seconds: float | None = None) -> None:
        self.target = target
        self.idle_kill_seconds = idle_kill_seconds
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.address = f"127.0.0.1:{self.port}"
        self._open = threading.Event()
        self._open.set()
        self._closed = False
        self.connections = 0
        self.idle_kills = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def blackhole(self, on: bool) -> None:
        """On: forward nothing either way, and keep every connection open (a silent drop)."""
        if on:
            self._open.clear()
        else:
            self._open.set()

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            self.connections += 1
            last = [time.monotonic()]

            def seen(last: list[float] = last) -> None:
                last[0] = time.monotonic()

            gate = self._open.is_set
            threading.Thread(target=_pipe, args=(client, upstream, gate, seen), daemon=True).start()
            threading.Thread(target=_pipe, args=(upstream, client, gate, seen), daemon=True).start()
            if self.idle_kill_seconds is not None:
                threading.Thread(
                    target=self._reaper, args=(client, upstream, last), daemon=True
                ).start()

    def _reaper(self, a: socket.socket, b: socket.socket, last: list[float]) -> None:
        assert self.idle_kill_seconds is not None
        while True:
            time.sleep(0.1)
            if time.monotonic() - last[0] > self.idle_kill_seconds:
                self.idle_kills += 1
                for s in (a, b):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                        s.close()
                    except OSError:
                        pass
                return
            if a.fileno() < 0:
                return


class ConnectProxy:
    """An HTTP CONNECT proxy; with ``credentials`` it asks for basic authentication;
    with ``refuse`` it answers every CONNECT with 403."""

    def __init__(self, credentials: tuple[str, str] | None = None, refuse: bool = False) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._credentials = credentials
        self._refuse = refuse
        self.tunnels: list[str] = []
        self.refused = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, user: str | None = None, password: str | None = None) -> str:
        auth = f"{user}:{password}@" if user is not None else ""
        return f"http://{auth}127.0.0.1:{self.port}"

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 16384:
            chunk = client.recv(4096)
            if not chunk:
                client.close()
                return
            head += chunk
        lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        method, target, _ = ([*lines[0].split(" "), "", "", ""])[:3]
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])
        }
        if self._refuse or method != "CONNECT":
            self.refused += 1
            client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            client.close()
            return
        if self._credentials is not None:
            user, password = self._credentials
            expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            if headers.get("proxy-authorization") != expected:
                self.refused += 1
                client.sendall(
                    b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                    b'Proxy-Authenticate: Basic realm="test"\r\nContent-Length: 0\r\n\r\n'
                )
                client.close()
                return
        host, _, port = target.rpartition(":")
        try:
            upstream = socket.create_connection((host, int(port)))
        except (OSError, ValueError):
            client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            client.close()
            return
        self.tunnels.append(target)
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        always = lambda: True  # noqa: E731
        threading.Thread(
            target=_pipe, args=(client, upstream, always, lambda: None), daemon=True
        ).start()
        threading.Thread(
            target=_pipe, args=(upstream, client, always, lambda: None), daemon=True
        ).start()

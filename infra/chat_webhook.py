"""A local chat incoming webhook that keeps what it is sent, and can misbehave on purpose.

Modes (set `mode` at any time):
  ok         200 "ok" (what Slack answers)
  truncated  200 with a Content-Length larger than the body it sends, then closes
  garbage    a reply that is not HTTP at all
  error      HTTP 500
  stall      reads the request, then answers nothing for `stall_s` (30 s) before a 200
  down       the port is closed: connections are refused (`mode = "ok"` opens it again)

Used by the notification tests and the local demo. A message counts as received once its whole
request body was read, whatever the mode answers afterwards.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from typing import Any

MODES = ("ok", "truncated", "garbage", "error", "stall", "down")


class ChatWebhook:
    def __init__(self, port: int = 0, stall_s: float = 30.0) -> None:
        self.received: list[dict[str, Any]] = []
        self.stall_s = stall_s
        self._mode = "ok"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self.port = self._listen(port)
        self.url = f"http://127.0.0.1:{self.port}/hook"

    # -- control ----------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        with self._lock:
            was_down, self._mode = self._mode == "down", mode
            if mode == "down" and self._listener is not None:
                self._close_listener()
            elif was_down and mode != "down":
                self._listen(self.port)

    def texts(self) -> list[str]:
        return [str(body.get("text", "")) for body in self.received]

    def wait_for(self, text: str, timeout_s: float = 30.0) -> list[str]:
        """The received messages containing `text`, waiting up to timeout_s for the first."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = [t for t in self.texts() if text in t]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            if self._listener is not None:
                self._close_listener()

    def _close_listener(self) -> None:
        # shutdown() first: close() alone leaves the socket listening while accept() blocks on it.
        assert self._listener is not None
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._listener = None

    # -- serving ----------------------------------------------------------------------------
    def _listen(self, port: int) -> int:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return listener.getsockname()[1]

    def _accept(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed: down, or stopped
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                body = self._read_request(conn)
            except (OSError, ValueError):
                return
            try:
                self.received.append(json.loads(body))
            except ValueError:
                self.received.append({"text": body.decode(errors="replace")})
            mode = self._mode
            try:
                if mode == "truncated":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\nok")
                elif mode == "garbage":
                    conn.sendall(b"\x00\xffthis is not HTTP\r\n\r\n")
                elif mode == "error":
                    conn.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\n\r\noops!")
                elif mode == "stall":
                    self._stop.wait(self.stall_s)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                else:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            except OSError:
                pass

    @staticmethod
    def _read_request(conn: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                raise ValueError("connection closed before the headers ended")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                raise ValueError("connection closed before the body ended")
            body += chunk
        return body[:length]

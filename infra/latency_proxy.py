"""A TCP proxy that adds a fixed latency to every request sent through it, and counts the gRPC
calls it carried: put one in front of an emulator or a stand-in to see how canary-guard behaves
when each Google API call takes as long as it does in GCP (about 100-200 ms), not 1 ms.

Only the client → server direction is delayed, chunk by chunk, each chunk `delay_s` after it
arrived (not after the previous one), so concurrent calls on one HTTP/2 connection are each
delayed once, as a far-away server would delay them. Calls are counted as the HTTP/2 HEADERS
frames the client opens streams with (one per gRPC call); plain HTTP/1.1 is forwarded but not
counted (the Cloud Run stand-in keeps its own call log).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from dataclasses import dataclass, field

_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_HEADERS_FRAME = 0x1


@dataclass
class _H2Counter:
    """Finds frame boundaries in the client's byte stream to count HEADERS frames."""

    buffer: bytearray = field(default_factory=bytearray)
    preface_checked: bool = False
    is_h2: bool = False
    skip: int = 0  # bytes of the current frame's payload still to pass

    def feed(self, data: bytes) -> int:
        if not self.preface_checked:
            self.buffer += data
            if len(self.buffer) < len(_H2_PREFACE):
                return 0
            self.preface_checked = True
            self.is_h2 = self.buffer.startswith(_H2_PREFACE)
            data = bytes(self.buffer[len(_H2_PREFACE) :]) if self.is_h2 else b""
            self.buffer.clear()
        if not self.is_h2:
            return 0
        self.buffer += data
        counted = 0
        while True:
            if self.skip:
                taken = min(self.skip, len(self.buffer))
                del self.buffer[:taken]
                self.skip -= taken
                if self.skip:
                    return counted
            if len(self.buffer) < 9:
                return counted
            length = int.from_bytes(self.buffer[:3], "big")
            counted += self.buffer[3] == _HEADERS_FRAME
            del self.buffer[:9]
            self.skip = length


class LatencyProxy:
    """`host` ("127.0.0.1:PORT") forwards to `upstream`, each request `delay_s` later."""

    def __init__(self, upstream: str, delay_s: float) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.delay_s = delay_s
        self.calls = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"latency-proxy-{self.host}", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def reset_count(self) -> int:
        with self._lock:
            calls, self.calls = self.calls, 0
        return calls

    def stop(self) -> None:
        async def cancel_all() -> None:
            current = asyncio.current_task()
            tasks = [task for task in asyncio.all_tasks() if task is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(cancel_all(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._listener.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            await asyncio.start_server(self._connection, sock=self._listener)
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    async def _connection(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        try:
            server_in, server_out = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_out.close()
            return
        loop = asyncio.get_running_loop()
        pending: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        counter = _H2Counter()

        async def read_client() -> None:
            while data := await client_in.read(65536):
                counted = counter.feed(data)
                if counted:
                    with self._lock:
                        self.calls += counted
                await pending.put((loop.time() + self.delay_s, data))
            await pending.put((loop.time() + self.delay_s, b""))

        async def write_server() -> None:
            while True:
                due, data = await pending.get()
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                if not data:
                    with contextlib.suppress(OSError):
                        server_out.write_eof()
                    return
                server_out.write(data)
                await server_out.drain()

        async def write_client() -> None:
            while data := await server_in.read(65536):
                client_out.write(data)
                await client_out.drain()

        tasks = [asyncio.ensure_future(t) for t in (read_client(), write_server(), write_client())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            await tasks[2]  # the server's answer ends the exchange
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):  # closed, or stopping
            pass
        finally:
            for task in tasks:
                task.cancel()
            for writer in (client_out, server_out):
                writer.close()

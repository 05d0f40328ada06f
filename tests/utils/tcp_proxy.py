"""A loopback TCP proxy that can be cut: while cut, every open connection is closed and new ones
are refused, exactly what clients see when their server goes away. It runs its own event loop
in a thread, so blocking clients in the test's thread (or in threads of the bot) can use it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from concurrent.futures import Future
from typing import Any

from tests.utils.redis_server import free_port

logger = logging.getLogger(__name__)

CHUNK = 64 * 1024


class TcpProxy:
    """127.0.0.1:`port` → `target_host`:`target_port`, with `cut()` and `restore()`."""

    def __init__(self, target_host: str, target_port: int, port: int | None = None) -> None:
        self.target = (target_host, target_port)
        self.port = port or free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0

    def start(self) -> None:
        """Start the loop thread and listen."""
        self._thread.start()
        self._call(self._listen())

    def cut(self) -> None:
        """Refuse new connections and drop the open ones (the server "is gone")."""
        self._call(self._cut())
        logger.info("proxy %s cut", self.port)

    def restore(self) -> None:
        """Accept connections again."""
        self._call(self._listen())
        logger.info("proxy %s restored", self.port)

    def close(self) -> None:
        """Stop everything (end of the test)."""
        with contextlib.suppress(RuntimeError):
            self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _shutdown(self) -> None:
        await self._cut()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def is_cut(self) -> bool:
        """Whether connections are refused right now."""
        return self._server is None

    def _call(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(10)

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(CHUNK):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self._writers -= {writer, up_writer}

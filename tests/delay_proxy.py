"""A slow link for tests: a TCP proxy that delays every byte by a fixed time each way."""

from __future__ import annotations

import asyncio
import threading


class DelayProxy:
    """A TCP proxy that delays every byte by `delay` seconds each way (order kept): a
    slow link between a real worker and a real master, in a thread of its own."""

    def __init__(self, target_port: int, delay: float) -> None:
        self.target_port, self.delay = target_port, delay
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self.thread.start()
        assert started.wait(30), "proxy did not start"

    def _run(self, started) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._conn, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        started.set()
        self.loop.run_forever()

    async def _pump(self, reader, writer) -> None:
        queue: asyncio.Queue = asyncio.Queue()

        async def read() -> None:
            while chunk := await reader.read(1 << 16):
                queue.put_nowait((self.loop.time() + self.delay, chunk))
            queue.put_nowait(None)

        reading = asyncio.create_task(read())
        try:
            while (item := await queue.get()) is not None:
                await asyncio.sleep(max(0.0, item[0] - self.loop.time()))
                writer.write(item[1])
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            reading.cancel()
            writer.close()

    async def _conn(self, reader, writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))

    async def _shutdown(self) -> None:
        self.server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

"""An aiohttp application on 127.0.0.1 in a background thread: how the tests run the local protocol servers
(bench/fake_upstream.py, bench/fake_langfuse.py) next to the code under test."""

from __future__ import annotations

import asyncio
import threading

from aiohttp import web


class AppThread:
    """Serves ``app`` on 127.0.0.1:``port`` (0: a free port, read back into ``port``) from its own event loop.
    ``stop`` closes the port — connections are refused from then on — and ends the handlers still running."""

    name = "app"

    def __init__(self, app: web.Application, port: int = 0, backlog: int = 2048):
        self.app, self.port, self.backlog = app, port, backlog
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"fake-{self.name}")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.2)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, backlog=self.backlog)
        self._loop.run_until_complete(site.start())
        self.port = self._runner.addresses[0][1]
        self._started.set()
        self._loop.run_forever()

    def start(self) -> AppThread:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError(f"the fake {self.name} did not start")
        return self

    def stop(self) -> None:
        if self._runner is not None and self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _shutdown(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()
        # handlers still running (slow streams, stalled exports) would be destroyed pending at exit
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in rest:
            t.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

"""The floor: a bare Python pass-through proxy, no queue, no auth — what a Python gateway costs at the least.

    python -m bench.floor_proxy --port 9200 --upstream http://127.0.0.1:9100/v1

An aiohttp web server on uvloop that forwards ``POST /v1/chat/completions`` and ``POST /v1/completions`` bodies
to the upstream through one pooled ``aiohttp.ClientSession`` (keep-alive connections) and hands the upstream's
answer back unchanged: SSE streams relayed chunk by chunk as they arrive, other bodies whole. Nothing is
parsed, validated or rewritten. ``bench/overhead.py`` measures it beside Gatehouse in the same run, so the
gap between the two is Gatehouse's queue path and features, not Python's HTTP stack.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

# request headers worth passing on (hop-by-hop ones and the client's Host are not)
_FORWARD = ("authorization", "content-type", "accept")
SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


async def forward(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    headers = {h: v for h in _FORWARD if (v := request.headers.get(h)) is not None}
    url = request.app[UPSTREAM] + request.path.removeprefix("/v1")
    async with request.app[SESSION].post(url, data=body, headers=headers) as up:
        content_type = up.headers.get("content-type", "application/octet-stream")
        out = {"content-type": content_type}
        if "content-encoding" in up.headers:  # bodies pass compressed as they came (auto_decompress=False)
            out["content-encoding"] = up.headers["content-encoding"]
        if not content_type.startswith("text/event-stream"):
            return web.Response(status=up.status, body=await up.read(), headers=out)
        resp = web.StreamResponse(status=up.status, headers={**out, "cache-control": "no-cache"})
        await resp.prepare(request)
        async for data in up.content.iter_any():  # whatever arrived, as soon as it arrived
            await resp.write(data)
        await resp.write_eof()
        return resp


def build_app(upstream: str, connections: int = 1024) -> web.Application:
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app[UPSTREAM] = upstream.rstrip("/")

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections, keepalive_timeout=60)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                         timeout=aiohttp.ClientTimeout(total=600)) as session:
            app[SESSION] = session
            yield

    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/v1/chat/completions", forward)
    app.router.add_post("/v1/completions", forward)
    app.router.add_get("/health", health)
    return app


async def health(_: web.Request) -> web.Response:
    return web.Response(text="ok")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=9200)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--upstream", required=True, help="the upstream's /v1 base, e.g. http://127.0.0.1:9100/v1")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(build_app(args.upstream), host=args.host, port=args.port, access_log=None, print=None,
                backlog=4096)


if __name__ == "__main__":
    main()

"""What authentication (and rate limiting) costs per credential form.

    python bench/auth_overhead.py

Two measurements in one run:
  1. in-process: ``Authenticator.authenticate`` on a real request scope, against an embedded Valkey and
     PostgreSQL, for every credential form (warm caches: the steady state), plus a lookup that misses the
     process-local cache and goes to Redis;
  2. end to end at concurrency 1 through gateway + worker + fake upstream, interleaved in blocks:
     the master key (no auth work beyond a compare) against a virtual key, a virtual key with an RPM limit
     (one Redis Lua call more) and an HS256 JWT; the difference of medians is the added latency.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import time
from typing import Any

import aiohttp
import jwt
import orjson
from redis.asyncio import Redis
from starlette.requests import Request

from bench.stack import KEY, running_stack
from core.keys.store import KeyStore
from core.settings import JwtSettings
from gateway.auth import Authenticator
from gateway.auth.jwt_auth import JwtVerifier
from gateway.keys.cache import KeyCache

SECRET = "bench-shared-secret-for-hs256-tokens-0123456789"
BODY = orjson.dumps({"model": "bench", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16})


def request_with(headers: dict[str, str]) -> Request:
    return Request({"type": "http", "method": "POST", "path": "/v1/chat/completions", "query_string": b"",
                    "headers": [(k.encode(), v.encode()) for k, v in headers.items()]})


async def time_calls(fn: Any, n: int) -> float:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e6


async def in_process(redis_url: str, database_url: str, n: int) -> dict[str, float]:
    import asyncpg

    from gateway.db.migrate import migrate

    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    async with pool.acquire() as conn:
        await migrate(conn)
    redis = Redis.from_url(redis_url)
    cache = KeyCache(KeyStore(pool), redis)
    verifier = JwtVerifier(JwtSettings(hs256_secret=SECRET))
    auth = Authenticator(KEY, cache, verifier)
    _, cred = await cache.store.create(key_alias="bench")  # type: ignore[union-attr]
    token = jwt.encode({"sub": "bench", "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")
    basic = base64.b64encode(f"{cred.key_id}:{cred.secret}".encode()).decode()
    forms = {
        "master key (Bearer)": {"authorization": f"Bearer {KEY}"},
        "virtual key (Bearer)": {"authorization": f"Bearer {cred.bearer}"},
        "virtual key (x-api-key)": {"x-api-key": cred.bearer},
        "virtual key (Basic id:secret)": {"authorization": f"Basic {basic}"},
        "JWT HS256": {"authorization": f"Bearer {token}"},
    }
    out = {}
    for name, headers in forms.items():
        req = request_with(headers)
        await auth.authenticate(req)  # warm the caches
        out[name] = await time_calls(lambda r=req: auth.authenticate(r), n)

    async def cold() -> None:
        cache._local.clear()
        await auth.authenticate(request_with(forms["virtual key (Bearer)"]))

    out["virtual key, local cache miss (Redis)"] = await time_calls(cold, max(200, n // 10))
    await redis.aclose()
    await pool.close()
    return out


async def end_to_end(base: str, keys: dict[str, str], n: int, block: int) -> dict[str, float]:
    lat: dict[str, list[float]] = {k: [] for k in keys}
    async with aiohttp.ClientSession() as s:
        async def one(key: str) -> float:
            t0 = time.perf_counter()
            async with s.post(base + "/v1/chat/completions", data=BODY,
                              headers={"authorization": f"Bearer {key}", "content-type": "application/json"}) as r:
                await r.read()
                assert r.status == 200, r.status
            return time.perf_counter() - t0

        for key in keys.values():
            for _ in range(50):
                await one(key)
        for _ in range(n // block):
            for name, key in keys.items():
                for _ in range(block):
                    lat[name].append(await one(key))
    return {k: statistics.median(v) * 1e3 for k, v in lat.items()}


async def run(args: argparse.Namespace) -> str:
    async with running_stack(postgres=True, gatehouse={"jwt": {"hs256_secret": SECRET}}) as st:
        assert st.database_url is not None
        micro = await in_process(st.redis_url, st.database_url, args.calls)
        async with aiohttp.ClientSession(headers={"authorization": f"Bearer {KEY}"}) as s:
            async def make(**fields: Any) -> str:
                async with s.post(st.gateway + "/key/generate", json=fields) as r:
                    return str((await r.json())["key"])
            keys = {"master key": KEY, "virtual key": await make(), "virtual key + RPM limit": await make(
                rpm_limit=10_000_000), "JWT HS256": jwt.encode({"sub": "bench", "exp": int(time.time()) + 3600},
                                                               SECRET, algorithm="HS256")}
        e2e = await end_to_end(st.gateway, keys, args.requests, args.block)
    lines = ["| credential form | authenticate() p50 (in-process, warm) |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} µs |" for k, v in micro.items()]
    lines += ["", "| credential | c=1 p50 through the gateway | vs master key |", "|---|---|---|"]
    lines += [f"| {k} | {v:.3f} ms | {v - e2e['master key']:+.3f} ms |" for k, v in e2e.items()]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=5000, help="in-process calls per form (default 5000)")
    p.add_argument("--requests", type=int, default=1000, help="end-to-end requests per credential (default 1000)")
    p.add_argument("--block", type=int, default=50, help="interleaving block (default 50)")
    args = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(asyncio.run(run(args)))


if __name__ == "__main__":
    main()

"""Gateway throughput against a bare ASGI echo, measured with wrk; writes docs/bench-gateway.md.

Run: `uv run --frozen --no-sync python -m bench.bench_gateway` (about two minutes; needs `wrk`,
Kafka and Redis of the local stack). One gateway process (uvicorn, uvloop, httptools) in front
of one echo process, on the same two shared cores as wrk: ratios matter, absolute figures do not.
"""

import os
import platform
import re
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson

from tests.support.infra import free_port, infra_env
from tests.support.tokens import AUDIENCE, ISSUER, SigningKey

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "bench-gateway.md"
ROUNDS = 3
SECONDS = 5
CONNECTIONS = 32
# Limits far above what one benchmark can send: the limiter runs (its script is the same) but
# never refuses. A 10 s window keeps the sliding log's sorted set small.
POLICIES = [
    {"name": "api-user", "limit": 10**9, "window_s": 10, "scope": "api", "key": "user"},
    {"name": "api-ip", "limit": 10**9, "window_s": 10, "scope": "api", "key": "ip"},
]


def wait_ok(url: str, within: float = 60.0) -> None:
    """Poll `url` until it answers 200."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(url)


def wrk(url: str, headers: dict[str, str]) -> tuple[float, float]:
    """(requests/s, p50 latency in ms) of one wrk run."""
    args = ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{SECONDS}s", "--latency"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    assert p50 is not None, out
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p50.group(2)]
    return rps, float(p50.group(1)) * scale


def main() -> None:
    """Start the echo and a gateway, run every scenario ROUNDS times interleaved, write docs."""
    key = SigningKey.generate()
    token, _ = key.mint(uuid.uuid4().hex, ttl_s=3600)
    echo_port, gateway_port, lean_port = free_port(), free_port(), free_port()
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        **infra_env(prefix),
        "GATEWAY_TASKS_URL": f"http://127.0.0.1:{echo_port}",
        "GATEWAY_JWKS_JSON": orjson.dumps(key.jwks()).decode(),
        "GATEWAY_RATE_LIMITS": orjson.dumps(POLICIES).decode(),
        "GATEWAY_CACHE_TTL_S": "3600",
        "TASKBUS_JWT_ISSUER": ISSUER,
        "TASKBUS_JWT_AUDIENCE": AUDIENCE,
        "TASKBUS_LOG_LEVEL": "WARNING",
        "TASKBUS_TRACE_SAMPLE_RATIO": "0",
    }
    procs = [
        subprocess.Popen([sys.executable, "-m", "bench.echo_app", str(echo_port)], cwd=ROOT),
        *(
            subprocess.Popen(
                [sys.executable, "-m", module],
                cwd=ROOT,
                env={**env, "GATEWAY_PORT": str(port)},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for module, port in (("gateway", gateway_port), ("bench.gateway_lean", lean_port))
        ),
    ]
    echo = f"http://127.0.0.1:{echo_port}/api/tasks/t1"
    gateway = f"http://127.0.0.1:{gateway_port}/api/tasks/t1"
    lean = f"http://127.0.0.1:{lean_port}/api/tasks/t1"
    auth = {"Authorization": f"Bearer {token}"}
    no_cache = {**auth, "Cache-Control": "no-cache"}
    scenarios = {
        "bare ASGI echo (direct)": (echo, {}),
        "gateway as shipped, cache HIT (JWT cached, 1 Redis script, L1)": (gateway, auth),
        "gateway as shipped, proxied (no-cache: JWT, Redis script, upstream hop)": (
            gateway,
            no_cache,
        ),
        "gateway as shipped, 401 at the edge (no token)": (gateway, {}),
        "gateway without OTel instrumentation, cache HIT": (lean, auth),
        "gateway without OTel instrumentation, proxied": (lean, no_cache),
        "gateway without OTel instrumentation, 401": (lean, {}),
    }
    try:
        wait_ok(echo)
        for port in (gateway_port, lean_port):
            wait_ok(f"http://127.0.0.1:{port}/readyz")
        httpx.get(gateway, headers=auth)  # fill the cache (L2 shared, each process fills its L1)
        httpx.get(lean, headers=auth)
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in scenarios}
        for _ in range(ROUNDS):
            for name, (url, headers) in scenarios.items():
                results[name].append(wrk(url, headers))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(20)
    write(results)


def write(results: dict[str, list[tuple[float, float]]]) -> None:
    """The markdown table, ratios against the direct echo."""
    medians = {
        name: (statistics.median(r for r, _ in runs), statistics.median(p for _, p in runs))
        for name, runs in results.items()
    }
    base = next(iter(medians.values()))[0]
    rows = "\n".join(
        f"| {name} | {rps:,.0f} | {rps / base:.2f}x | {p50:.2f} |"
        for name, (rps, p50) in medians.items()
    )
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    OUT.write_text(
        f"""# Gateway throughput

Measured {stamp} on {platform.machine()}, Python {platform.python_version()}, shared 2-core
machine (other engineers' work running: expect ±20-30 % noise). wrk -t2 -c{CONNECTIONS},
{SECONDS} s per run, {ROUNDS} interleaved rounds, medians. One gateway process and one echo
process (both uvicorn + uvloop + httptools) share the cores with wrk.
Command: `uv run --frozen --no-sync python -m bench.bench_gateway`.

| path | requests/s | vs bare echo | p50 ms |
|---|---|---|---|
{rows}

Every gateway row runs the full edge: helmet and CORS headers, request id, body read, JWT
(verified once, then from the token cache) and the one Redis script per request (two sliding
windows, revocation check, cache generation). A HIT is then answered from the in-process L1;
the proxied row adds the pooled aiohttp hop to the echo. "As shipped" is `python -m gateway`
(common.runner: a server span per request (common/asgi.py), Redis and aiohttp
client spans, RED metrics); "without OTel instrumentation" is `bench/gateway_lean.py`, the same
app with the RED metrics only: the difference is what per-request tracing costs here, with
TASKBUS_TRACE_SAMPLE_RATIO=0 (sampling every request costs more still).
""",
        encoding="utf-8",
    )
    print(OUT.read_text())


if __name__ == "__main__":
    main()

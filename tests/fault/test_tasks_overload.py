"""200 connections on one tasks process: admitted requests keep a bounded p99, the rest are shed
with 503 problem+json and Retry-After, never a 500, and no request errs or is lost.

The load comes from wrk, not from Python: an httpx client of 200 coroutines on the same two cores
took the CPU the service needed and measured its own queueing (p99 ~6 s, where wrk measures the
same service's served p99 at ~1.3 s). wrk runs one connection per thread, so each thread's Lua
pairs its request() and response() and times the served requests alone.

Accounting, asserted: every response is a 200 (served) or a well-formed 503 (shed); served + shed
is every request wrk completed; wrk's connect, read, write and timeout errors are 0.
"""

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.tasks import tasks_process
from tests.support.tokens import SigningKey

pytestmark = pytest.mark.e2e
CONNECTIONS = 200
LOAD_S = 5
# Bounds on the served p99, measured ~0.3 s (honour) and ~1.1 s (hot-loop) on two shared cores:
# an admitted request waits at most shed_wait_s (0.5 s) for one of 16 slots; a hot loop of 503s
# also keeps the event loop busy before the shedder sees a request. The rest is margin.
SERVED_P99_BOUND_S = {"honour": 1.0, "hot-loop": 2.0}

# One connection per thread: request() and response() alternate, so `started` belongs to the
# response that follows. Shed responses are checked here (wrk keeps no headers for Python).
LUA = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } timespec_t;
int clock_gettime(int clk_id, timespec_t *tp);
]]
local ts = ffi.new("timespec_t")
local function now_us()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1000000 + tonumber(ts.tv_nsec) / 1000
end
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  statuses, served, malformed, pause, started = {}, {}, 0, 0, 0
  honour = args[1] == "honour"
end
function request() started = now_us() return wrk.request() end
function delay() local p = pause pause = 0 return p end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 200 then table.insert(served, math.floor(now_us() - started)) end
  if status == 503 then
    local h = {}
    for k, v in pairs(headers) do h[string.lower(k)] = v end
    local retry = tonumber(h["retry-after"])
    if h["content-type"] ~= "application/problem+json" or not retry or retry <= 0 then
      malformed = malformed + 1
    end
    if honour and retry then pause = 1000 * retry end
  end
end
function done(summary, latency, requests)
  local counts, all, bad = {}, {}, 0
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("statuses")) do counts[tostring(k)] = (counts[tostring(k)] or 0) + v end
    for _, v in ipairs(t:get("served")) do table.insert(all, v) end
    bad = bad + t:get("malformed")
  end
  table.sort(all)
  local function q(p)
    if #all == 0 then return 0 end
    return all[math.max(1, math.ceil(#all * p))]
  end
  local parts = {}
  for k, v in pairs(counts) do table.insert(parts, string.format('"%s": %d', k, v)) end
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests": %d, "statuses": {%s}, "malformed_503": %d, "served_p50_us": %d, '
    .. '"served_p99_us": %d, "served_max_us": %d, "errors": %d}\\n',
    summary.requests, table.concat(parts, ", "), bad, q(0.5), q(0.99), q(1.0),
    e.connect + e.read + e.write + e.timeout))
end
"""


def _wrk(url: str, token: str, script: Path, mode: str) -> dict[str, Any]:
    """wrk's accounting of LOAD_S seconds of CONNECTIONS looping connections."""
    wrk = shutil.which("wrk")
    if wrk is None:
        pytest.fail("wrk is missing: deploy/local/install.sh installs it (make install)")
    command = [wrk, f"-t{CONNECTIONS}", f"-c{CONNECTIONS}", f"-d{LOAD_S}s", "--timeout", "10s"]
    command += ["-s", str(script), "-H", f"Authorization: Bearer {token}", url, "--", mode]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("WRK "))
    result: dict[str, Any] = json.loads(line.removeprefix("WRK "))
    return result


@pytest.mark.parametrize("mode", ["hot-loop", "honour"])
def test_under_200_connections_admitted_requests_keep_a_bounded_p99_and_the_rest_get_503(
    prefix: str, tmp_path: Path, mode: str
) -> None:
    """`hot-loop` clients retry a 503 at once (the worst case); `honour` ones wait Retry-After."""
    key = SigningKey.generate()
    token, _ = key.mint("overload-user")
    service = tasks_process(prefix, key, TASKS_REMINDERS_ENABLED="false").start()
    try:
        service.wait_ready()
        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=service.url, headers=auth, timeout=15) as api:
            for i in range(20):
                assert api.post("/api/tasks", json={"title": f"t{i}"}).status_code == 201
        script = tmp_path / "overload.lua"
        script.write_text(LUA)
        wrk = _wrk(f"{service.url}/api/tasks?limit=20", token, script, mode)
    finally:
        service.stop()
    print(f"overload {mode}: {wrk}")
    served, shed = wrk["statuses"].get("200", 0), wrk["statuses"].get("503", 0)
    assert set(wrk["statuses"]) <= {"200", "503"}, wrk  # never a 500, nor anything else
    assert served + shed == wrk["requests"], wrk
    assert wrk["errors"] == 0, wrk  # no connection refused, reset or timed out: none lost
    assert wrk["malformed_503"] == 0, wrk  # every 503 is problem+json with Retry-After
    assert served > 0
    assert shed > 0
    assert wrk["served_p99_us"] / 1e6 < SERVED_P99_BOUND_S[mode], wrk

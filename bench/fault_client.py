#!/usr/bin/env python3
"""Send a fixed number of LiteralAI `AddStep` writes and report what the
client saw: success rate, latency percentiles, and the upstream's attempts per
request (read from fault_upstream.py's /__stats).

A write succeeds the way the LiteralAI SDK judges it: HTTP 2xx, a JSON body,
no `errors`, and every `data.<alias>.ok` true. Like the SDK, the client gives
up after 10 s.
"""

import argparse
import asyncio
import json
import sys
import time

import httpx

from steps import add_step_body


def percentile(sorted_values, q):
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[i]


def sdk_success(resp):
    if not 200 <= resp.status_code < 300:
        return False
    try:
        body = resp.json()
    except ValueError:
        return False
    if body.get("errors"):
        return False
    data = body.get("data") or {}
    return all(isinstance(v, dict) and v.get("ok") is True for v in data.values()) and data


async def run(target, upstream, n, concurrency, run_id, timeout):
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    results = []
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=target, limits=limits,
                                 timeout=httpx.Timeout(timeout)) as client:
        async def one(i):
            body = add_step_body(f"{run_id}-{i:06d}")
            async with sem:
                t0 = time.perf_counter()
                try:
                    r = await client.post("/api/graphql", content=body, headers={
                        "content-type": "application/json",
                        "x-api-key": "bench-key", "x-client-name": "py-literal-client",
                        "x-client-version": "0.1.300"})
                    ok = sdk_success(r)
                    outcome = "ok" if ok else f"http_{r.status_code}"
                    if ok and r.headers.get("x-sidecar-spooled") == "true":
                        # Acknowledged from the spool, delivered later.
                        outcome = "ok_spooled"
                except httpx.HTTPError as e:
                    ok, outcome = False, type(e).__name__
                results.append((ok, time.perf_counter() - t0, outcome))

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - started
    stats = {}
    if upstream:
        async with httpx.AsyncClient(timeout=5) as c:
            stats = (await c.get(f"{upstream}/__stats")).json()
    lat = sorted(r[1] for r in results)
    outcomes = {}
    for _, _, o in results:
        outcomes[o] = outcomes.get(o, 0) + 1
    ok = sum(1 for r in results if r[0])
    return {
        "requests": n,
        "succeeded": ok,
        "success_rate": ok / n,
        "p50_ms": percentile(lat, 0.50) * 1000,
        "p99_ms": percentile(lat, 0.99) * 1000,
        "max_ms": lat[-1] * 1000 if lat else float("nan"),
        "wall_s": wall,
        "outcomes": outcomes,
        "upstream_attempts": stats.get("attempts"),
        "attempts_per_request": (stats.get("attempts", 0) / n) if stats else None,
        "upstream_faults": stats.get("faults"),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", required=True, help="base URL the client talks to")
    p.add_argument("--upstream", help="fault upstream base URL, for /__stats")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--run-id", default="run")
    p.add_argument("--timeout", type=float, default=10.0)
    a = p.parse_args()
    out = asyncio.run(run(a.target, a.upstream, a.requests, a.concurrency, a.run_id, a.timeout))
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A seeded, misbehaving LiteralAI-style upstream for fault benchmarks.

POST /api/graphql with an `AddStep` batch stores the steps and answers like
the real service ({"data": {"step0": {"ok": true, ...}}}), except that a fixed
share of attempts fails. Whether an attempt fails, and how, depends only on
(seed, first step id, attempt number for that id) -- never on arrival order --
so every proxy under test meets the same faults for the same requests.

Faults, in equal shares: close the connection without answering, 502, 503,
429 with Retry-After: 1, hang (answer nothing for --hang seconds, then close).

GET /__stats   -> {"attempts": n, "keys": n, "stored": n, "faults": {...}}
POST /__reset  -> clears everything

Loopback only. Standard library only.
"""

import argparse
import asyncio
import hashlib
import json
import sys

FAULTS = ["close", "502", "503", "429", "hang"]


class State:
    def __init__(self, seed, fail_pct, hang):
        self.seed = seed
        self.fail_pct = fail_pct
        self.hang = hang
        self.reset()

    def reset(self):
        self.attempts = 0
        self.per_key = {}
        self.stored = {}
        self.faults = {f: 0 for f in FAULTS}

    def decide(self, key):
        n = self.per_key.get(key, 0)
        self.per_key[key] = n + 1
        h = hashlib.sha256(f"{self.seed}:{key}:{n}".encode()).digest()
        roll = int.from_bytes(h[:4], "big") % 10000
        if roll >= self.fail_pct * 100:
            return None
        return FAULTS[h[4] % len(FAULTS)]


def response(status, body, extra=b""):
    reason = {200: b"OK", 404: b"Not Found", 429: b"Too Many Requests",
              502: b"Bad Gateway", 503: b"Service Unavailable"}.get(status, b"X")
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n"
            % (status, reason, len(body), extra)) + body


async def handle(reader, writer, st):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                if line.lower().startswith("content-length:"):
                    length = int(line.split(":", 1)[1])
            body = await reader.readexactly(length) if length else b""
            if path == "/__stats":
                out = json.dumps({"attempts": st.attempts, "keys": len(st.per_key),
                                  "stored": len(st.stored), "faults": st.faults}).encode()
                writer.write(response(200, out))
            elif path == "/__reset":
                st.reset()
                writer.write(response(200, b"{}"))
            elif path == "/api/graphql" and method == "POST":
                req = json.loads(body)
                variables = req.get("variables") or {}
                ids = [v for k, v in sorted(variables.items()) if k.startswith("id_")]
                key = ids[0] if ids else hashlib.sha1(body).hexdigest()
                st.attempts += 1
                fault = st.decide(key)
                if fault:
                    st.faults[fault] += 1
                if fault == "close":
                    writer.close()
                    return
                if fault == "hang":
                    await asyncio.sleep(st.hang)
                    writer.close()
                    return
                if fault in ("502", "503"):
                    writer.write(response(int(fault), b'{"error":"upstream busy"}'))
                elif fault == "429":
                    writer.write(response(429, b'{"error":"slow down"}', b"retry-after: 1\r\n"))
                else:
                    data = {}
                    for i, step_id in enumerate(ids):
                        st.stored[step_id] = variables.get(f"output_{i}")
                        data[f"step{i}"] = {"ok": True, "message": "Step ingested"}
                    writer.write(response(200, json.dumps({"data": data}).encode()))
            else:
                writer.write(response(404, b'{"error":"not found"}'))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--fail-pct", type=float, default=30.0)
    p.add_argument("--hang", type=float, default=12.0)
    a = p.parse_args()
    st = State(a.seed, a.fail_pct, a.hang)
    server = await asyncio.start_server(lambda r, w: handle(r, w, st), "127.0.0.1", a.port,
                                        backlog=1024)
    print(f"fault upstream on 127.0.0.1:{a.port} seed={a.seed} fail={a.fail_pct}%",
          file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())

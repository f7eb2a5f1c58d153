#!/usr/bin/env python3
"""A LiteralAI-style backend for the end-to-end tests (loopback only).

Data port: POST /api/graphql stores `ingestStep` upserts by step id (any
number of aliases per request) and answers like the real service:
{"data": {"step0": {"ok": true, "message": "..."}, ...}}; `upsertThread`
sets the fields it is given (name, participantId) on the thread with that id
and answers the thread. Other GraphQL operations get {"data": {}}.

Faults are deterministic: whether request R fails on its n-th arrival, and
how, is a hash of (seed, sha256(R's body), n) -- never of arrival order --
so a run is reproducible whatever the timing.

Control port (JSON):
  GET  /state            steps (id -> last output content), counters
  GET  /summary          the same without the per-request history (soaks)
  POST /schedule         {"faults": [...], "rate": 0.3, "seed": 1, "hang": 12}
  POST /blackout         {"seconds": 20}: stop listening on the data port
  POST /unauthorized     {"seconds": 15}: answer every request 401 (a key
                         being rotated), then take them again
  POST /reset            forget everything

Fault names: close (drop the connection, no answer), hang (answer nothing for
`hang` seconds, then drop), 502, 503, 504, 429 (Retry-After: 1), gql_error
(200 with a transient GraphQL error), not_ok (200 with the first alias
ok:false; the request's other aliases are stored).
Documents are read with graphql-core, as a GraphQL server reads them.
"""

import argparse
import asyncio
import hashlib
import json
import sys
import time

from graphql import FieldNode, GraphQLError, OperationDefinitionNode, Undefined, parse
from graphql.utilities import value_from_ast_untyped

REASONS = {200: "OK", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests", 502: "Bad Gateway",
           503: "Service Unavailable", 504: "Gateway Timeout"}


class Backend:
    def __init__(self, port, host="127.0.0.1"):
        self.port = port
        self.host = host
        self.server = None
        self.blackout_until = 0.0
        self.unauthorized_until = 0.0
        self.reset()
        self.schedule = {"faults": [], "rate": 0.0, "seed": 1, "hang": 12.0}

    def reset(self):
        self.participants = {}
        self.threads = {}
        self.steps = {}
        self.applied = []
        self.received = []
        self.requests = 0
        self.per_body = {}
        self.faults = {}

    def decide(self, body):
        sch = self.schedule
        if not sch["faults"] or sch["rate"] <= 0:
            return None
        digest = hashlib.sha256(body).hexdigest()
        n = self.per_body.get(digest, 0)
        self.per_body[digest] = n + 1
        h = hashlib.sha256(f"{sch['seed']}:{digest}:{n}".encode()).digest()
        if int.from_bytes(h[:4], "big") % 10000 >= sch["rate"] * 10000:
            return None
        return sch["faults"][h[4] % len(sch["faults"])]

    async def serve(self):
        self.server = await asyncio.start_server(self.handle, self.host, self.port, backlog=1024)

    async def blackout(self, seconds):
        self.blackout_until = time.monotonic() + seconds
        if self.server is not None:
            self.server.close()
            # Established keep-alive connections go too: a dead host.
            for w in list(getattr(self, "writers", [])):
                w.close()
            self.server = None
        await asyncio.sleep(seconds)
        await self.serve()

    async def handle(self, reader, writer):
        self.writers = getattr(self, "writers", set())
        self.writers.add(writer)
        try:
            while True:
                method, path, body = await read_request(reader)
                if not await self.answer(method, path, body, writer):
                    return
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    async def answer(self, method, path, body, writer):
        """Write one answer; False when the connection must be dropped."""
        if path != "/api/graphql" or method != "POST":
            write(writer, 404, {"error": "not found"})
            return True
        self.requests += 1
        if time.monotonic() < self.unauthorized_until:
            self.faults["401"] = self.faults.get("401", 0) + 1
            write(writer, 401, {"errors": [{"message": "Invalid API key",
                                            "extensions": {"code": "UNAUTHENTICATED"}}]})
            return True
        try:
            req = json.loads(body)
        except ValueError:
            write(writer, 400, {"errors": [{"message": "body is not JSON"}]})
            return True
        fields = root_fields(req)
        steps = []
        for key, name, args in fields:
            if name == "ingestStep" and isinstance(args.get("id"), str):
                out = args.get("output")
                content = out.get("content") if isinstance(out, dict) else out
                steps.append((key, args["id"], content))
        upsert = next((args for _, name, args in fields if name == "upsertThread"), None)
        thread = upsert.get("id") if upsert else None
        variables = upsert or {}
        if not steps and not thread:
            write(writer, 200, {"data": self.users(fields)})
            return True
        fault = self.decide(body)
        # Every step-bearing request as it arrived, for diagnosing order.
        self.received.append({"t": round(time.monotonic(), 3), "fault": fault,
                              "steps": [[k, sid, c] for k, sid, c in steps]})
        if fault:
            self.faults[fault] = self.faults.get(fault, 0) + 1
        if fault == "close":
            return False
        if fault == "hang":
            await asyncio.sleep(self.schedule["hang"])
            return False
        if fault in ("502", "503", "504"):
            write(writer, int(fault), {"error": "upstream unavailable"})
            return True
        if fault == "429":
            write(writer, 429, {"error": "rate limited"}, b"retry-after: 1\r\n")
            return True
        if fault == "gql_error" or (thread and fault == "not_ok"):
            write(writer, 200, {"data": None, "errors": [
                {"message": "Internal server error", "extensions": {"code": "INTERNAL_SERVER_ERROR"}}]})
            return True
        if thread:
            t = self.threads.setdefault(thread, {})
            for key in ("name", "participantId", "metadata", "tags"):
                if key in variables:
                    t[key] = variables[key]
            write(writer, 200, {"data": {"upsertThread": {
                "id": thread, "name": t.get("name"), "metadata": t.get("metadata"), "tags": t.get("tags"),
                "createdAt": "2026-01-01T00:00:00Z",
                "participant": {"id": t["participantId"], "identifier": None, "metadata": None}
                if t.get("participantId") else None}}})
            return True
        data = {}
        for idx, (key, step_id, content) in enumerate(steps):
            if fault == "not_ok" and idx == 0:
                # One alias fails; the others of the request are stored.
                data[key] = {"ok": False, "message": "Could not ingest step: temporary storage failure"}
                continue
            data[key] = {"ok": True, "message": "Step ingested"}
            self.steps[step_id] = content
            self.applied.append([step_id, content])
        write(writer, 200, {"data": data})
        return True

    def users(self, fields):
        """Participants (Chainlit's login persists its user): `participant`
        finds one by id or identifier, `createParticipant` and
        `updateParticipant` store one. Other operations answer nothing."""
        data = {}
        for key, name, args in fields:
            if name == "participant":
                found = [u for u in self.participants.values()
                         if u["id"] == args.get("id") or u["identifier"] == args.get("identifier")]
                data[key] = found[0] if found else None
            elif name == "createParticipant":
                user = {"id": f"user-{len(self.participants) + 1}", "identifier": args.get("identifier"),
                        "metadata": args.get("metadata") or {}, "createdAt": "2026-01-01T00:00:00Z"}
                self.participants[user["id"]] = user
                data[key] = user
            elif name == "updateParticipant" and args.get("id") in self.participants:
                user = self.participants[args["id"]]
                if "metadata" in args:
                    user["metadata"] = args["metadata"]
                data[key] = user
        return data


def root_fields(req):
    """(response key, field name, arguments) of each root field of the
    request's operation, as a GraphQL server reads them: any alias, any
    variable name, variables resolved."""
    try:
        doc = parse(req.get("query") or "")
    except GraphQLError:
        return []
    variables = req.get("variables") or {}
    ops = [d for d in doc.definitions if isinstance(d, OperationDefinitionNode)]
    wanted = req.get("operationName")
    op = next((o for o in ops if wanted and o.name and o.name.value == wanted), ops[0] if ops else None)
    if op is None:
        return []
    out = []
    for sel in op.selection_set.selections:
        if not isinstance(sel, FieldNode):
            continue
        args = {}
        for a in sel.arguments:
            v = value_from_ast_untyped(a.value, variables)
            if v is not Undefined:
                args[a.name.value] = v
        out.append(((sel.alias or sel.name).value, sel.name.value, args))
    return out


def write(writer, status, obj, extra=b""):
    body = json.dumps(obj).encode()
    writer.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n"
                 % (status, REASONS.get(status, "X").encode(), len(body), extra) + body)


async def read_request(reader):
    """One HTTP/1.1 request with a Content-Length body: (method, path, body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    length = 0
    for line in lines[1:]:
        if line.lower().startswith("content-length:"):
            length = int(line.split(":", 1)[1])
    body = await reader.readexactly(length) if length else b""
    return method, path, body


async def control(backend, reader, writer):
    try:
        method, path, raw = await read_request(reader)
        body = json.loads(raw or b"{}")
        if path == "/state":
            out = {"steps": backend.steps, "threads": backend.threads, "applied": backend.applied,
                   "received": backend.received,
                   "requests": backend.requests,
                   "faults": backend.faults, "listening": backend.server is not None}
        elif path == "/summary":
            # What a long run needs: the state without the per-request history.
            out = {"steps": backend.steps, "threads": backend.threads, "requests": backend.requests,
                   "faults": backend.faults, "listening": backend.server is not None}
        elif path == "/schedule":
            backend.schedule.update(body)
            out = backend.schedule
        elif path == "/blackout":
            asyncio.get_running_loop().create_task(backend.blackout(float(body["seconds"])))
            await asyncio.sleep(0.05)
            out = {"ok": True}
        elif path == "/unauthorized":
            backend.unauthorized_until = time.monotonic() + float(body["seconds"])
            out = {"ok": True}
        elif path == "/reset":
            backend.reset()
            out = {"ok": True}
        else:
            out = {"error": "unknown"}
        data = json.dumps(out).encode()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: %d\r\n\r\n" % len(data) + data)
        await writer.drain()
    finally:
        writer.close()


async def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--control-port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1", help="address of the data port (the control port stays on loopback)")
    a = p.parse_args()
    backend = Backend(a.port, a.host)
    await backend.serve()
    ctl = await asyncio.start_server(lambda r, w: control(backend, r, w), "127.0.0.1", a.control_port)
    print(f"backend on {a.host}:{a.port}, control on 127.0.0.1:{a.control_port}", file=sys.stderr, flush=True)
    async with ctl:
        await ctl.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())

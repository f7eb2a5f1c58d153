#!/usr/bin/env python3
"""Write the fuzz targets' seed corpora into fuzz/seeds/<target>/.

From the LiteralAI SDK's own documents (tests/e2e/sdk_documents.py, run
with the SDK's interpreter: pass it as the first argument; without it the
SDK's documents are left out), the shipped and deployment configs, and the
requests, answers and header values the tests use. Re-run after the SDK's
documents or the configs change; the corpora are committed.
"""

import hashlib
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def put(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(HERE, "seeds", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()[:16]), "wb") as f:
        f.write(data)


def add_step(steps, extra_vars=None):
    decls, fields, variables = [], [], {}
    for i, (sid, content) in enumerate(steps):
        decls.append(f"$id_{i}: String!, $threadId_{i}: String, $output_{i}: Json, $metadata_{i}: Json")
        fields.append(f"step{i}: ingestStep(id: $id_{i}, threadId: $threadId_{i}, output: $output_{i}, "
                      f"metadata: $metadata_{i}) {{ ok message }}")
        variables.update({f"id_{i}": sid, f"threadId_{i}": "t-1", f"output_{i}": {"content": content},
                          f"metadata_{i}": {"n": i, "s": 'quote " brace } dollar $x é'}})
    variables.update(extra_vars or {})
    return json.dumps({"query": "mutation AddStep(%s) {\n%s\n}" % (", ".join(decls), "\n".join(fields)),
                       "variables": variables})


def requests():
    out = [add_step([("s1", "hello")]), add_step([("s1", "v1"), ("s2", "v2"), ("s1", "v3")]),
           add_step([(f"s{i}", "x") for i in range(12)]),
           json.dumps({"query": "mutation UpsertThread($id: String!, $name: String) { upsertThread(id: $id, name: $name) { id name } }",
                       "variables": {"id": "t-1", "name": "First"}}),
           json.dumps({"query": "mutation DeleteThread($thread_id: String!) { deleteThread(id: $thread_id) { id } }",
                       "variables": {"thread_id": "t-1"}}),
           json.dumps({"query": "mutation M { ...F } fragment F on Mutation { a: ingestStep(id: \"x\") { ok } }"}),
           json.dumps({"query": "mutation AddStep($input: Json) { step0: ingestStep(input: $input) { ok } }",
                       "variables": {"input": {"id": "inside"}}}),
           json.dumps({"query": "query GetThread($id: String!) { threadDetail(id: $id) { id steps { id } } }",
                       "variables": {"id": "t"}, "operationName": "GetThread"}),
           json.dumps({"query": "{ a b: c }"}), "[]", "{}", "not json"]
    if len(sys.argv) > 1:
        docs = json.loads(subprocess.check_output(
            [sys.argv[1], os.path.join(REPO, "tests", "e2e", "sdk_documents.py")]))
        for d in docs["documents"]:
            out.append(json.dumps({"query": d["query"], "variables": {}}))
    return out


def main():
    for r in requests():
        for t in ("graphql_request", "split_join"):
            put(t, r)
        # A stored entry: its encoded headers, then its body.
        headers = b"x-api-key\0k\0x-client-name\0py-literal-client\0x-request-id\0abc\0"
        put("spool_record", len(headers).to_bytes(2, "little") + headers + r.encode())
    answers = [
        {"data": {"step0": {"ok": True, "message": "done"}, "step1": {"ok": True}}},
        {"data": {"step0": {"ok": True}, "step1": {"ok": False, "message": "db busy"}}},
        {"data": {"step0": {"ok": False, "message": "Invalid step type"}}},
        {"data": {"step0": None}, "errors": [{"message": "x", "path": ["step0"],
                                              "extensions": {"code": "INTERNAL_SERVER_ERROR"}}]},
        {"errors": [{"message": "bad key", "extensions": {"code": "UNAUTHENTICATED"}}], "data": None},
        {"data": {"step0": {"ok": True}}},
        {"data": {}},
    ]
    for a in answers:
        put("alias_verdicts", b"\x02" + json.dumps(a).encode())
    put("alias_verdicts", b"\x01<html>bad gateway</html>")
    for path in ["config/sidecar.toml", "deploy/kubernetes/config/sidecar.toml"]:
        with open(os.path.join(REPO, path)) as f:
            put("config", f.read())
    put("config", '[upstream]\nurl = "http://127.0.0.1:9"\n\0DATALAYER_SIDECAR_UPSTREAM_URL=https://b.example\n')
    put("config", '[upstream]\nurl = "http://127.0.0.1:9"\n[[routes]]\nname = "r"\nidempotent = true\non_failure = "spool"\n')
    for h in ["7", "0", "18446744073709551615", "Sun, 06 Nov 1994 08:49:37 GMT", "soon", "-1",
              "0123456789abcdef0123456789abcdef", 'id "quoted" \\ backslash']:
        put("headers", h)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Drive the real, unmodified Chainlit LiteralAI data layer.

Uses `chainlit.data.literalai.LiteralDataLayer(api_key=..., server=URL)`,
step dicts from Chainlit's own `Message` / `Step` `to_dict()`, and fires
writes the way Chainlit does: `asyncio.create_task(data_layer.create_step(...))`
and later `update_step(...)`, never awaited for their result. Outside a
websocket session, `chainlit.context.init_http_context` gives the data layer
a session so the writes run at once.

Threads are written by Chainlit's own code: opening the chat as a signed-in
user (`init_http_context(thread_id, user=...)`) fires
`update_thread(thread_id, user_id)` as an un-awaited task, and the first
message runs the real `ChainlitEmitter.init_thread`, which awaits
`update_thread(thread_id, name=<first message>, user_id=...)` and logs
"Error updating thread" if it fails.

Counts every "Task exception was never retrieved" (the loop's exception
handler) and every ERROR log line from the SDK or Chainlit, and prints one
JSON object: what was written last to each step, and those counts.

With --rounds N, after each round but the last it prints "ROUND_DONE <i>"
and waits for a line on stdin before going on (the test restarts the
sidecar there).

Importing chainlit writes .chainlit/ and .files/ into the working directory
and reads .env from it: run it in a temporary directory (--workdir).
"""

import argparse
import asyncio
import gc
import json
import logging
import os
import sys

# Two versions of a step sent closer together than this are a race the app
# itself ran: both requests were in flight at once, and which one reaches
# the data layer first is up to the event loop and the sockets.
RACE_WINDOW_S = 0.02


def record_sent_steps():
    """Step id -> [(when its request left, content)] (see sent_steps.py)."""
    from sent_steps import watch

    sent = {}
    watch(lambda step_id, content, at: sent.setdefault(step_id, []).append((at, content)))
    return sent


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--conversations", type=int, default=4)
    p.add_argument("--messages", type=int, default=5)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--pace", type=float, default=0.08, help="seconds between a step's create and update")
    a = p.parse_args()
    os.chdir(a.workdir)
    os.environ.pop("LITERAL_API_KEY", None)
    asyncio.run(run(a))


class ErrorLines(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.ERROR)
        self.count = 0
        self.samples = []

    thread_errors = 0

    def emit(self, record):
        self.count += 1
        if "Error updating thread" in record.getMessage():
            self.thread_errors += 1
        if len(self.samples) < 5:
            self.samples.append(f"{record.name}: {record.getMessage()[:300]}")


async def run(a):
    # Imported here, after chdir: chainlit writes its config into the cwd.
    import chainlit.data as cl_data
    from chainlit.context import init_http_context
    from chainlit.data.literalai import LiteralDataLayer
    from chainlit.emitter import ChainlitEmitter
    from chainlit.message import Message
    from chainlit.session import WebsocketSession
    from chainlit.step import Step
    from chainlit.user import PersistedUser

    sent = record_sent_steps()
    errors = ErrorLines()
    logging.getLogger().addHandler(errors)
    logging.getLogger().setLevel(logging.INFO)
    never_retrieved = {"count": 0, "samples": []}
    loop = asyncio.get_running_loop()

    def on_exception(loop, context):
        if "never retrieved" in context.get("message", ""):
            never_retrieved["count"] += 1
            exc = context.get("exception")
            if len(never_retrieved["samples"]) < 5:
                never_retrieved["samples"].append(f"{type(exc).__name__}: {str(exc)[:200]}")
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(on_exception)
    data_layer = LiteralDataLayer(api_key="e2e-key-not-a-secret", server=a.server)
    # What `@cl.data_layer` does: Chainlit's own code (context, emitter)
    # finds the data layer here.
    cl_data._data_layer = data_layer
    cl_data._data_layer_initialized = True

    async def ignore(*args, **kwargs):
        return None

    # Like Chainlit: fire and forget. The set only keeps tasks alive until
    # they finish (a bare create_task may be garbage collected mid-flight);
    # discarding a finished task does not retrieve its exception.
    tasks = set()

    def fire(coro):
        t = asyncio.create_task(coro)
        tasks.add(t)
        t.add_done_callback(tasks.discard)

    expected = {}
    threads = {}
    writes = 0

    async def conversation(conv, round_no):
        nonlocal writes
        thread_id = f"thread-{conv}-{round_no}"
        user = PersistedUser(id=f"user-{conv}", identifier=f"user{conv}@example.com",
                             createdAt="2026-01-01T00:00:00Z")
        # The chat opens: Chainlit fires update_thread(thread_id, user_id).
        init_http_context(thread_id=thread_id, user=user)
        writes += 1
        session = WebsocketSession(id=f"session-{conv}-{round_no}", socket_id=f"sid-{conv}-{round_no}",
                                   emit=ignore, emit_call=ignore, user_env={}, client_type="webapp",
                                   environ={}, thread_id=thread_id, user=user)
        emitter = ChainlitEmitter(session)
        for m in range(a.messages):
            text = f"question {conv}.{m} (round {round_no})"
            if m == 0:
                # The first message names the thread (emitter.process_message).
                session.has_first_interaction = True
                fire(emitter.init_thread(text))
                writes += 1
                threads[thread_id] = {"name": text, "participant": user.id}
            user_msg = Message(content=text, author="User", type="user_message")
            d = user_msg.to_dict()
            fire(data_layer.create_step(d))
            writes += 1
            expected[d["id"]] = d["output"]

            tool = Step(name="search", type="tool")
            tool.input = f"query {conv}.{m}"
            tool.output = "searching..."
            fire(data_layer.create_step(tool.to_dict()))
            writes += 1
            await asyncio.sleep(a.pace)
            tool.output = f"found 3 documents for {conv}.{m}"
            fire(data_layer.update_step(tool.to_dict()))
            writes += 1
            expected[tool.id] = tool.output

            answer = Message(content="", author="Assistant")
            ad = answer.to_dict()
            fire(data_layer.create_step(ad))
            writes += 1
            await asyncio.sleep(a.pace)
            answer.content = f"The answer to {conv}.{m} is {conv * 100 + m}."
            fire(data_layer.update_step(answer.to_dict()))
            writes += 1
            expected[answer.id] = answer.content
            await asyncio.sleep(a.pace)

    for round_no in range(a.rounds):
        await asyncio.gather(*(conversation(c, round_no) for c in range(a.conversations)))
        while tasks:
            await asyncio.wait(set(tasks))
        if round_no + 1 < a.rounds:
            print(f"ROUND_DONE {round_no}", flush=True)
            await loop.run_in_executor(None, sys.stdin.readline)

    # Unretrieved exceptions are reported when their task is collected.
    gc.collect()
    await asyncio.sleep(0.1)
    gc.collect()
    # Only what the app wrote last to each step counts; an empty answer
    # that was later filled is checked by its final content. A step whose
    # last two versions left within the race window may end as either.
    raced = {}
    for step_id, versions in sent.items():
        versions.sort(key=lambda v: v[0])
        last_at, last = versions[-1]
        if step_id in expected and last != expected[step_id]:
            # The app's fire order and its send order disagree: the send
            # order is what any data layer sees.
            expected[step_id] = last
        close = {c for at, c in versions if last_at - at < RACE_WINDOW_S}
        if len(close) > 1:
            raced[step_id] = sorted(close, key=lambda c: (c is None, c or ""))
    print(json.dumps({
        "raced": raced,
        "writes": writes,
        "expected": expected,
        "threads": threads,
        "thread_errors": errors.thread_errors,
        "task_exceptions": never_retrieved["count"],
        "task_exception_samples": never_retrieved["samples"],
        "sdk_errors": errors.count,
        "sdk_error_samples": errors.samples,
    }), flush=True)


if __name__ == "__main__":
    main()

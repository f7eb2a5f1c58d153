"""When each step the LiteralAI SDK sends leaves the app, and with what.

Chainlit fires a step's create and update as separate un-awaited tasks, and
the SDK opens a new HTTP client per call; when the event loop stalls (a busy
machine) both can be in flight at once and the update can leave first. A
data layer -- the sidecar, or the backend -- can only keep the order in which
writes reach it, so "what the app wrote last" is the version whose request
left last. Used by the end-to-end driver and the demo app.
"""

import json
import time


def watch(on_step):
    """Call `on_step(step_id, content, at)` for every step in a request
    body once its last byte is written to the socket (`at`: monotonic)."""
    import httpcore._async.http11 as h11

    original = h11.AsyncHTTP11Connection._send_request_body

    async def send_body(self, request):
        await original(self, request)
        body = getattr(request.stream, "_stream", None)
        if not isinstance(body, bytes):
            return
        try:
            variables = json.loads(body).get("variables") or {}
        except (ValueError, AttributeError):
            return
        at = time.monotonic()
        for name, value in variables.items():
            if name.startswith("id_") and isinstance(value, str):
                out = variables.get(f"output_{name[3:]}")
                on_step(value, out.get("content") if isinstance(out, dict) else out, at)

    h11.AsyncHTTP11Connection._send_request_body = send_body

"""The demo's chat app: an ordinary Chainlit app with the LiteralAI data
layer, configured the way operators do it — LITERAL_API_KEY and
LITERAL_API_URL in its environment, password login so conversations are
saved to the user's history. Chainlit and the LiteralAI SDK are unmodified.

Each message gets a tool step and an answer, so one exchange writes four
steps: the user's message, the tool step (created, then updated with its
output) and the answer.

For the demo's bookkeeping only: every step write the data layer is asked
to make (step id and content) is appended to the file named by DEMO_LEDGER.
That is the ground truth the demo compares the backend with. When the SDK
puts a step's request on the wire, the step's id, content and the time are
appended too: Chainlit fires a step's create and update as separate tasks,
and on a busy event loop the update's request can leave first, so the
version any data layer sees last is the one that left last.
"""

import asyncio
import json
import os
import sys
from pathlib import Path

# sent_steps.py sits next to this file in the image, in tests/e2e here.
_here = Path(__file__).resolve().parent
sys.path[:0] = [str(_here), str(_here.parent / "tests" / "e2e")]
import sent_steps  # noqa: E402

import chainlit as cl
from chainlit.data.literalai import LiteralDataLayer

_ledger = open(os.environ["DEMO_LEDGER"], "a", buffering=1)
_create_step = LiteralDataLayer.create_step


async def _recorded(self, step_dict):
    # update_step calls create_step too, so every version passes here.
    _ledger.write(json.dumps({"id": step_dict.get("id"), "output": step_dict.get("output")}) + "\n")
    return await _create_step(self, step_dict)


LiteralDataLayer.create_step = _recorded


def _record_send(step_id, content, at):
    _ledger.write(json.dumps({"sent": step_id, "output": content, "at": at}) + "\n")


sent_steps.watch(_record_send)


@cl.password_auth_callback
def login(username: str, password: str):
    if password == os.environ.get("DEMO_PASSWORD", "demo"):
        return cl.User(identifier=username)
    return None


@cl.on_message
async def on_message(message: cl.Message):
    async with cl.Step(name="count_words", type="tool") as step:
        step.input = message.content
        await asyncio.sleep(0.05)
        step.output = f"{len(message.content.split())} words"
    await cl.Message(content=f"You said: {message.content} ({step.output})").send()

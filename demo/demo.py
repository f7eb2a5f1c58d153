"""The one-command demo (run it with `bash demo/run.sh`).

A real Chainlit app (demo/app.py) with its LiteralAI data layer, a scripted
user chatting with it through its own HTTP and websocket interface, and a
LiteralAI-compatible backend (tests/e2e/backend.py) that resets and drops
connections and answers errors for a share of requests and goes dark for a
while in the middle. Run twice with the same faults: once with the app's
LITERAL_API_URL pointed at datalayer-sidecar, once straight at the backend.
Then: what the app wrote, what arrived, what was lost, and the task
exceptions in the app's log, side by side.

Exit status 0 when the run through the sidecar lost nothing and the direct
run lost something. Everything runs on loopback; nothing leaves the machine.
"""

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import user  # noqa: E402

CONVERSATIONS = [
    ["Hello! Can you keep a note of this conversation?", "What did I say first?", "Tell me a short joke.",
     "Thanks, one more: what is two plus two?", "Bye for now."],
    ["I need help planning a trip to Lisbon.", "Three days in spring.", "What should I see first?",
     "And where should I eat?", "Great, save this plan."],
    ["Summarise the last meeting for me.", "Add: budget approved.", "Add: launch moved to May.",
     "Who owns the follow-ups?", "Send me the summary later."],
    ["Let's write a haiku about rain.", "Make it about spring rain.", "Now one about snow.",
     "Which one do you prefer?", "Done, thank you."],
]

FAULTS = {"faults": ["close", "503", "502", "not_ok"], "rate": 0.3, "seed": 7, "hang": 12}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, within: float = 60.0, proc=None) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port} after {within:.0f}s")


def http_json(url: str, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"null")


def stop(proc, sig=signal.SIGTERM, within: float = 30.0) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(within)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Run:
    """One pass of the scenario; `via_sidecar` chooses where the app's
    LITERAL_API_URL points."""

    def __init__(self, args, work: Path, backend_port: int, control_port: int, via_sidecar: bool):
        self.args = args
        self.work = work / ("sidecar" if via_sidecar else "direct")
        self.work.mkdir(parents=True, exist_ok=True)
        self.backend = f"http://127.0.0.1:{backend_port}"
        self.control = f"http://127.0.0.1:{control_port}"
        self.via_sidecar = via_sidecar
        self.sidecar = None
        self.app = None
        self.admin_port = None

    def start_sidecar(self) -> str:
        port, self.admin_port = free_port(), free_port()
        cfg = self.work / "sidecar.toml"
        cfg.write_text(
            f'[upstream]\nurl = "{self.backend}"\n'
            f'[spool]\npath = "{self.work / "spool.sqlite3"}"\n'
            '[log]\nformat = "text"\nlevel = "warn"\naccess = false\n'
        )
        log = open(self.work / "sidecar.log", "w")
        self.sidecar = subprocess.Popen(
            [self.args.sidecar, "--config", str(cfg), "--listen", f"127.0.0.1:{port}",
             "--admin-listen", f"127.0.0.1:{self.admin_port}"],
            stdout=log, stderr=subprocess.STDOUT)
        wait_port(port, proc=self.sidecar)
        print(f"  status page while it runs: http://127.0.0.1:{self.admin_port}/", flush=True)
        return f"http://127.0.0.1:{port}"

    def start_app(self, literal_url: str) -> str:
        port = free_port()
        env = dict(os.environ,
                   LITERAL_API_KEY="demo-key", LITERAL_API_URL=literal_url,
                   CHAINLIT_AUTH_SECRET="demo-secret-" + os.urandom(8).hex(),
                   DEMO_LEDGER=str(self.work / "ledger.jsonl"), DEMO_PASSWORD="demo",
                   PYTHONUNBUFFERED="1")
        self.app_log = self.work / "app.log"
        self.app = subprocess.Popen(
            [sys.executable, "-m", "chainlit", "run", str(HERE / "app.py"), "--headless",
             "--host", "127.0.0.1", "--port", str(port)],
            cwd=self.work, env=env, stdout=open(self.app_log, "w"), stderr=subprocess.STDOUT)
        wait_port(port, within=90, proc=self.app)
        return f"http://127.0.0.1:{port}"

    async def chat(self, base: str) -> int:
        cookie = await user.login(base, "demo-user", "demo")
        answered = 0
        # The backend goes dark a little after the conversations start.
        async def blackout():
            await asyncio.sleep(self.args.blackout_after)
            http_json(f"{self.control}/blackout", {"seconds": self.args.blackout})
            print(f"  backend: dark for {self.args.blackout:.0f}s", flush=True)
        dark = asyncio.create_task(blackout())
        results = await asyncio.gather(*(user.conversation(base, cookie, msgs) for msgs in CONVERSATIONS))
        answered = sum(results)
        await dark
        return answered

    def settle(self) -> None:
        """Give delivery its chance: the sidecar until its spool is empty,
        the app's own SDK a few seconds for its retry."""
        deadline = time.monotonic() + self.args.settle
        if self.via_sidecar:
            while time.monotonic() < deadline:
                depth = http_json(f"http://127.0.0.1:{self.admin_port}/spool").get("depth")
                if depth == 0:
                    break
                time.sleep(0.5)
        time.sleep(3)

    def run(self) -> dict:
        http_json(f"{self.control}/reset", {})
        http_json(f"{self.control}/schedule", FAULTS)
        literal_url = self.start_sidecar() if self.via_sidecar else self.backend
        try:
            base = self.start_app(literal_url)
            answered = asyncio.run(self.chat(base))
            self.settle()
        finally:
            if self.app is not None:
                stop(self.app, signal.SIGINT)
            if self.sidecar is not None:
                stop(self.sidecar)
        return self.report(answered)

    def report(self, answered: int) -> dict:
        wrote = {}
        sent = {}
        versions = 0
        for line in (self.work / "ledger.jsonl").read_text().splitlines():
            w = json.loads(line)
            if "sent" in w:
                sent.setdefault(w["sent"], []).append((w["at"], str(w["output"] or "")))
                continue
            wrote[w["id"]] = str(w["output"] or "")
            versions += 1
        # What the app wrote last is what left it last, when that was sent
        # at all; two versions that left within 20 ms raced in the app, and
        # either may end on top.
        final = {}
        for i, last in wrote.items():
            left = sorted(sent.get(i, []))
            if left and last in {c for _, c in left}:
                final[i] = {c for at, c in left if left[-1][0] - at < 0.02}
            else:
                final[i] = {last}
        state = http_json(f"{self.control}/state")
        arrived = state["steps"]
        missing = [i for i in wrote if i not in arrived]
        stale = [i for i in wrote if i in arrived and str(arrived[i] or "") not in final[i]]
        log = self.app_log.read_text(errors="replace")
        # A conversation shows in the user's history once its thread is
        # stored with the user as participant and a name.
        history = sum(1 for t in state["threads"].values() if t.get("participantId") and t.get("name"))
        return {
            "messages answered": answered,
            f"conversations in the user's history (of {len(CONVERSATIONS)})": history,
            "step writes the app made": versions,
            "steps the app wrote": len(wrote),
            "steps that arrived": len([i for i in wrote if i in arrived]),
            "steps lost": len(missing),
            "steps stale (an older version arrived last)": len(stale),
            "'Task exception was never retrieved'": log.count("Task exception was never retrieved"),
            "SDK errors in the app's log": sum(1 for l in log.splitlines()
                                               if "literalai" in l.lower() and "error" in l.lower()),
            "backend faults injected": sum(state["faults"].values()),
            "requests the backend saw": state["requests"],
        }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sidecar", required=True, help="the datalayer-sidecar binary")
    p.add_argument("--blackout", type=float, default=8.0, help="seconds the backend goes dark")
    p.add_argument("--blackout-after", type=float, default=3.0)
    p.add_argument("--settle", type=float, default=60.0, help="most seconds to wait for delivery")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dlsc-demo-"))
    backend_port, control_port = free_port(), free_port()
    backend = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "e2e" / "backend.py"),
         "--port", str(backend_port), "--control-port", str(control_port)],
        stdout=subprocess.DEVNULL, stderr=open(work / "backend.log", "w"))
    try:
        wait_port(control_port, proc=backend)
        print(f"backend (LiteralAI-compatible) on 127.0.0.1:{backend_port}: "
              f"{int(FAULTS['rate'] * 100)}% of requests reset, dropped or answered with an error; "
              f"a {args.blackout:.0f}s blackout", flush=True)
        results = {}
        for via_sidecar in (True, False):
            name = "through the sidecar" if via_sidecar else "straight to the backend"
            print(f"\n== {len(CONVERSATIONS)} conversations, {name}", flush=True)
            results[name] = Run(args, work, backend_port, control_port, via_sidecar).run()
    finally:
        stop(backend)
    names = list(results)
    rows = list(results[names[0]])
    width = max(len(r) for r in rows)
    print(f"\n{'':<{width}}  {names[0]:>22}  {names[1]:>24}")
    for r in rows:
        print(f"{r:<{width}}  {results[names[0]][r]:>22}  {results[names[1]][r]:>24}")
    side, direct = results[names[0]], results[names[1]]
    lost = lambda r: r["steps lost"] + r["steps stale (an older version arrived last)"]  # noqa: E731
    print(f"\nlogs and the spool of both runs: {work}")
    if lost(side) == 0 and lost(direct) > 0:
        print(f"through the sidecar nothing was lost; straight to the backend {lost(direct)} steps were lost or stale.")
        return 0
    print("unexpected: the sidecar run lost steps, or the direct run lost none (see the logs above).")
    return 1


if __name__ == "__main__":
    sys.exit(main())

"""A scripted user of a running Chainlit app, through the app's own
interface: log in over HTTP (POST /login, which sets the session cookie),
then open a chat over the websocket (socket.io at /ws/socket.io) and send
messages, waiting for the app to finish each answer, as the web UI does.
"""

import asyncio
import datetime
import uuid

import aiohttp
import socketio


async def login(base: str, username: str, password: str) -> str:
    """The session cookie header for `username`."""
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/login", data={"username": username, "password": password}) as r:
            if r.status != 200:
                raise RuntimeError(f"login failed: {r.status} {await r.text()}")
            return "; ".join(f"{k}={v.value}" for k, v in r.cookies.items())


async def conversation(base: str, cookie: str, messages: list[str], timeout: float = 30.0) -> int:
    """One chat: a new session, `messages` sent one after another, each
    after the app's answer to the previous one. Returns how many were
    answered."""
    sio = socketio.AsyncClient(reconnection=False)
    done = asyncio.Event()
    sio.on("task_end", lambda *_: done.set())
    await sio.connect(
        base,
        socketio_path="/ws/socket.io",
        headers={"Cookie": cookie},
        auth={
            "sessionId": str(uuid.uuid4()),
            "clientType": "webapp",
            "userEnv": "{}",
            "chatProfile": None,
            "threadId": None,
        },
        transports=["websocket"],
    )
    answered = 0
    try:
        await sio.emit("connection_successful")
        await asyncio.sleep(0.2)
        for text in messages:
            done.clear()
            now = datetime.datetime.now(datetime.timezone.utc).isoformat()
            await sio.emit("client_message", {
                "message": {"id": str(uuid.uuid4()), "threadId": "", "name": "User",
                            "type": "user_message", "output": text, "createdAt": now},
                "fileReferences": None,
            })
            try:
                await asyncio.wait_for(done.wait(), timeout)
                answered += 1
            except asyncio.TimeoutError:
                pass
    finally:
        await sio.disconnect()
    return answered

"""The event stream of the HTTP API (server-sent events): one feed per client, from the bus that
the live model publishes to (in the updater's thread) into the event loop; a client that does not
keep up is cut off and resumes with Last-Event-ID."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import orjson
from fastapi import FastAPI, Request

from namespacefs.service.events import Event
from namespacefs.service.live import Live

#: Events waiting for one slow SSE client before it is cut off (it reconnects with Last-Event-ID).
CLIENT_BACKLOG = 50_000
KEEPALIVE = 15.0


def end_streams(app: FastAPI) -> None:
    """End every open event stream (on shutdown, so the server need not cancel them)."""
    for queue in list(app.state.streams):
        queue.put_nowait(None)


def _sse(batch: list[Event], sent: int, kinds: frozenset[str] | None, types: frozenset[str] | None) -> str:
    """The server-sent events of a batch the client has not had and asked for."""
    return "".join(f"id: {e.seq}\ndata: {orjson.dumps(e.to_dict()).decode()}\n\n" for e in batch if e.seq > sent
                   and (kinds is None or e.kind in kinds) and (types is None or e.type in types))


Streams = set[asyncio.Queue[list[Event] | None]]


class _Feed:
    """One stream's queue: batches from the bus (published in the updater's thread) into the event
    loop; None ends the stream (the server stops, or the client does not keep up)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[list[Event] | None] = asyncio.Queue()
        self.pending = 0

    def put(self, batch: list[Event] | None) -> None:
        if batch is not None:
            self.pending += len(batch)
            if self.pending > CLIENT_BACKLOG:  # the client does not keep up: end its stream
                batch = None
        self.queue.put_nowait(batch)

    def deliver(self, batch: list[Event]) -> None:  # runs in the publisher's thread
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server is stopping
            self.loop.call_soon_threadsafe(self.put, batch)


async def stream_events(request: Request, streams: Streams, live: Live, kinds: frozenset[str] | None,
                        types: frozenset[str] | None, resume: int | None) -> AsyncIterator[str]:
    feed = _Feed(asyncio.get_running_loop())
    queue, sent = feed.queue, resume or 0  # sent: the last seq handed to the client (backlog and feed may overlap)
    subscription = live.bus.subscribe(feed.deliver)
    streams.add(queue)
    try:
        yield "retry: 1000\n\n"
        if resume is not None:
            backlog = live.bus.since(resume)
            if backlog:
                queue.put_nowait(backlog)
        quiet = 0.0
        while True:
            try:
                async with asyncio.timeout(1.0):  # (a timer, where wait_for makes a task per batch)
                    batch = await queue.get()
            except TimeoutError:
                # uvicorn drops writes to a closed connection silently: ask whether the client left
                if await request.is_disconnected():
                    return
                quiet = quiet + 1.0 if quiet + 1.0 < KEEPALIVE else 0.0
                if not quiet:
                    yield ": keepalive\n\n"
                continue
            quiet = 0.0
            if batch is None:
                return
            feed.pending = max(0, feed.pending - len(batch))
            out = _sse(batch, sent, kinds, types)
            sent = max(sent, batch[-1].seq)
            if out:
                yield out
    finally:
        streams.discard(queue)
        live.bus.unsubscribe(subscription)

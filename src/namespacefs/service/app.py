"""The HTTP API (FastAPI): JSON for the snapshot, one namespace, containers and accounting; a
server-sent event stream; Prometheus metrics; the web page. The OpenAPI document is /openapi.json.

Over the Unix socket (root only, mode 0600) no token is needed: the file mode is the access
control. Any other transport (the loopback TCP port) needs `Authorization: Bearer TOKEN` (or
`?token=TOKEN`, for the web page and EventSource, which cannot send headers)."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from namespacefs import access, accounting, targets
from namespacefs.kernel import NS_TYPES
from namespacefs.model import Namespace, Snapshot
from namespacefs.service import metrics
from namespacefs.service.events import KINDS, Event
from namespacefs.service.live import Live

#: Events waiting for one slow SSE client before it is cut off (it reconnects with Last-Event-ID).
CLIENT_BACKLOG = 50_000
KEEPALIVE = 15.0


def _split(text: str | None, known: tuple[str, ...], what: str) -> frozenset[str] | None:
    if not text:
        return None
    chosen = frozenset(t.strip() for t in text.split(",") if t.strip())
    unknown = chosen - set(known)
    if unknown:
        raise HTTPException(400, f"unknown {what}: {', '.join(sorted(unknown))} (known: {', '.join(known)})")
    return chosen


def reader_of(request: Request) -> access.Reader | None:
    """Who asks, for access.may_see: None (everything) for root over the Unix socket and for a holder
    of the token on the port (the token is root's); a Reader for any other user the socket's mode
    let in (it is root's, 0600: only if someone opened it up)."""
    peer = request.scope.get("nsfs.peer")
    if peer is None or peer[1] == 0:
        return None
    pid, uid, gid = peer
    return access.Reader(uid, gid, pid)


def visible(snap: Snapshot, reader: access.Reader | None) -> Snapshot:
    """The part of a snapshot a reader may see (access.may_see for each namespace and process)."""
    if reader is None:
        return snap
    return snap.replace(
        namespaces={i: ns for i, ns in snap.namespaces.items() if access.may_see(reader, ns, snap)},
        processes={p: proc for p, proc in snap.processes.items() if access.may_see(reader, p, snap)})


def namespace_details(ns: Namespace, live: Live, reader: access.Reader | None = None) -> dict[str, Any]:
    snap = visible(live.current(), reader)
    d = ns.to_dict()
    d["children"] = [c.inode for c in snap.children(ns.inode)]
    d["owns"] = [o.inode for o in snap.owned_by(ns.inode)] if ns.type == "user" else []
    d["process_details"] = [snap.processes[p].to_dict() for p in ns.processes if p in snap.processes]
    return d


def _root_only(request: Request) -> None:
    if reader_of(request) is not None:
        raise HTTPException(403, "only root (or a holder of the token) may read this")


class TokenMiddleware:
    """Requests that came in over a port (not the Unix socket, whose scope server is (path, None))
    need the bearer token. Plain ASGI, so event streams pass through untouched."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        if scope["type"] == "http" and server is not None and server[1] is not None:
            request = Request(scope)
            given = request.headers.get("authorization", "")
            given = given[7:] if given.lower().startswith("bearer ") else request.query_params.get("token", "")
            if not self.token or not hmac.compare_digest(given.encode(), self.token.encode()):
                refuse = JSONResponse({"detail": "a valid bearer token is required on this transport"}, 401,
                                      headers={"WWW-Authenticate": "Bearer"})
                await refuse(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _containers(snap: Snapshot) -> dict[str, Any]:
    from namespacefs import containers

    return {"available": True, **containers.find(snap).to_dict()}


def end_streams(app: FastAPI) -> None:
    """End every open event stream (on shutdown, so the server need not cancel them)."""
    for queue in list(app.state.streams):
        queue.put_nowait(None)


def make_app(live: Live, token: str | None = None) -> FastAPI:
    app = FastAPI(title="namespacefs", version="0.1.0", docs_url=None, redoc_url=None,
                  description="Every Linux namespace on this host, kept live. See docs/service.md.")
    registry = metrics.registry_for(live)

    app.add_middleware(TokenMiddleware, token=token)
    app.state.streams = set()  # the queues of open event streams, ended on shutdown

    @app.get("/", response_class=HTMLResponse, summary="The web page")
    def page() -> HTMLResponse:
        html = resources.files("namespacefs.service").joinpath("web/index.html").read_text()
        return HTMLResponse(html)

    @app.get("/api/status", summary="Daemon state: snapshot age, scans, proc connector, clients")
    def status() -> dict[str, Any]:
        return live.status()

    @app.get("/api/snapshot", summary="The full snapshot (Snapshot.to_dict(), the JSON contract)")
    def snapshot(request: Request) -> Response:
        reader = reader_of(request)
        if reader is None:
            return Response(live.snapshot_json(), media_type="application/json")
        return JSONResponse(visible(live.current(), reader).to_dict())

    @app.get("/api/namespaces", summary="Every namespace, optionally of some types")
    def namespaces(request: Request, type: str | None = Query(None, description="comma-separated types")) -> list[dict[str, Any]]:
        types = _split(type, NS_TYPES, "namespace type")
        return [ns.to_dict() for ns in visible(live.current(), reader_of(request)) if types is None or ns.type in types]

    @app.get("/api/namespaces/{spec:path}", summary="One namespace: INODE, TYPE:INODE, id, name, PID:TYPE")
    def namespace(request: Request, spec: str,
                  type: str | None = Query(None, description="namespace type")) -> dict[str, Any]:
        if type is not None and type not in NS_TYPES:
            raise HTTPException(400, f"unknown namespace type '{type}' (one of {', '.join(NS_TYPES)})")
        reader = reader_of(request)
        try:  # (a path selector is never looked up on the filesystem: files=False)
            ns = targets.resolve(visible(live.current(), reader), spec, type, files=False)
        except targets.NotFound as e:
            raise HTTPException(404, str(e)) from None
        return namespace_details(ns, live, reader)

    @app.get("/api/containers", summary="Containers (nsfs containers -J): the tree and a flat list")
    def containers(request: Request) -> Any:
        _root_only(request)
        return live.derived("containers", lambda snap: _containers(snap))

    @app.get("/api/containers/{spec:path}", summary="One container (nsfs show CONTAINER -J): path, name, engine id or pid")
    def container(spec: str) -> Any:
        from namespacefs import containers

        snap, tree = live.derived("container-tree", lambda snap: (snap, containers.find(snap)))  # one snapshot
        try:
            target = targets.resolve_target(snap, spec, tree, pids=True, namespaces=False)
        except targets.NotFound as e:
            raise HTTPException(404, str(e)) from None
        found = target.container if target.container is not None else tree.of_pid(target.pid or 0)
        if found is None:
            raise HTTPException(404, f"process {target.pid} is in no container")
        return containers.describe_container(found, tree, snap)

    @app.get("/api/accounting", summary="Per-user-namespace accounting and uid-map overlaps")
    def account(request: Request,
                limits: bool = Query(False, description="also read /proc/sys/user inside each (one fork each)")) -> Any:
        _root_only(request)
        return accounting.compute(live.current(), limits=limits).to_dict()

    @app.get("/api/events", summary="Lifecycle events as server-sent events (data: one JSON object each)")
    async def events(request: Request, kinds: str | None = Query(None, description=f"comma list of {','.join(KINDS)}"),
                     type: str | None = Query(None, description="comma list of namespace types"),
                     since: int | None = Query(None, ge=0, description="resume after this seq")) -> StreamingResponse:
        _root_only(request)
        want_kinds = _split(kinds, KINDS, "event kind")
        want_types = _split(type, NS_TYPES, "namespace type")
        last = request.headers.get("last-event-id") or since
        try:
            resume = int(last) if last is not None else None
        except ValueError:
            raise HTTPException(400, "Last-Event-ID must be an integer") from None
        body = _stream(request, app.state.streams, live, want_kinds, want_types, resume)
        return StreamingResponse(body, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/metrics", summary="Prometheus metrics")
    def prometheus(request: Request) -> Response:
        _root_only(request)
        return Response(metrics.render(registry), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


Streams = set[asyncio.Queue[list[Event] | None]]


async def _stream(request: Request, streams: Streams, live: Live, kinds: frozenset[str] | None, types: frozenset[str] | None,
                  resume: int | None) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[list[Event] | None] = asyncio.Queue()
    pending = [0]
    sent = resume or 0  # the last seq handed to the client (the backlog and the live feed may overlap)

    def put(batch: list[Event] | None) -> None:
        if batch is not None:
            pending[0] += len(batch)
            if pending[0] > CLIENT_BACKLOG:  # the client does not keep up: end its stream
                batch = None
        queue.put_nowait(batch)

    def deliver(batch: list[Event]) -> None:  # runs in the scanner thread
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server is stopping
            loop.call_soon_threadsafe(put, batch)

    subscription = live.bus.subscribe(deliver)
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
                batch = await asyncio.wait_for(queue.get(), 1.0)
            except TimeoutError:
                # uvicorn drops writes to a closed connection silently: ask whether the client left
                if await request.is_disconnected():
                    return
                quiet += 1.0
                if quiet >= KEEPALIVE:
                    quiet = 0.0
                    yield ": keepalive\n\n"
                continue
            quiet = 0.0
            if batch is None:
                return
            pending[0] = max(0, pending[0] - len(batch))
            out = [f"id: {e.seq}\ndata: {json.dumps(e.to_dict())}\n\n" for e in batch if e.seq > sent
                   and (kinds is None or e.kind in kinds) and (types is None or e.type in types)]
            sent = max(sent, batch[-1].seq)
            if out:
                yield "".join(out)
    finally:
        streams.discard(queue)
        live.bus.unsubscribe(subscription)

"""The HTTP API (FastAPI): JSON for the snapshot, one namespace, containers and accounting; a
server-sent event stream; Prometheus metrics; the web page. The OpenAPI document is /openapi.json,
made from the response models in service.models.

Over the Unix socket (root only, mode 0600) no token is needed: the file mode is the access
control. Any other transport (the loopback TCP port) needs `Authorization: Bearer TOKEN`, or the
session cookie a browser gets by POSTing the token to /api/login once (HttpOnly, SameSite=Strict:
the page's scripts never hold the token, and no other site can send the cookie). A token is never
taken from a URL (they end up in histories, logs and screenshots)."""

from __future__ import annotations

import hashlib
import hmac
import time
from importlib import resources
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from namespacefs import access, accounting, targets
from namespacefs.discover import incremental
from namespacefs.kernel import HIERARCHICAL, NS_TYPES
from namespacefs.model import Namespace, Snapshot
from namespacefs.service import listing, metrics, models
from namespacefs.service.events import KINDS
from namespacefs.service.listing import Listings
from namespacefs.service.live import Live
from namespacefs.service.streaming import stream_events


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


def namespace_details(ns: Namespace, live: Live, reader: access.Reader | None = None,
                      current: Snapshot | None = None) -> dict[str, Any]:
    """One namespace with its children, what it owns and its processes, in the model `current`
    (the live model's now, if not given) as `reader` may see it."""
    snap = visible(current if current is not None else live.current(), reader)
    d = ns.to_dict()
    # (from the live model's own index where it has one: a snapshot's is built whole, per model)
    kids = incremental.kids(snap, ns.inode) if ns.type in HIERARCHICAL else []
    if kids is None:
        kids = [*snap.children(ns.inode), *(o for o in snap.owned_by(ns.inode) if o.parent != ns.inode)]
    d["children"] = [c.inode for c in kids if c.parent == ns.inode and c.type in HIERARCHICAL]
    d["owns"] = [o.inode for o in kids if o.owner == ns.inode] if ns.type == "user" else []
    d["process_details"] = [snap.processes[p].to_dict() for p in ns.processes if p in snap.processes]
    return d


def _root_only(request: Request) -> None:
    if reader_of(request) is not None:
        raise HTTPException(403, "only root (or a holder of the token) may read this")


#: The browser session cookie (its value is derived from the token, so it is not the token itself,
#: and rotating the token ends every session).
SESSION_COOKIE = "nsfs_session"
#: Paths a browser may load before it logs in: the page (it holds no data) and the login itself.
OPEN_PATHS = frozenset({"/", "/api/login"})


def session_value(token: str) -> str:
    return hmac.new(token.encode(), b"namespacefs web session", hashlib.sha256).hexdigest()


def _over_tcp(scope: Scope) -> bool:
    """A request that came in over a port, not the Unix socket (whose scope server is (path, None))."""
    server = scope.get("server")
    return server is not None and server[1] is not None


def _cookie(request: Request, token: str) -> bool:
    given = request.cookies.get(SESSION_COOKIE, "")
    return bool(given) and hmac.compare_digest(given.encode(), session_value(token).encode())


def _bearer(request: Request, token: str) -> bool:
    given = request.headers.get("authorization", "")
    return given[:7].lower() == "bearer " and hmac.compare_digest(given[7:].encode(), token.encode())


class TokenMiddleware:
    """Requests over a port need the bearer token or the session cookie. Plain ASGI, so event
    streams pass through untouched."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _over_tcp(scope) and scope.get("path") not in OPEN_PATHS:
            request = Request(scope)
            if not self.token or not (_bearer(request, self.token) or _cookie(request, self.token)):
                refuse = JSONResponse({"detail": "a valid bearer token is required on this transport"}, 401,
                                      headers={"WWW-Authenticate": "Bearer"})
                await refuse(scope, receive, send)
                return
        await self.app(scope, receive, send)


class Hostnames:
    """uts namespace inode -> hostname, for the web page. Reading one joins the namespace (a thread
    setns()es in, see namespacefs.details), so each is kept for a few seconds across model changes
    instead of being read again for every snapshot."""

    KEEP = 5.0

    def __init__(self) -> None:
        self._seen: dict[tuple[str, int], tuple[float, str | None]] = {}

    def of(self, snap: Snapshot) -> dict[str, str]:
        from namespacefs import details
        from namespacefs.handles import Gone

        now = time.monotonic()
        seen: dict[tuple[str, int], tuple[float, str | None]] = {}
        for ns in snap.of_type("uts"):
            hit = self._seen.get(ns.key)
            if hit is None or now - hit[0] > self.KEEP:
                try:
                    hit = (now, details.uname(ns, snap)["nodename"])
                except (Gone, OSError):  # it went away, or cannot be joined: no name to show
                    hit = (now, None)
            seen[ns.key] = hit
        self._seen = seen
        return {str(ns.inode): seen[ns.key][1] or "" for ns in snap.of_type("uts") if seen[ns.key][1]}


def _containers(snap: Snapshot) -> dict[str, Any]:
    from namespacefs import containers

    return {"available": True, **containers.find(snap).to_dict()}


ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": models.Error} for code in (400, 401, 403, 404)}
TEXT = {"schema": {"type": "string"}}
#: The page is one file with its script inline; it talks to this origin only and is never framed.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                               "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff",
}


def make_app(live: Live, token: str | None = None) -> FastAPI:
    app = FastAPI(title="namespacefs", version=_version(), docs_url=None, redoc_url=None,
                  description="Every Linux namespace on this host, kept live. See docs/service.md.")
    app.state.streams = set()  # the queues of open event streams, ended on shutdown
    registries = metrics.registry_for(live, clients=lambda: len(app.state.streams))
    hostnames = Hostnames()

    app.add_middleware(TokenMiddleware, token=token)
    _session_routes(app, token)
    app.state.listings = Listings(live)
    _model_routes(app, live)
    _listing_route(app, app.state.listings)
    _container_routes(app, live, hostnames)
    _service_routes(app, live, registries)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _session_routes(app: FastAPI, token: str | None) -> None:
    """The page, and trading the token for a browser session."""

    @app.get("/", response_class=HTMLResponse, summary="The web page", responses={200: {"content": {"text/html": TEXT}}})
    def page() -> HTMLResponse:
        html = resources.files("namespacefs.service").joinpath("web/index.html").read_text()
        return HTMLResponse(html, headers=PAGE_HEADERS)

    @app.post("/api/login", summary="Trade the token for a session cookie (HttpOnly, SameSite=Strict)",
              response_model=models.LoggedIn, responses={401: {"model": models.Error}})
    def login(body: models.Login, request: Request, response: Response) -> models.LoggedIn:
        if not _over_tcp(request.scope):
            return models.LoggedIn(ok=True)  # the Unix socket needs no token
        if not token or not hmac.compare_digest(body.token.encode(), token.encode()):
            raise HTTPException(401, "wrong token", headers={"WWW-Authenticate": "Bearer"})
        response.set_cookie(SESSION_COOKIE, session_value(token), httponly=True, samesite="strict", path="/")
        return models.LoggedIn(ok=True)

    @app.post("/api/logout", summary="End the browser session (remove its cookie)", response_model=models.LoggedIn)
    def logout(response: Response) -> models.LoggedIn:
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return models.LoggedIn(ok=False)


def _model_routes(app: FastAPI, live: Live) -> None:
    """What the model holds: status, snapshot, namespaces."""

    @app.get("/api/status", summary="Daemon state: snapshot age, scans, proc connector, clients",
             response_model=models.Status, responses=ERRORS,
             response_model_exclude_unset=True)
    def status() -> dict[str, Any]:
        # subscribers: the open event streams (the metrics' own counter of events is no client)
        return {**live.status(), "subscribers": len(app.state.streams), "listings": app.state.listings.counts()}

    @app.get("/api/snapshot", summary="The full snapshot (Snapshot.to_dict(), the JSON contract)",
             response_class=Response, responses={200: {"model": models.Snapshot}, **ERRORS})
    def snapshot(request: Request) -> Response:
        reader = reader_of(request)
        if reader is None:  # serialized once per model change (Live.snapshot_json), not through the model
            return Response(live.snapshot_json(live_time=True), media_type="application/json")
        return _json(visible(live.current(), reader).to_dict())

    @app.get("/api/namespaces", summary="Every namespace, optionally of some types", response_class=Response,
             responses={200: {"model": list[models.Namespace]}, **ERRORS})
    def namespaces(request: Request, type: str | None = Query(None, description="comma-separated types")) -> Response:
        types = _split(type, NS_TYPES, "namespace type")
        return _json([ns.to_dict() for ns in visible(live.current(), reader_of(request)) if types is None or ns.type in types])

    @app.get("/api/namespaces/{spec:path}", summary="One namespace: INODE, TYPE:INODE, id, name, PID:TYPE",
             response_class=Response, responses={200: {"model": models.NamespaceDetails}, **ERRORS})
    def namespace(request: Request, spec: str,
                  type: str | None = Query(None, description="namespace type")) -> Response:
        if type is not None and type not in NS_TYPES:
            raise HTTPException(400, f"unknown namespace type '{type}' (one of {', '.join(NS_TYPES)})")
        reader, snap = reader_of(request), live.current()
        try:  # (a path selector is never looked up on the filesystem: files=False)
            ns = targets.resolve(visible(snap, reader), spec, type, files=False)
        except targets.NotFound as e:
            raise HTTPException(404, str(e)) from None
        if reader is not None:
            return _json(namespace_details(ns, live, reader, snap))
        # (made once per model: asked again at rest, it is the same bytes; the tests check it fits its model)
        body = live.served.answer(snap, ("namespace", ns.inode), lambda: _json_bytes(namespace_details(ns, live, None, snap)))
        return Response(body, media_type="application/json")


def _listing_route(app: FastAPI, listings: Listings) -> None:
    """What `nsfs ls` prints, for the command line to print (service.listing)."""

    @app.get("/api/ls", summary="Exactly what `nsfs ls` with these options prints (text or JSON), made once per model change",
             response_class=Response, responses=listing.RESPONSES)
    def ls(request: Request) -> Response:
        _root_only(request)
        return listings.answer(list(request.query_params.multi_items()))


def _container_routes(app: FastAPI, live: Live, hostnames: Hostnames) -> None:
    """What is derived from the model: containers, hostnames, accounting."""

    @app.get("/api/containers", summary="Containers (nsfs containers -J): the tree and a flat list",
             response_class=Response, responses={200: {"model": models.Containers}, **ERRORS})
    def containers(request: Request) -> Response:
        _root_only(request)
        return Response(live.derived("containers-json", lambda snap: _json_bytes(_containers(snap))),
                        media_type="application/json")

    @app.get("/api/containers/{spec:path}", summary="One container (nsfs show CONTAINER -J): path, name, engine id or pid",
             response_model=models.ContainerDetails, responses=ERRORS)
    def container(request: Request, spec: str) -> Any:
        from namespacefs import containers

        _root_only(request)
        snap, tree = live.derived("container-tree", lambda snap: (snap, containers.find(snap)))  # one snapshot
        try:
            target = targets.resolve_target(snap, spec, tree, pids=True, namespaces=False)
        except targets.NotFound as e:
            raise HTTPException(404, str(e)) from None
        found = target.container if target.container is not None else tree.of_pid(target.pid or 0)
        if found is None:
            raise HTTPException(404, f"process {target.pid} is in no container")
        return containers.describe_container(found, tree, snap)

    @app.get("/api/hostnames", summary="The hostname of every uts namespace (inode -> hostname)",
             response_model=models.Hostnames, responses=ERRORS,
             response_model_exclude_unset=True)
    def uts_hostnames(request: Request) -> Any:
        names = live.derived("hostnames", hostnames.of)
        reader = reader_of(request)
        if reader is None:
            return names
        seen = visible(live.current(), reader).namespaces
        return {inode: name for inode, name in names.items() if int(inode) in seen}

    @app.get("/api/accounting", summary="Per-user-namespace accounting and uid-map overlaps",
             response_class=Response, responses={200: {"model": models.Accounting}, **ERRORS})
    def account(request: Request,
                limits: bool = Query(False, description="also read /proc/sys/user inside each (one fork each)")) -> Response:
        _root_only(request)
        return _json(accounting.compute(live.current(), limits=limits).to_dict())


def _service_routes(app: FastAPI, live: Live, registries: metrics.Registries) -> None:
    """The event stream and the metrics."""

    @app.get("/api/events", summary="Lifecycle events as server-sent events (data: one JSON object each)",
             response_class=StreamingResponse, responses={200: {"content": {"text/event-stream": {"schema": {
                 "type": "string", "description": "`id: SEQ` and `data: EVENT` lines per event; "
                 "EVENT is one Event object as JSON (components/schemas/Event)"}}}}, **ERRORS})
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
        body = stream_events(request, app.state.streams, live, want_kinds, want_types, resume)
        return StreamingResponse(body, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/metrics", summary="Prometheus metrics (bounded series; userns=1 adds one set per user namespace)",
             response_class=Response, responses={200: {"content": {"text/plain": TEXT}}, **ERRORS})
    def prometheus(request: Request,
                   userns: bool = Query(False, description="also the per-user-namespace series (unbounded: opt in)")) -> Response:
        _root_only(request)
        return Response(metrics.render(registries, userns), media_type="text/plain; version=0.0.4; charset=utf-8")


def _json_bytes(data: Any) -> bytes:
    import orjson

    return orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS)


def _json(data: Any) -> Response:
    """JSON of the contract's to_dict() as it is. Big answers (every namespace, with every holder)
    skip FastAPI's per-object encoding and its model validation, seconds at 5,000 namespaces; the
    tests check that what is served fits the models the OpenAPI document declares."""
    return Response(_json_bytes(data), media_type="application/json")


def _version() -> str:
    import namespacefs

    return namespacefs.__version__


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The generated document plus what FastAPI cannot see: the authentication the middleware does
    (bearer token or session cookie on TCP; none on the Unix socket, whose mode is the check) and
    the Event schema of the event stream."""
    if app.openapi_schema is None:
        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = doc.setdefault("components", {})
        components.setdefault("schemas", {})["Event"] = models.Event.model_json_schema(
            ref_template="#/components/schemas/{model}")
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "the daemon's token file; needed on TCP, not on the Unix socket"},
            "session": {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE,
                        "description": "what POST /api/login sets for a browser"},
        }
        doc["security"] = [{"bearer": []}, {"session": []}]
        for path in OPEN_PATHS:
            for operation in doc["paths"].get(path, {}).values():
                operation["security"] = []
        app.openapi_schema = doc
    return app.openapi_schema



"""Running the service: the live model plus the HTTP app on a Unix socket (mode 0600 in a 0700
directory) and, optionally, a loopback TCP port that requires a bearer token."""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import logging
import os
import secrets
import socket
import stat
import struct
import sys
from dataclasses import dataclass

from namespacefs import ownership
from namespacefs.service import outside_name
from namespacefs.service.live import Live
from namespacefs.service.notify import sd_notify
from namespacefs.service.sweep import settings as sweep_settings
from namespacefs.syntax import number

log = logging.getLogger("namespacefs.service")


class ServeError(Exception):
    """The service cannot start as asked (message for the user)."""


@dataclass
class Options:
    socket_path: str
    tcp: tuple[str, int] | None = None
    token_file: str | None = None
    interval: float = 300.0
    sweep: float | None = None  # None: the default, within a CPU budget (service.sweep.settings)
    trace: bool = True
    debounce: float = 0.01
    settle: float = 0.25
    netlink: bool = True
    rcvbuf: int = 8 << 20


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT (or PORT) on a loopback address."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if host == "localhost":
        host = "127.0.0.1"
    try:
        addr = ipaddress.ip_address(host)
        port_number = number(port, "the port")
    except ValueError:
        raise ServeError(f"--listen wants [HOST:]PORT with a loopback HOST, not '{text}'") from None
    if not addr.is_loopback:
        raise ServeError(f"--listen: {host} is not a loopback address (the API is for this host; use a proxy to export it)")
    if not 0 < port_number < 65536:
        raise ServeError(f"--listen: bad port {port}")
    return host, port_number


def unix_listener(path: str) -> socket.socket:
    """Bind the API socket, root only. A stale socket file is replaced; a live one is an error."""
    if not path.strip():
        raise ServeError("the socket path is empty")
    _socket_dir(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise ServeError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
            raise ServeError(f"a daemon is already listening on {path}")
        except OSError:
            os.unlink(path)  # stale: nobody is listening
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError as e:  # e.g. a path longer than sun_path (108 bytes) or a read-only directory
        sock.close()
        raise ServeError(f"cannot listen on {path}: {e.strerror or e}") from None
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(128)
    return sock


def outside_listener(path: str) -> socket.socket | None:
    """The API's second name (service.outside_name), beside the socket's directory: a second
    listening socket of the same server, root only like the first. Not a hard link: under systemd
    the socket's directory (RuntimeDirectory=) is a mount of its own in the service's mount
    namespace, and link() across mounts fails (EXDEV). A stale socket of an earlier daemon is
    replaced; anything else in the way is left alone (None, with a warning)."""
    outside = outside_name(path)
    try:
        return unix_listener(outside)
    except (ServeError, OSError) as e:
        log.warning("no second API socket %s (%s): a filesystem mounted over %s would hide the first",
                    outside, e, os.path.dirname(path))
        return None


Bound = tuple[socket.socket, str, int]


def _bound(sock: socket.socket | None) -> Bound | None:
    """A listening Unix socket, its path and the inode of that file (what may be removed at exit)."""
    if sock is None:
        return None
    path = sock.getsockname()
    return sock, path, os.lstat(path).st_ino


def _remove_socket(bound: Bound | None) -> None:
    """Unlink the file a listening Unix socket was bound to, if it is still that socket's (a daemon
    started after this one may have replaced it), and close the socket."""
    if bound is None:
        return
    sock, path, inode = bound
    with contextlib.suppress(OSError):
        if os.lstat(path).st_ino == inode:
            os.unlink(path)
    sock.close()


def tcp_listener(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(128)
    return sock


def _socket_dir(path: str) -> str:
    """The socket's directory, created (0700) if missing, refused if someone else could write there."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        ownership.make_dir(directory, "the socket directory")
    except ownership.Untrusted as e:
        raise ServeError(str(e)) from None
    return directory


#: The most a token file may hold: a token is one line of 43 characters.
MAX_TOKEN_BYTES = 4096
#: Allocations between collections of the youngest generation in the daemon (serve(): why).
GC_YOUNG = 20_000


def load_token(path: str) -> str:
    """The bearer token in `path`; a new random one is written there (0600) when it does not exist.
    The file and its directory must be trusted (namespacefs.ownership) and the file readable by its
    owner only: a token someone else planted, or could read, would let them in."""
    if not path.strip():
        raise ServeError("the token file path is empty")
    try:
        if not ownership.check_file(path, "the token file"):
            return _new_token(path)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if st.st_mode & 0o077:
                raise ServeError(f"the token file {path} can be read by others (mode {stat.S_IMODE(st.st_mode):04o}); "
                                 f"chmod 600 {path}, or remove it and a new token is made")
            token = f.read(MAX_TOKEN_BYTES + 1).decode("ascii").strip()
    except ownership.Untrusted as e:
        raise ServeError(str(e)) from None
    except (OSError, UnicodeDecodeError) as e:  # a directory, no such directory, not readable, binary
        raise ServeError(f"token file {path}: {getattr(e, 'strerror', None) or e}") from None
    if not token or len(token) > MAX_TOKEN_BYTES or any(not c.isprintable() or c.isspace() for c in token):
        raise ServeError(f"token file {path} holds no token (one line of printable ASCII)")
    return token


def _new_token(path: str) -> str:
    token = secrets.token_urlsafe(32)
    try:
        fd = ownership.create_file(path, 0o600)
    except OSError as e:
        raise ServeError(f"cannot create the token file {path}: {e.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    log.warning("wrote a new API token to %s", path)
    return token


#: Seconds between the server loop's ticks (uvicorn's own: 0.1 s, which alone costs ~0.25% of a
#: core at rest). A tick refreshes the Date header (once a second, as uvicorn does) and checks for
#: the end; a signal ends the wait at once.
TICK = 1.0


def _server_class() -> type:
    import asyncio
    from types import FrameType

    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown, which would end the process
        before the socket is removed; here the signal just ends serve() and the caller cleans up.
        It tells systemd (Type=notify) when it serves and when it stops. Its loop ticks every TICK
        seconds, not ten times a second."""

        _wake: asyncio.Event | None = None
        _loop: asyncio.AbstractEventLoop | None = None

        async def main_loop(self) -> None:
            self._wake, self._loop = asyncio.Event(), asyncio.get_running_loop()
            counter = 0
            should_exit = await self.on_tick(counter)
            while not should_exit:
                counter = (counter + 10) % 864000  # (each tick is uvicorn's tenth: its once-a-second work)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), TICK)
                should_exit = await self.on_tick(counter)

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            if self._loop is not None and self._wake is not None:
                self._loop.call_soon_threadsafe(self._wake.set)

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:  # listening: the model is taken, requests are answered from now on
                sd_notify("READY=1\nSTATUS=serving")

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            from namespacefs.service.streaming import end_streams

            sd_notify("STOPPING=1")
            end_streams(self.config.app)  # type: ignore[arg-type]  # (make_app's FastAPI, as serve() passes it)
            await super().shutdown(sockets)
            self._captured_signals.clear()

    return Server


#: A client must send a whole request (head and body) within this many seconds of connecting, or of
#: the previous response: a connection that sends nothing, or a byte now and then (slowloris), is
#: closed instead of being held open forever. An answer being streamed (events) is not limited.
REQUEST_TIMEOUT = 5.0


def _protocol_class() -> type:
    import asyncio

    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):
        """uvicorn's h11 protocol with a deadline for each request (REQUEST_TIMEOUT): uvicorn itself
        times out only idle keep-alive connections, after a first response."""

        _deadline: asyncio.TimerHandle | None = None

        _peer: tuple[int, int, int] | None = None  # (pid, uid, gid) of a Unix-socket client

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family == socket.AF_UNIX:
                creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
                self._peer = struct.unpack("3i", creds)
            self._arm()

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None:  # (its task has not run yet: the app sees who is asking)
                self.cycle.scope.setdefault("nsfs.peer", self._peer)  # type: ignore[typeddict-item]  # (our own key)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()  # the next request on this connection has its own deadline

        def connection_lost(self, exc: Exception | None) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = self.loop.call_later(REQUEST_TIMEOUT, self._too_slow)

        def _too_slow(self) -> None:
            self._deadline = None  # (a whole request with `Connection: close` is MUST_CLOSE, not DONE)
            if self.conn.their_state not in (h11.DONE, h11.MUST_CLOSE) and not self.transport.is_closing():
                log.info("closing a connection that sent no whole request in %.0f s", REQUEST_TIMEOUT)
                self.transport.close()

    return TimedH11Protocol


def serve(opts: Options) -> None:
    """Run until SIGINT/SIGTERM."""
    import uvicorn

    from namespacefs.service.app import make_app

    _Server = _server_class()

    token = None
    tcp_sock = None
    _socket_dir(opts.socket_path)  # first: the token's default place is in it
    if opts.tcp is not None:
        token = load_token(opts.token_file or os.path.join(os.path.dirname(os.path.abspath(opts.socket_path)), "token"))
        tcp_sock = tcp_listener(*opts.tcp)
    unix_sock = unix_listener(opts.socket_path)
    first = _bound(unix_sock)
    # an update (or a sweep slice) holds the GIL for a few ms: hand it over more often than every
    # 5 ms, so requests are not queued behind one
    sys.setswitchinterval(0.001)
    # each update makes a new model: copies of its tables, thousands of entries each, that live
    # until the next. At the default threshold (700 allocations) the youngest generation is
    # collected several times per update, each time walking the copies still alive; the model
    # makes no cycles worth finding sooner (measured at 5,000 namespaces: ~5% of an update)
    gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])
    period, budget = sweep_settings(opts.sweep)
    live = Live(interval=opts.interval, debounce=opts.debounce, settle=opts.settle, netlink=opts.netlink,
                rcvbuf=opts.rcvbuf, sweep=period, sweep_budget=budget, trace=opts.trace)
    outside = outside_listener(opts.socket_path)
    second = _bound(outside)
    try:
        live.start()
        config = uvicorn.Config(make_app(live, token), log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=2, http=_protocol_class(), timeout_keep_alive=5)
        server = _Server(config)
        log.warning("serving on %s%s (%d namespaces)", opts.socket_path,
                    f" and http://{opts.tcp[0]}:{opts.tcp[1]}" if opts.tcp else "", len(live.current()))
        server.run(sockets=[s for s in (unix_sock, outside, tcp_sock) if s is not None])
    finally:
        live.stop()
        _remove_socket(second)
        _remove_socket(first)
        if tcp_sock is not None:
            tcp_sock.close()

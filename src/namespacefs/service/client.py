"""Talking to a running daemon over its Unix socket, for the CLI and the FUSE filesystem. Every
call fails fast (None, or an empty stream) when no daemon is running, so callers fall back to their
own scan: a missing daemon costs a stat() or two and at most one connect().

The transport is a small HTTP/1.1 client of its own (one GET per connection, `Connection: close`;
bodies by Content-Length, chunked, or up to the end of the connection): http.client would import
email and friends (~40 ms) into every command only to learn that nothing listens.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple

from namespacefs import ownership, procfs
from namespacefs.service import DEFAULT_SOCKET, outside_name

if TYPE_CHECKING:
    import socket

    from namespacefs.model import Snapshot
    from namespacefs.service.events import Event

# (json and the model are imported where they are used: `nsfs ls` through GET /api/ls needs neither;
# and socket once there is a trusted socket to connect to: a command with no daemon needs none)

_MAX_HEAD = 64 * 1024  # status line and headers: the daemon's are a few hundred bytes


class _Response:
    """One HTTP/1.1 response read from a connected socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.stream: BinaryIO = sock.makefile("rb")
        status = self._line().split(None, 2)
        if len(status) < 2 or not status[0].startswith(b"HTTP/") or not status[1].isdigit():
            raise OSError(f"not an HTTP response: {b' '.join(status)[:80]!r}")
        self.status = int(status[1])
        self.headers: dict[str, str] = {}
        size = 0
        while line := self._line().rstrip(b"\r\n"):
            size += len(line)
            if size > _MAX_HEAD:
                raise OSError("HTTP response head too long")
            name, _, value = line.decode("latin-1").partition(":")
            self.headers[name.strip().lower()] = value.strip()

    def _line(self) -> bytes:
        line = self.stream.readline(_MAX_HEAD)
        if not line:
            raise OSError("connection closed in the middle of an HTTP response")
        return line

    def chunks(self) -> Iterator[bytes]:
        """The body, as it arrives."""
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while size := int(self._line().split(b";", 1)[0].strip(), 16):
                data = self.stream.read(size)
                if len(data) < size:
                    raise OSError("connection closed in the middle of a chunk")
                yield data
                self._line()  # the CRLF after the chunk
            return
        length = self.headers.get("content-length")
        if length is not None:
            yield self.stream.read(int(length))
            return
        while data := self.stream.read1(65536):  # type: ignore[attr-defined]  # (a socket makefile is buffered)
            yield data

    def read(self) -> bytes:
        return b"".join(self.chunks())

    def lines(self) -> Iterator[bytes]:
        """The body line by line (server-sent events)."""
        pending = b""
        for data in self.chunks():
            pending += data
            *complete, pending = pending.split(b"\n")
            for line in complete:
                yield line + b"\n"
        if pending:
            yield pending

    def close(self) -> None:
        self.stream.close()
        self.sock.close()


class DaemonError(Exception):
    """The daemon answered, but not with what was asked (message from its JSON `detail`)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def socket_path(path: str | None = None) -> str:
    return path or os.environ.get("NSFS_SOCKET") or DEFAULT_SOCKET


def _fuse_mounts() -> list[str]:
    """The mountpoints of FUSE filesystems in our mount namespace."""
    try:
        with open("/proc/self/mountinfo", "rb") as f:  # (read() reads to the end, page by page)
            mounts = procfs.parse_mountinfo(f.read())
    except OSError:
        return []
    return [m.mountpoint for m in mounts if m.fstype.startswith("fuse")]


def _behind_fuse(path: str, fuse: list[str]) -> bool:
    """The socket lies under a FUSE mount (the namespacefs filesystem's default mountpoint is the
    socket's directory): looking it up could wait on a FUSE server that is this very process."""
    path = os.path.abspath(path)
    return any((path + "/").startswith(mountpoint.rstrip("/") + "/") for mountpoint in fuse)


def _trusted(path: str) -> bool:
    """A daemon answers for the host only through a socket root (or we) made, in a directory no one
    else can write: anyone could otherwise plant one that serves a made-up snapshot. An untrusted one
    is ignored (the caller scans itself) with a warning."""
    try:
        ownership.check_dir(os.path.dirname(os.path.abspath(path)), "the API socket's directory")
        st = os.lstat(path)
        if st.st_uid not in (0, os.geteuid()):
            raise ownership.Untrusted(f"the API socket {path} is owned by uid {st.st_uid}, not by root or by you")
    except ownership.Untrusted as e:
        import logging

        logging.getLogger("namespacefs.service").warning("nsfs: %s; not using it", e)
        return False
    except OSError:
        return False
    return True


def _open(path: str, url: str, timeout: float | None) -> _Response | None:
    fuse = _fuse_mounts()
    if _behind_fuse(path, fuse):
        path = outside_name(path)  # the filesystem is mounted on the socket's directory: its other name
    if _behind_fuse(path, fuse) or not _trusted(path):  # (no socket at all: lstat says so, not connect)
        return None
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        sock.connect(path)  # no socket, nothing listening, not allowed (root only): no daemon
        sock.sendall(f"GET {url} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        return _Response(sock)
    except (OSError, ValueError):  # (ValueError: a status line or chunk size that is not a number)
        sock.close()
        return None


def _get(url: str, socket_path_: str | None, timeout: float) -> tuple[_Response, bytes] | None:
    """GET url from the daemon: (its response, the whole body); None when no daemon answers."""
    opened = _open(socket_path(socket_path_), url, timeout)
    if opened is None:
        return None
    try:
        return opened, opened.read()
    except (OSError, ValueError):
        return None
    finally:
        opened.close()


def get_json(url: str, socket_path_: str | None = None, timeout: float = 5.0) -> Any | None:
    """GET url from the daemon as JSON; None when no daemon answers; DaemonError on a 4xx/5xx."""
    got = _get(url, socket_path_, timeout)
    if got is None:
        return None
    resp, body = got
    if resp.status != 200:
        raise DaemonError(resp.status, _detail(body))
    import json

    return json.loads(body)


def _detail(body: bytes) -> str:
    """The message of an error answer (its JSON `detail`, else its text)."""
    import json

    try:
        return str(json.loads(body).get("detail", body.decode(errors="replace")))
    except (ValueError, AttributeError):
        return body.decode(errors="replace")


class NotAnswered(NamedTuple):
    """A daemon is there but does not answer for this (409: another names database than its own;
    400: an option it does not know): the caller does the work itself."""

    status: int  # the HTTP status of its answer


def get_printed(url: str, socket_path_: str | None = None,
                timeout: float = 5.0) -> tuple[int, bytes, str] | NotAnswered | None:
    """What a command prints, rendered by the daemon (GET /api/ls): (exit status, stdout, stderr);
    a refusal (422: the command's own error) as its exit status and message. None when no daemon
    answers; NotAnswered when it cannot answer for these options."""
    got = _get(url, socket_path_, timeout)
    if got is None:
        return None
    resp, body = got
    status = resp.headers.get("x-nsfs-exit", "")
    if resp.status == 422 and status.isdigit():
        return int(status), b"", _detail(body)
    if resp.status != 200:
        return NotAnswered(resp.status)
    return 0, body, _unquote(resp.headers.get("x-nsfs-stderr", ""))


def _unquote(text: str) -> str:
    """Percent-decoding (UTF-8) of what the daemon encoded (urllib.parse would cost an import)."""
    first, *rest = text.split("%")
    try:
        data = first.encode() + b"".join(bytes.fromhex(part[:2]) + part[2:].encode() for part in rest)
    except ValueError:
        return text
    return data.decode(errors="replace")


def fetch_snapshot(socket_path: str | None = None, timeout: float = 5.0) -> Snapshot | None:
    """The daemon's current snapshot, or None when no daemon is running (or it cannot be asked)."""
    try:
        data = get_json("/api/snapshot", socket_path, timeout)
    except (DaemonError, ValueError):
        return None
    from namespacefs.model import Snapshot

    return Snapshot.from_dict(data) if data is not None else None  # type: ignore[attr-defined]


def stream_events(socket_path_: str | None = None, kinds: str | None = None, types: str | None = None) -> Iterator[Event] | None:
    """The daemon's event stream (blocks between events), or None when no daemon is running."""
    query = "&".join(f"{k}={v}" for k, v in (("kinds", kinds), ("type", types)) if v)
    opened = _open(socket_path(socket_path_), "/api/events" + (f"?{query}" if query else ""), 5.0)
    if opened is None:
        return None
    resp = opened
    if resp.status != 200:
        try:
            body = resp.read()
        except (OSError, ValueError):
            body = b""
        resp.close()
        raise DaemonError(resp.status, _detail(body))
    resp.sock.settimeout(None)  # events may be minutes apart (keepalives every 15 s)
    return _events(resp)


def _events(resp: _Response) -> Iterator[Event]:
    import json

    from namespacefs.service.events import Event

    try:
        data: list[str] = []
        for line in resp.lines():  # to the end: the daemon went away
            text = line.decode().rstrip("\r\n")
            if text.startswith("data:"):
                data.append(text[5:].lstrip())
            elif not text and data:
                yield Event.from_dict(json.loads("\n".join(data)))
                data = []
    except (OSError, ValueError):
        return  # the connection broke
    finally:
        resp.close()

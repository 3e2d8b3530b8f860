"""Talking to a running daemon over its Unix socket, for the CLI and the FUSE filesystem. Every
call fails fast (None, or an empty stream) when no daemon is running, so callers fall back to their
own scan."""

from __future__ import annotations

import http.client
import json
import os
import socket
from collections.abc import Iterator
from typing import Any

from namespacefs import ownership, procfs
from namespacefs.model import Snapshot
from namespacefs.service import DEFAULT_SOCKET, outside_name
from namespacefs.service.events import Event


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class DaemonError(Exception):
    """The daemon answered, but not with what was asked (message from its JSON `detail`)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def socket_path(path: str | None = None) -> str:
    return path or os.environ.get("NSFS_SOCKET") or DEFAULT_SOCKET


def _behind_fuse(path: str) -> bool:
    """The socket lies under a FUSE mount (the namespacefs filesystem's default mountpoint is the
    socket's directory): looking it up could wait on a FUSE server that is this very process."""
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            mounts = procfs.parse_mountinfo(f.read())
    except OSError:
        return False
    path = os.path.abspath(path)
    return any(m.fstype.startswith("fuse") and (path + "/").startswith(m.mountpoint.rstrip("/") + "/") for m in mounts)


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


def _open(path: str, url: str, timeout: float | None) -> tuple[_UnixConnection, http.client.HTTPResponse] | None:
    if _behind_fuse(path):
        path = outside_name(path)  # the filesystem is mounted on the socket's directory: its other name
    if _behind_fuse(path) or not os.path.exists(path) or not _trusted(path):
        return None
    conn = _UnixConnection(path, timeout)
    try:
        conn.request("GET", url)
        return conn, conn.getresponse()
    except OSError:  # not listening, not allowed (the socket is root only), timed out
        conn.close()
        return None


def get_json(url: str, socket_path_: str | None = None, timeout: float = 5.0) -> Any | None:
    """GET url from the daemon as JSON; None when no daemon answers; DaemonError on a 4xx/5xx."""
    opened = _open(socket_path(socket_path_), url, timeout)
    if opened is None:
        return None
    conn, resp = opened
    try:
        body = resp.read()
    except OSError:
        return None
    finally:
        conn.close()
    if resp.status != 200:
        try:
            detail = json.loads(body).get("detail", body.decode(errors="replace"))
        except ValueError:
            detail = body.decode(errors="replace")
        raise DaemonError(resp.status, str(detail))
    return json.loads(body)


def fetch_snapshot(socket_path: str | None = None, timeout: float = 5.0) -> Snapshot | None:
    """The daemon's current snapshot, or None when no daemon is running (or it cannot be asked)."""
    try:
        data = get_json("/api/snapshot", socket_path, timeout)
    except (DaemonError, ValueError):
        return None
    return Snapshot.from_dict(data) if data is not None else None  # type: ignore[attr-defined]


def stream_events(socket_path_: str | None = None, kinds: str | None = None, types: str | None = None) -> Iterator[Event] | None:
    """The daemon's event stream (blocks between events), or None when no daemon is running."""
    query = "&".join(f"{k}={v}" for k, v in (("kinds", kinds), ("type", types)) if v)
    opened = _open(socket_path(socket_path_), "/api/events" + (f"?{query}" if query else ""), 5.0)
    if opened is None:
        return None
    conn, resp = opened
    if resp.status != 200:
        body = resp.read()
        conn.close()
        try:
            detail = json.loads(body).get("detail", "")
        except ValueError:
            detail = body.decode(errors="replace")
        raise DaemonError(resp.status, str(detail))
    if conn.sock is not None:
        conn.sock.settimeout(None)  # events may be minutes apart (keepalives every 15 s)
    return _events(conn, resp)


def _events(conn: _UnixConnection, resp: http.client.HTTPResponse) -> Iterator[Event]:
    try:
        data: list[str] = []
        while True:
            line = resp.readline()
            if not line:
                return  # the daemon went away
            text = line.decode().rstrip("\r\n")
            if text.startswith("data:"):
                data.append(text[5:].lstrip())
            elif not text and data:
                yield Event.from_dict(json.loads("\n".join(data)))
                data = []
    finally:
        conn.close()

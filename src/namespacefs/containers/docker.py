"""Docker: the names (`docker ps` NAMES), ids and labels (compose project/service) of its
containers, for any data-root.

Where dockerd runs, its API answers on its unix socket (`-H unix://…`, `hosts` in daemon.json,
else /run/docker.sock) — asked with a bounded wait (API_TIMEOUT), since a daemon that hangs or a
socket that answers garbage must cost at most that and a one-line warning. Otherwise (dockerd
stopped, or its API unusable) the names come from `DATA_ROOT/containers/ID/config.v2.json`, the
data-root taken from dockerd's command line (`--data-root`, `-g`), else from its config file
(`--config-file`, default /etc/docker/daemon.json), else /var/lib/docker. The runtime state
(`EXEC_ROOT/runtime-runc/moby`) of each daemon is an OCI root (see oci.py), and its netns bind
mounts live under `EXEC_ROOT/netns`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from namespacefs.containers.candidate import option
from namespacefs.model import Snapshot

API_TIMEOUT = 0.5  # seconds, for the whole answer
DEFAULT_DATA_ROOT = "/var/lib/docker"
DEFAULT_EXEC_ROOT = "/var/run/docker"
DEFAULT_SOCKET = "/var/run/docker.sock"
DEFAULT_CONFIG = "/etc/docker/daemon.json"
_MAX_ANSWER = 16 << 20
#: a socket that failed is not asked again for this long (one process may build several trees:
#: the wait is paid, and the warning printed, once)
RETRY_AFTER = 30.0
_failed: dict[str, float] = {}


@dataclass(frozen=True)
class Daemon:
    """Where one dockerd keeps things (from its command line and config file)."""

    data_root: str
    exec_root: str
    sockets: tuple[str, ...]
    pid: int | None = None  # None: not running


@dataclass(frozen=True)
class Known:
    """What Docker says about one container."""

    id: str
    name: str
    labels: dict[str, str] = field(default_factory=dict)


def daemons(snapshot: Snapshot) -> list[Daemon]:
    """Every dockerd running in the snapshot (root's first: a name a user's daemon gives never
    displaces one root's gives the same container), or the configured one when none runs."""
    procs = sorted((p for p in snapshot.processes.values() if p.comm == "dockerd"), key=lambda p: (p.uid != 0, p.pid))
    return [_from_argv(p.cmdline, p.pid) for p in procs] or [_from_argv(("dockerd",), None)]


def _from_argv(argv: tuple[str, ...], pid: int | None) -> Daemon:
    config = _config(option(argv, "--config-file") or DEFAULT_CONFIG)
    data_root = option(argv, "--data-root", "-g", "--graph") or _text(config.get("data-root")) or DEFAULT_DATA_ROOT
    exec_root = option(argv, "--exec-root") or _text(config.get("exec-root")) or DEFAULT_EXEC_ROOT
    hosts = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("-H", "--host")]
    hosts += [a.split("=", 1)[1] for a in argv if a.startswith(("--host=", "-H="))]
    listed = config.get("hosts")
    if not hosts and isinstance(listed, list):
        hosts = [h for h in listed if isinstance(h, str)]
    sockets = tuple(h[len("unix://"):] for h in hosts if h.startswith("unix://")) or (
        () if hosts else (DEFAULT_SOCKET,))
    return Daemon(data_root, exec_root, sockets, pid)


def _config(path: str) -> dict[str, object]:
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(1 << 20))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def containers(daemon: Daemon) -> dict[str, Known]:
    """id -> what the daemon's API says (when it runs and answers), else its data-root."""
    if daemon.pid is not None:
        for path in daemon.sockets:
            answer = _api(path)
            if answer is not None:
                return answer
    return _from_data_root(daemon.data_root)


def _api(path: str) -> dict[str, Known] | None:
    """GET /containers/json on a unix socket, in at most API_TIMEOUT; None (and a warning, once
    per socket) when it hangs, refuses or answers something that is not Docker's answer."""
    if time.monotonic() - _failed.get(path, -RETRY_AFTER) < RETRY_AFTER:
        return None
    try:
        body = _get(path, "/containers/json?all=1", time.monotonic() + API_TIMEOUT)
        items = json.loads(body)
        if not isinstance(items, list):
            raise ValueError("not a list of containers")
        found = {}
        for item in items:
            ident, names, labels = item["Id"], item.get("Names") or [], item.get("Labels") or {}
            if not isinstance(ident, str) or not isinstance(names, list) or not isinstance(labels, dict):
                raise ValueError("not a container")
            name = next((n.lstrip("/") for n in names if isinstance(n, str) and n.count("/") == 1), "")
            found[ident] = Known(ident, name or ident[:12], {str(k): str(v) for k, v in labels.items()})
        return found
    except FileNotFoundError:
        return None  # no such socket: nothing to say
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        _failed[path] = time.monotonic()
        why = "did not answer in time" if isinstance(e, TimeoutError) else f"answered badly ({e})"
        import logging  # (here: only a daemon that answers badly has something to say)

        logging.getLogger("namespacefs.containers").warning(
            "nsfs: the Docker API at %s %s; names are read from the data-root instead", path, why)
        return None


def _get(path: str, url: str, deadline: float) -> bytes:
    """One HTTP/1.0 GET over a unix socket (the server closes when it is done), all of it before
    the deadline; the body of a 200 answer."""
    import socket  # (here: only a running dockerd is asked)

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(max(0.001, deadline - time.monotonic()))
        s.connect(path)
        s.sendall(f"GET {url} HTTP/1.0\r\nHost: docker\r\n\r\n".encode())
        chunks, size = [], 0
        while True:
            s.settimeout(max(0.001, deadline - time.monotonic()))
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > _MAX_ANSWER:
                raise ValueError("an answer too large")
    answer = b"".join(chunks)
    head, sep, body = answer.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if not sep or len(status) < 2 or not status[0].startswith(b"HTTP/") or status[1] != b"200":
        raise ValueError(f"not an HTTP 200 answer: {head[:40]!r}")
    if b"transfer-encoding: chunked" in head.lower():
        body = _unchunk(body)
    return body


def _unchunk(body: bytes) -> bytes:
    out, rest = [], body
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out.append(rest[:size])
        rest = rest[size + 2:]
    return b"".join(out)


def _from_data_root(data_root: str) -> dict[str, Known]:
    base = os.path.join(data_root, "containers")
    try:
        ids = os.listdir(base)
    except OSError:
        return {}
    found = {}
    for ident in ids:
        try:
            with open(os.path.join(base, ident, "config.v2.json"), "rb") as f:
                data = json.loads(f.read(4 << 20))
            name = str(data.get("Name", "")).lstrip("/")
            labels = (data.get("Config") or {}).get("Labels") or {}
        except (OSError, ValueError, AttributeError):
            continue
        found[ident] = Known(ident, name or ident[:12], {str(k): str(v) for k, v in labels.items()})
    return found


def oci_roots(found: Iterable[Daemon]) -> list[tuple[str, str]]:
    """The runc state roots of these daemons (one per exec-root)."""
    return [(os.path.join(d.exec_root, "runtime-runc", "moby"), "docker") for d in found]

"""OCI runtimes and the engines above them, from their state directories:
runc (`/run/runc/ID/state.json`), crun (`/run/crun/ID/status`), containerd
(`/run/containerd/runc/NAMESPACE/ID/state.json`; namespace `k8s.io` is Kubernetes, `moby` Docker),
Docker (`EXEC_ROOT/runtime-runc/moby/ID/state.json`, for each dockerd: see docker.py). The names
come from the engines (engines.py). More roots (for example a `runc --root DIR`) come from
`NSFS_OCI_ROOTS` (colon-separated) or the `roots` argument. runc keeps a bundle's OCI annotations
among the labels of its state (`KEY=VALUE`), which is where Kubernetes' pod names are."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from namespacefs.containers.candidate import Candidate
from namespacefs.containers.model import Identity

#: (root, engine). A root holds one directory per container id (or per containerd namespace).
DEFAULT_ROOTS: tuple[tuple[str, str], ...] = (
    ("/run/runc", "runc"),
    ("/run/crun", "crun"),
    ("/run/docker/runtime-runc/moby", "docker"),
    ("/run/containerd/runc", "containerd"),
    ("/run/user/0/runc", "runc"),
    ("/run/user/0/crun", "crun"),
)


@dataclass(frozen=True)
class State:
    engine: str
    id: str
    pid: int
    labels: dict[str, str] = field(default_factory=dict)
    namespace: str | None = None  # containerd namespace


def extra_roots() -> list[tuple[str, str]]:
    return [(r, "runc") for r in os.environ.get("NSFS_OCI_ROOTS", "").split(":") if r]


def scan(roots: Iterable[tuple[str, str]] | None = None, extra: bool = True) -> dict[int, State]:
    """init pid -> state, for every container the runtimes' state directories describe (and the
    roots of NSFS_OCI_ROOTS, unless extra=False)."""
    found: dict[int, State] = {}
    for root, engine in list(roots if roots is not None else DEFAULT_ROOTS) + (extra_roots() if extra else []):
        for state in _scan_root(root, engine):
            found.setdefault(state.pid, state)
    return found


def _scan_root(root: str, engine: str) -> list[State]:
    try:
        entries = os.listdir(root)
    except OSError:
        return []
    states = []
    for entry in entries:
        if engine == "containerd":  # one more level: the containerd namespace
            for state in _scan_root(os.path.join(root, entry), "runc"):
                kind = {"k8s.io": "kubernetes", "moby": "docker"}.get(entry, "containerd")
                states.append(State(kind, state.id, state.pid, state.labels, entry))
            continue
        read = _read_state(os.path.join(root, entry), entry, engine)
        if read is not None:
            states.append(read)
    return states


#: runc's state.json carries the whole container config (tens of KiB): only its init pid and its
#: labels are read, where they are, instead of decoding all of it
_INIT_PID = re.compile(rb'"init_process_pid"\s*:\s*(\d+)')
_LABELS = b'"labels":'


def _read_state(directory: str, ident: str, engine: str) -> State | None:
    for name in ("state.json", "status"):
        try:
            with open(os.path.join(directory, name), "rb") as f:
                raw = f.read(64 << 20)
        except OSError:
            continue
        try:
            pid, items = _pid_and_labels(raw)
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(pid, int) or pid <= 0:
            return None
        labels = {}
        for item in items if isinstance(items, list) else []:
            key, _, value = str(item).partition("=")
            labels[key] = value
        return State(engine, ident, pid, labels)
    return None


def _pid_and_labels(raw: bytes) -> tuple[object, object]:
    """(init pid, config labels) of runc's state.json, or of crun's (small) status file."""
    m = _INIT_PID.search(raw)
    if m is None:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("not a state")
        return data.get("init_process_pid") or data.get("pid"), (data.get("config") or {}).get("labels")
    at = raw.find(_LABELS)
    if at < 0:
        return int(m.group(1)), []
    text = raw[at + len(_LABELS):].decode()
    return int(m.group(1)), json.JSONDecoder().raw_decode(text.lstrip())[0]


def identify(c: Candidate, states: dict[int, State]) -> Identity | None:
    """The container's identity from these OCI states alone (and the engines' names for it)."""
    from namespacefs.containers.engines import World  # (engines builds on this module)

    world = World(c.snapshot, [])
    world.states, world.docker_states = states, {}  # (cached properties: set, never read)
    state = next((states[p] for p in (c.init.pid, *c.pids) if p in states), None)
    if state is None:
        return None
    base = world._base(c)
    return world._named(*base) if base is not None else None

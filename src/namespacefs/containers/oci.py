"""OCI runtimes and the engines above them, from their state directories:
runc (`/run/runc/ID/state.json`), crun (`/run/crun/ID/status`), containerd
(`/run/containerd/runc/NAMESPACE/ID/state.json`; namespace `k8s.io` is Kubernetes, `moby` Docker),
Docker (`/run/docker/runtime-runc/moby/ID/state.json`, names in
`/var/lib/docker/containers/ID/config.v2.json`) and Podman (names in
`/var/lib/containers/storage/overlay-containers/containers.json`). More roots (for example a
`runc --root DIR`) come from `NSFS_OCI_ROOTS` (colon-separated) or the `roots` argument."""

from __future__ import annotations

import json
import os
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
DOCKER_STATE = "/var/lib/docker/containers"
PODMAN_STATE = "/var/lib/containers/storage/overlay-containers/containers.json"


@dataclass(frozen=True)
class State:
    engine: str
    id: str
    pid: int
    labels: dict[str, str] = field(default_factory=dict)
    namespace: str | None = None  # containerd namespace


def extra_roots() -> list[tuple[str, str]]:
    return [(r, "runc") for r in os.environ.get("NSFS_OCI_ROOTS", "").split(":") if r]


def scan(roots: Iterable[tuple[str, str]] | None = None) -> dict[int, State]:
    """init pid -> state, for every container the runtimes' state directories describe."""
    found: dict[int, State] = {}
    for root, engine in list(roots if roots is not None else DEFAULT_ROOTS) + extra_roots():
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
        state = _read_state(os.path.join(root, entry), entry, engine)
        if state is not None:
            states.append(state)
    return states


def _read_state(directory: str, ident: str, engine: str) -> State | None:
    for name in ("state.json", "status"):
        try:
            with open(os.path.join(directory, name)) as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        pid = data.get("init_process_pid") or data.get("pid")
        if not isinstance(pid, int) or pid <= 0:
            return None
        labels = {}
        for item in (data.get("config") or {}).get("labels") or []:
            key, _, value = str(item).partition("=")
            labels[key] = value
        return State(engine, ident, pid, labels)
    return None


def _docker_name(ident: str) -> str | None:
    try:
        with open(os.path.join(DOCKER_STATE, ident, "config.v2.json")) as f:
            return str(json.load(f).get("Name", "")).lstrip("/") or None
    except (OSError, ValueError):
        return None


def _podman_names() -> dict[str, str]:
    try:
        with open(PODMAN_STATE) as f:
            return {c["id"]: c["names"][0] for c in json.load(f) if c.get("names")}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def identify(c: Candidate, states: dict[int, State]) -> Identity | None:
    state = next((states[p] for p in (c.init.pid, *c.pids) if p in states), None)
    if state is None:
        return None
    labels = dict(state.labels)
    name = state.id
    engine = state.engine
    if engine == "docker" and (docker := _docker_name(state.id)):
        name = docker
    elif engine == "kubernetes":
        pod = labels.get("io.kubernetes.pod.name")
        cname = labels.get("io.kubernetes.container.name")
        name = f"{pod}.{cname}" if pod and cname else state.id[:12]
    elif len(state.id) == 64 and (podman := _podman_names().get(state.id)):
        engine, name = "podman", podman
    elif len(state.id) == 64:
        name = state.id[:12]
    if state.namespace:
        labels.setdefault("containerd.namespace", state.namespace)
    return Identity(engine, name, state.id, labels)

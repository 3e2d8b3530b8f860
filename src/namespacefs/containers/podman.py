"""Podman, rootful and rootless: container names, pods (their names, infra containers, members)
and the rootless pause process, from what podman itself keeps.

Each podman store (graph root) holds its containers' names in
`overlay-containers/containers.json` (any `<driver>-containers/`) and its pods in libpod's state
database `libpod/bolt_state.db`, where podman stores each pod's and each container's config as
JSON (`{"id":…,"name":"shop","hasInfra":true,…}`, `{"spec":…,"id":…,"name":…,"pod":POD_ID}`).
The stores are found from what runs (each container's `conmon` names its store:
`--exit-command-arg --root DIR`), and at their default places: /var/lib/containers/storage for
root, and `~/.local/share/containers/storage` of every user with a runtime dir /run/user/UID
(rootless). A rootless user's pause process (holding its user and mount namespaces; pid in
`/run/user/UID/libpod/tmp/pause.pid`) is the container `podman-USER`, so that name never moves
to a conmon when pids wrap.
"""

from __future__ import annotations

import json
import os
import pwd
import re
from dataclasses import dataclass, field

from namespacefs.model import Snapshot
from namespacefs.syntax import is_number

ROOTFUL_STORE = "/var/lib/containers/storage"
RUNTIME_DIRS = "/run/user"
_MAX_DB = 64 << 20


@dataclass(frozen=True)
class Pod:
    id: str
    name: str  # as `podman pod ps` names it
    infra: str | None = None  # the infra container's id


@dataclass
class Store:
    """What one podman store knows: container id -> name, container id -> pod id, pods by id."""

    names: dict[str, str] = field(default_factory=dict)
    pod_of: dict[str, str] = field(default_factory=dict)
    pods: dict[str, Pod] = field(default_factory=dict)
    infra: set[str] = field(default_factory=set)  # the ids of infra containers


def stores(snapshot: Snapshot) -> list[str]:
    """The graph roots of every podman store in use or in its default place."""
    found: list[str] = []
    for p in snapshot.processes.values():
        if p.comm == "conmon":
            argv = p.cmdline
            for i in range(len(argv) - 3):
                if argv[i:i + 3] == ("--exit-command-arg", "--root", "--exit-command-arg") and argv[i + 3] not in found:
                    found.append(argv[i + 3])
    for root in [ROOTFUL_STORE, *_rootless_stores()]:
        if root not in found and os.path.isdir(root):
            found.append(root)
    return found


def _rootless_stores() -> list[str]:
    try:
        uids = [int(d) for d in os.listdir(RUNTIME_DIRS) if is_number(d)]
    except OSError:
        return []
    found = []
    for uid in uids:
        try:
            home = pwd.getpwuid(uid).pw_dir
        except KeyError:
            continue
        found.append(os.path.join(home, ".local", "share", "containers", "storage"))
    return found


def read_store(root: str) -> Store:
    store = Store()
    try:
        drivers = [d for d in os.listdir(root) if d.endswith("-containers")]
    except OSError:
        return store
    for driver in drivers:
        try:
            with open(os.path.join(root, driver, "containers.json"), "rb") as f:
                for c in json.loads(f.read(_MAX_DB)):
                    if isinstance(c, dict) and isinstance(c.get("id"), str) and c.get("names"):
                        store.names[c["id"]] = str(c["names"][0])
        except (OSError, ValueError, TypeError):
            continue
    _read_state_db(os.path.join(root, "libpod", "bolt_state.db"), store)
    return store


#: in a container's config: `…},"id":"ID","name":"NAME","pod":"POD",…` (after its OCI spec)
_MEMBER = re.compile(rb'"id":"([0-9a-f]{64})","name":"((?:[^"\\]|\\.){1,255})","pod":"([0-9a-f]{64})"')
#: a pod's state: {"cgroupPath":…,"InfraContainerID":"ID"}
_INFRA = re.compile(rb'"InfraContainerID":"([0-9a-f]{64})"')
#: a pod's config starts {"id":"POD","name":"NAME",… and says whether it has an infra container
_POD = re.compile(rb'\{"id":"([0-9a-f]{64})","name":"((?:[^"\\]|\\.){1,255})"')


def _read_state_db(path: str, store: Store) -> None:
    """The pods and their members from podman's bolt database, where podman keeps each pod's and
    each container's config as JSON (each stored whole: in a page or contiguous overflow pages).
    Only the few fields needed are read, where they are: a container's config is ~10 KiB of OCI
    spec, which is not decoded."""
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_DB)
    except OSError:
        return
    for m in _MEMBER.finditer(data):
        cid, name, pod = m.group(1).decode(), _unquote(m.group(2)), m.group(3).decode()
        store.names.setdefault(cid, name)
        store.pod_of[cid] = pod
    store.infra |= {m.group(1).decode() for m in _INFRA.finditer(data)}
    for m in _POD.finditer(data):
        head = data[m.end():m.end() + 4096]
        if b'"hasInfra"' in head or b'"sharesNet"' in head:
            store.pods[m.group(1).decode()] = Pod(m.group(1).decode(), _unquote(m.group(2)))
    for cid, pod in store.pod_of.items():
        if cid in store.infra and pod in store.pods:
            store.pods[pod] = Pod(pod, store.pods[pod].name, cid)


def _unquote(raw: bytes) -> str:
    try:
        return str(json.loads(b'"' + raw + b'"'))
    except ValueError:
        return raw.decode(errors="replace")


def pause_pids(proc: str = "/proc") -> dict[int, tuple[int, str]]:
    """pid -> (uid, user name), of each rootless user's pause process as its pid file says (a file
    the user writes: the caller checks the process is that user's)."""
    found: dict[int, tuple[int, str]] = {}
    try:
        uids = [int(d) for d in os.listdir(RUNTIME_DIRS) if is_number(d)]
    except OSError:
        return found
    for uid in uids:
        try:
            with open(os.path.join(RUNTIME_DIRS, str(uid), "libpod", "tmp", "pause.pid"), "rb") as f:
                text = f.read(32).decode("ascii", "replace").strip()
            pid = int(text) if is_number(text) else 0
        except (OSError, ValueError):
            continue
        if pid > 0:
            try:
                found[pid] = (uid, pwd.getpwuid(uid).pw_name)
            except KeyError:
                found[pid] = (uid, str(uid))
    return found

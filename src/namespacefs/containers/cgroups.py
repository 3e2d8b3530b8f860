"""Engines recognised by the cgroup path of a container's init, where no state directory says
more: Docker (`docker-ID.scope`, `/docker/ID`), Podman (`libpod-ID.scope`), containerd's CRI
(`cri-containerd-ID.scope`), CRI-O (`crio-ID.scope`), Kubernetes pods (`kubepods…pod<UID>`) and
LXC (`lxc.payload.NAME`, `/lxc/NAME`)."""

from __future__ import annotations

import functools
import re

from namespacefs.containers.candidate import Candidate
from namespacefs.containers.model import Identity

_ID = r"([0-9a-f]{64})"
PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("lxc", re.compile(r"/lxc\.payload\.([^/]+)")),
    ("lxc", re.compile(r"^/lxc/([^/]+)")),
    ("podman", re.compile(r"libpod-" + _ID)),
    ("cri-o", re.compile(r"crio-" + _ID)),
    ("containerd", re.compile(r"cri-containerd-" + _ID)),
    ("docker", re.compile(r"docker-" + _ID + r"\.scope")),
    ("docker", re.compile(r"/docker/" + _ID)),
)
POD = re.compile(r"kubepods.*?pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")


def identify(c: Candidate) -> Identity | None:
    found = match(c.cgroup_paths())
    if found is None:
        return None
    engine, name, ident, labels = found
    return Identity(engine, name, ident, dict(labels))


@functools.lru_cache(maxsize=1024)
def match(paths: tuple[str, ...]) -> tuple[str, str, str, tuple[tuple[str, str], ...]] | None:
    """(engine, name, id, labels) that these cgroup paths show, worked out once per distinct set
    of paths (the processes of a host share a few)."""
    for path in paths:
        pod = POD.search(path)
        for engine, pattern in PATTERNS:
            m = pattern.search(path)
            if not m:
                continue
            ident = m.group(1)
            labels = [("cgroup", path)]
            if pod:
                labels.append(("io.kubernetes.pod.uid", pod.group(1).replace("_", "-")))
                engine = "kubernetes" if engine in ("containerd", "docker") else engine
            name = ident if engine == "lxc" else ident[:12]
            return engine, name, ident, tuple(labels)
        if pod:
            uid = pod.group(1).replace("_", "-")
            return "kubernetes", f"pod-{uid[:8]}", uid, (("cgroup", path), ("io.kubernetes.pod.uid", uid))
    return None

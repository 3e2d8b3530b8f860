"""Engines recognised by the cgroup path of a container's init, where no state directory says
more: Docker (`docker-ID.scope`, `/docker/ID`), Podman (`libpod-ID.scope`), containerd's CRI
(`cri-containerd-ID.scope`), CRI-O (`crio-ID.scope`), Kubernetes pods (`kubepods…pod<UID>`) and
LXC (`lxc.payload.NAME`, `/lxc/NAME`)."""

from __future__ import annotations

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
    for path in c.cgroup_paths():
        pod = POD.search(path)
        for engine, pattern in PATTERNS:
            m = pattern.search(path)
            if not m:
                continue
            ident = m.group(1)
            labels = {"cgroup": path}
            if pod:
                labels["io.kubernetes.pod.uid"] = pod.group(1).replace("_", "-")
                engine = "kubernetes" if engine in ("containerd", "docker") else engine
            name = ident if engine == "lxc" else ident[:12]
            return Identity(engine, name, ident, labels)
        if pod:
            uid = pod.group(1).replace("_", "-")
            return Identity("kubernetes", f"pod-{uid[:8]}", uid, {"cgroup": path, "io.kubernetes.pod.uid": uid})
    return None

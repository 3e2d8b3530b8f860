"""Who runs a container: what each engine publishes, read once per tree (World) and only when a
container needs it.

In order, for each container:
  1. a rootless Podman user's pause process: the container `podman-USER`;
  2. the engine and its id, from an OCI runtime's state (init pid), the process that started the
     container (Podman's `conmon -c ID -n NAME`, containerd's `containerd-shim… -namespace NS -id
     ID`), or its cgroup path (`docker-ID.scope`, `libpod-ID`, …); then the engine's name for it:
     Docker's API or data-root (docker.py), Podman's store and pods (podman.py), Kubernetes'
     OCI annotations (pod, namespace, container: CRI's `io.kubernetes.cri.*` or CRI-O's
     `io.kubernetes.pod.name` …);
     LXC's monitor (`[lxc monitor] LXCPATH NAME`) names its container;
  3. the engines recognised by their processes alone: systemd-nspawn, bubblewrap/Flatpak, LXC and
     the others by cgroup, browsers, systemd services.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from functools import cached_property

from namespacefs.containers import browser, bwrap, cgroups, docker, nspawn, oci, podman, systemd
from namespacefs.containers.candidate import Candidate, option
from namespacefs.containers.model import Identity
from namespacefs.model import Snapshot

FALLBACKS: tuple[Callable[[Candidate], Identity | None], ...] = (
    nspawn.identify, bwrap.identify, cgroups.identify, browser.identify, systemd.identify,
)
#: containerd namespaces and the engines that use them
CONTAINERD_NAMESPACES = {"k8s.io": "kubernetes", "moby": "docker"}
_HEX64 = re.compile(r"[0-9a-f]{64}")


class World:
    """What the engines publish, read lazily, at most once per tree."""

    def __init__(self, snapshot: Snapshot, roots: Iterable[tuple[str, str]] | None = None) -> None:
        self.snapshot = snapshot
        self.roots = list(roots) if roots is not None else None

    @cached_property
    def daemons(self) -> list[docker.Daemon]:
        return docker.daemons(self.snapshot)

    @cached_property
    def states(self) -> dict[int, oci.State]:
        """init pid -> OCI state, from every root but Docker's (see docker_states)."""
        roots = self.roots if self.roots is not None else oci.DEFAULT_ROOTS
        return oci.scan([r for r in roots if r[1] != "docker"])

    @cached_property
    def docker_states(self) -> dict[int, oci.State]:
        """Docker's runc states (each dockerd's exec-root): only for a container that neither its
        containerd shim nor another runtime's state names (dockerd always starts one)."""
        roots = [r for r in (self.roots if self.roots is not None else oci.DEFAULT_ROOTS) if r[1] == "docker"]
        return oci.scan(roots + [r for r in docker.oci_roots(self.daemons) if r not in roots], extra=False)

    @cached_property
    def docker(self) -> dict[str, docker.Known]:
        found: dict[str, docker.Known] = {}
        for d in self.daemons:
            for ident, known in docker.containers(d).items():
                found.setdefault(ident, known)
        return found

    @cached_property
    def podman(self) -> podman.Store:
        """Every store's names and pods; a root-owned store's first (a rootless user's store is
        the user's to write: it never renames or regroups what root's store names)."""
        merged = podman.Store()
        for root in sorted(podman.stores(self.snapshot), key=_owner):
            store = podman.read_store(root)
            for attr in ("names", "pod_of", "pods"):
                for k, v in getattr(store, attr).items():
                    getattr(merged, attr).setdefault(k, v)
            merged.infra |= store.infra
        return merged

    @cached_property
    def pauses(self) -> dict[int, str]:
        """pid -> user, of each rootless user's pause process: only a process of that very user
        (the pid file is the user's to write; it must not name someone else's container)."""
        procs = self.snapshot.processes
        return {pid: user for pid, (uid, user) in podman.pause_pids().items()
                if pid in procs and procs[pid].uid == uid and uid != 0}

    def identify(self, c: Candidate) -> Identity | None:
        if (pause := next((p for p in c.pids if p in self.pauses), None)) is not None:
            user = self.pauses[pause]
            return Identity("podman", f"podman-{user}", f"pause-{user}", {"podman.pause": str(pause)})
        base = self._base(c)
        if base is not None:
            return self._named(*base)
        for engine in FALLBACKS:
            found = engine(c)
            if found is not None:
                return self._named(found.engine, found.engine_id, dict(found.labels), found) if found.engine in (
                    "docker", "podman", "kubernetes", "containerd") and found.engine_id else found
        return None

    def _base(self, c: Candidate) -> tuple[str, str, dict[str, str]] | None:
        """(engine, id, labels) from the process that started the container (no I/O), else from
        an OCI runtime's state (read once, for every container)."""
        starter = c.starter
        if starter is not None and starter.comm == "conmon" and (cid := option(starter.cmdline, "-c", "--cid")):
            labels = {"conmon.pid": str(starter.pid)}
            if name := option(starter.cmdline, "-n", "--name"):
                labels["conmon.name"] = name
            return "podman", cid, labels
        if starter is not None and starter.comm.startswith("containerd-shim") and (
                cid := option(starter.cmdline, "-id")):
            ns = option(starter.cmdline, "-namespace") or "default"
            labels = {"containerd.namespace": ns}
            if ns != "moby":  # (Docker's names and labels come from Docker; CRI's from the bundle)
                labels.update(_bundle_annotations(c.proc, starter.pid))
            return CONTAINERD_NAMESPACES.get(ns, "containerd"), cid, labels
        if starter is not None and starter.comm == "lxc-start":
            # the monitor LXC runs for each container retitles itself `[lxc monitor] LXCPATH NAME`
            words = " ".join(starter.cmdline).split(" ")
            if words[:2] == ["[lxc", "monitor]"] and len(words) == 4:
                return "lxc", words[3], {"lxc.path": words[2], "lxc.monitor": str(starter.pid)}
        pids = (c.init.pid, *c.pids[:64])
        state = next((self.states[p] for p in pids if p in self.states), None) or next(
            (self.docker_states[p] for p in pids if p in self.docker_states), None)
        if state is not None:
            labels = dict(state.labels)
            if state.namespace:
                labels.setdefault("containerd.namespace", state.namespace)
            return state.engine, state.id, labels
        return None

    def _named(self, engine: str, ident: str, labels: dict[str, str], fallback: Identity | None = None) -> Identity:
        """The engine's own name for the container with this id, and its pod."""
        k8s = _kubernetes(labels)
        if k8s is not None:
            name, groups = k8s
            return Identity("kubernetes" if engine in ("docker", "containerd", "runc") else engine, name, ident,
                            labels, groups)
        if engine == "docker":
            known = self.docker.get(ident) or next(
                (k for i, k in self.docker.items() if len(ident) >= 12 and i.startswith(ident)), None)
            if known is not None:
                return Identity("docker", known.name, known.id, {**labels, **known.labels})
        if engine == "podman" or (engine in ("runc", "crun") and _HEX64.fullmatch(ident)):
            store = self.podman
            full = ident if ident in store.names else next(
                (i for i in store.names if len(ident) >= 12 and i.startswith(ident)), None)
            if full is not None:
                group: tuple[tuple[str, str | None], ...] = ()
                if (pod := store.pods.get(store.pod_of.get(full, ""))) is not None:
                    group = ((pod.name, pod.id),)
                    labels = {**labels, "podman.pod": pod.name, "podman.pod_id": pod.id}
                    if full == pod.infra:
                        labels["podman.infra"] = "true"
                return Identity("podman", store.names[full], full, labels, group)
            if engine == "podman" and (conmon_name := labels.get("conmon.name")):
                return Identity("podman", conmon_name, ident, labels)
        if fallback is not None:
            return fallback
        if engine == "lxc":
            return Identity("lxc", ident, ident, labels)
        return Identity(engine, ident[:12] if len(ident) == 64 else ident, ident, labels)


def _owner(path: str) -> int:
    try:
        return os.stat(path).st_uid
    except OSError:
        return 1 << 32


def _kubernetes(labels: Mapping[str, str]) -> tuple[str, tuple[tuple[str, str | None], ...]] | None:
    """(container name, (namespace, pod) groups) from the annotations CRI engines write: CRI's
    (containerd) `io.kubernetes.cri.*` and CRI-O's `io.kubernetes.pod.*` / `.container.name`."""
    def first(*keys: str) -> str | None:
        return next((labels[k] for k in keys if labels.get(k)), None)

    pod = first("io.kubernetes.pod.name", "io.kubernetes.cri.sandbox-name", "io.kubernetes.cri-o.SandboxName")
    if not pod:
        return None
    namespace = first("io.kubernetes.pod.namespace", "io.kubernetes.cri.sandbox-namespace")
    kind = first("io.kubernetes.cri.container-type", "io.kubernetes.cri-o.ContainerType", "io.kubernetes.docker.type")
    name = first("io.kubernetes.container.name", "io.kubernetes.cri.container-name") or (
        "sandbox" if kind in ("sandbox", "podsandbox") else pod)
    pod_id = first("io.kubernetes.cri.sandbox-id", "io.kubernetes.cri-o.SandboxID", "io.kubernetes.pod.uid",
                   "io.kubernetes.cri.sandbox-uid")
    group: tuple[tuple[str, str | None], ...] = ((pod, pod_id),)
    if namespace:
        group = ((namespace, None), *group)
    return name, group


def _bundle_annotations(proc: str, shim: int) -> dict[str, str]:
    """The OCI annotations of the bundle a containerd shim runs in (its working directory)."""
    try:
        with open(f"{proc}/{shim}/cwd/config.json", "rb") as f:
            spec = json.loads(f.read(8 << 20))
        annotations = spec.get("annotations") or {}
        return {str(k): str(v) for k, v in annotations.items()} if isinstance(annotations, dict) else {}
    except (OSError, ValueError, AttributeError):
        return {}

"""Turning what a user types into a namespace (or a container) of a snapshot: the one selector
grammar of every front end (ls, show, enter, kill, pin, the FUSE paths, the HTTP API).

Accepted everywhere a namespace is expected:
  INODE              4026532290     (all ASCII digits: an inode or a 64-bit id, never a name)
  TYPE:[INODE]       net:[4026532290]   (what readlink /proc/PID/ns/net prints)
  PATH               /proc/1234/ns/net, /run/netns/web (any nsfs file or bind mount)
  PID:TYPE           1234:net
  ID                 the kernel's 64-bit namespace id (also as id:ID)
  NAME / NAME PATH   once names are assigned (see namespacefs.names): net-web, /user-3f9a1c/net-web
  NETNS              an `ip netns` name: web (the bind mount /run/netns/web)
and, where a container tree is given (enter, kill, show, pin):
  CONTAINER          a container's path (/web, web/inner), name, or engine id (12+ characters)
  PID                all ASCII digits, for a command that takes processes (enter, kill): a pid

A name that means two things is an error listing them; a near miss suggests the closest names.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from namespacefs.kernel import NS_TYPES
from namespacefs.model import HolderKind, Namespace, NsType, Snapshot
from namespacefs.procfs import parse_ns_link
from namespacefs.syntax import is_number

if TYPE_CHECKING:
    from namespacefs.containers import Container, ContainerTree

NETNS_DIR = "/run/netns/"


class NotFound(LookupError):
    """The spec names no namespace in the snapshot; str() says why, for the user."""


@dataclass(frozen=True)
class Target:
    """What a spec resolved to: exactly one of a namespace, a container, a process."""

    spec: str
    namespace: Namespace | None = None
    container: Container | None = None
    pid: int | None = None

    def describe(self) -> str:
        """Exactly what was hit, for the user."""
        if self.container is not None:
            c = self.container
            engine = f"{c.engine} {c.engine_id[:12]}" if c.engine_id else c.engine
            return f"container {c.path} ({engine}, init {c.init})"
        if self.namespace is not None:
            ns = self.namespace
            return f"{ns.type}:[{ns.inode}]" + (f" ({ns.name})" if ns.name else "")
        return f"process {self.pid}"


def number(text: str) -> int | None:
    """The value of text if it is a number (syntax.is_number: ASCII digits only; `²`, `١` and
    `1_000` are not numbers), else None."""
    return int(text) if is_number(text) else None


def resolve(snapshot: Snapshot, spec: str, nstype: str | None = None, files: bool = True) -> Namespace:
    """The namespace spec names (see the module docstring), of type nstype if given. files=False: a
    PATH is never looked up on the filesystem (a remote caller's selector must not tell which files
    exist on this host); only name paths of the snapshot match."""
    target = resolve_target(snapshot, spec, nstype=nstype, files=files)
    assert target.namespace is not None
    return target.namespace


def resolve_target(snapshot: Snapshot, spec: str, tree: ContainerTree | None = None, nstype: str | None = None,
                   pids: bool = False, namespaces: bool = True, files: bool = True) -> Target:
    """What spec names: a namespace (of type nstype), a container of tree, or (pids=True) a process.
    namespaces=False: only containers and processes (kill); files=False: as for resolve()."""
    spec = spec.strip()
    if not spec:
        raise NotFound("an empty name")
    found = _resolve(snapshot, spec, tree, nstype, pids, namespaces, files)
    if nstype and found.namespace is not None and found.namespace.type != nstype:
        raise NotFound(f"{spec} is a {found.namespace.type} namespace, not {nstype}")
    return found


def _resolve(snapshot: Snapshot, spec: str, tree: ContainerTree | None, nstype: str | None, pids: bool,
             namespaces: bool, files: bool) -> Target:
    if namespaces and (link := parse_ns_link(spec)):
        return Target(spec, _by_inode(snapshot, link[1], spec, link[0]))
    if namespaces and spec.startswith("id:"):
        return Target(spec, _by_id(snapshot, spec[3:]))
    pid, sep, kind = spec.partition(":")
    if namespaces and sep and number(pid) is not None:
        if kind not in NS_TYPES:
            raise NotFound(f"'{kind}' is not a namespace type ({', '.join(NS_TYPES)})")
        ns = snapshot.namespace_of(int(pid), kind)
        if ns is None:
            raise NotFound(f"no process {pid} (or it is not visible)")
        return Target(spec, ns)
    if (value := number(spec)) is not None:
        return _by_number(snapshot, spec, value, pids, namespaces)
    if namespaces and files and "/" in spec and os.path.exists(spec):
        try:
            return Target(spec, _by_path(snapshot, spec))
        except NotFound:
            if tree is None or not tree.lookup(spec):
                raise
    return _by_name(snapshot, spec, tree, nstype, namespaces)


def _by_number(snapshot: Snapshot, spec: str, value: int, pids: bool, namespaces: bool) -> Target:
    """All digits: a pid (where processes are targets), else an inode or an id; never a name."""
    if pids and value in snapshot.processes:
        return Target(spec, pid=value)
    if namespaces:
        ns = snapshot.get(value) or snapshot.by_id(value)
        if ns is not None:
            return Target(spec, ns)
    what = " or ".join(w for w, on in (("process", pids), ("namespace inode or id", namespaces)) if on)
    raise NotFound(f"no {what} {value} (a number is never taken as a name)")


def _by_inode(snapshot: Snapshot, inode: int, spec: str, nstype: str | None = None) -> Namespace:
    ns = snapshot.get(inode)
    if ns is None or (nstype and ns.type != nstype):
        raise NotFound(f"no namespace {spec} (it may have gone, or not be visible to you)")
    return ns


def _by_id(snapshot: Snapshot, text: str) -> Namespace:
    value = number(text)
    if value is None or (ns := snapshot.by_id(value)) is None:
        raise NotFound(f"no namespace has id {text}")
    return ns


def _by_path(snapshot: Snapshot, path: str) -> Namespace:
    try:
        st = os.stat(path)
    except OSError as e:
        raise NotFound(f"{path}: {e.strerror}") from None
    ns = snapshot.get(st.st_ino)
    if ns is None or (ns.dev and ns.dev != st.st_dev):
        raise NotFound(f"{path} is not a namespace file")
    return ns


def netns_names(ns: Namespace) -> list[str]:
    """The `ip netns` names of a net namespace (its bind mounts under /run/netns)."""
    if ns.type != NsType.NET:
        return []
    found = {h.path[len(NETNS_DIR):] for h in ns.holders
             if h.kind == HolderKind.BINDMOUNT and h.path and h.path.startswith(NETNS_DIR)}
    return sorted(name for name in found if "/" not in name) if found else []


def _by_name(snapshot: Snapshot, spec: str, tree: ContainerTree | None, nstype: str | None,
             namespaces: bool) -> Target:
    """A namespace name or name path, an ip netns name, or a container: exactly one of them."""
    found: list[Target] = []
    if namespaces:
        named = [ns for ns in snapshot if spec in (ns.name, ns.path) and (nstype is None or ns.type == nstype)]
        if not named and (nstype is None or nstype == "net"):
            named = [ns for ns in snapshot if spec in netns_names(ns)]
        found += [Target(spec, ns) for ns in named]
    if tree is not None:
        found += [Target(spec, container=c) for c in tree.lookup(spec)]
    if len(found) == 1:
        return found[0]
    if found:
        listed = ", ".join(sorted(t.describe() for t in found))
        raise NotFound(f"'{spec}' is ambiguous: {listed}; give the path, inode or id")
    what = "container" if not namespaces else "namespace" if tree is None else "namespace or container"
    raise NotFound(f"no {what} is called '{spec}'{_suggest(snapshot, spec, tree, namespaces)}")


def _suggest(snapshot: Snapshot, spec: str, tree: ContainerTree | None, namespaces: bool) -> str:
    known: list[str] = []
    if namespaces:
        for ns in snapshot:
            known += [n for n in (ns.name, *netns_names(ns)) if n]
    if tree is not None:
        known += tree.names()
    close = difflib.get_close_matches(spec, sorted(set(known)), n=3, cutoff=0.75)
    return f"; did you mean {' or '.join(close)}?" if close else ""

"""Turning what a user types into a namespace of a snapshot.

Accepted everywhere a namespace is expected:
  INODE              4026532290
  TYPE:[INODE]       net:[4026532290]   (what readlink /proc/PID/ns/net prints)
  PATH               /proc/1234/ns/net, /run/netns/web (any nsfs file or bind mount)
  PID:TYPE           1234:net
  ID                 the kernel's 64-bit namespace id (also as id:ID)
  NAME / NAME PATH   once names are assigned (see namespacefs.names)
"""

from __future__ import annotations

import os

from namespacefs.kernel import NS_TYPES
from namespacefs.model import Namespace, Snapshot
from namespacefs.procfs import parse_ns_link
from namespacefs.syntax import is_number


class NotFound(LookupError):
    """The spec names no namespace in the snapshot; str() says why, for the user."""


def resolve(snapshot: Snapshot, spec: str, nstype: str | None = None, files: bool = True) -> Namespace:
    """files=False: a PATH is never looked up on the filesystem (a remote caller's selector must not
    tell which files exist on this host); only name paths of the snapshot match."""
    spec = spec.strip()
    if not spec:
        raise NotFound("an empty namespace name")
    ns = _resolve(snapshot, spec, nstype, files)
    if nstype and ns.type != nstype:
        raise NotFound(f"{spec} is a {ns.type} namespace, not {nstype}")
    return ns


def _resolve(snapshot: Snapshot, spec: str, nstype: str | None, files: bool = True) -> Namespace:
    if link := parse_ns_link(spec):
        return _by_inode(snapshot, link[1], spec, link[0])
    if spec.startswith("id:"):
        return _by_id(snapshot, spec[3:], spec)
    pid, sep, kind = spec.partition(":")
    if sep and is_number(pid):
        if kind not in NS_TYPES:
            raise NotFound(f"'{kind}' is not a namespace type ({', '.join(NS_TYPES)})")
        ns = snapshot.namespace_of(int(pid), kind)
        if ns is None:
            raise NotFound(f"no process {pid} (or it is not visible)")
        return ns
    if is_number(spec):
        number = int(spec)
        ns = snapshot.get(number) or snapshot.by_id(number)
        if ns is None:
            raise NotFound(f"no namespace has inode or id {number}")
        return ns
    if files and "/" in spec and os.path.exists(spec):
        return _by_path(snapshot, spec)
    named = _by_name(snapshot, spec, nstype)
    if named is not None:
        return named
    raise NotFound(f"no namespace is called '{spec}'")


def _by_inode(snapshot: Snapshot, inode: int, spec: str, nstype: str | None = None) -> Namespace:
    ns = snapshot.get(inode)
    if ns is None or (nstype and ns.type != nstype):
        raise NotFound(f"no namespace {spec} (it may have gone, or not be visible to you)")
    return ns


def _by_id(snapshot: Snapshot, text: str, spec: str) -> Namespace:
    if not is_number(text) or (ns := snapshot.by_id(int(text))) is None:
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


def _by_name(snapshot: Snapshot, spec: str, nstype: str | None) -> Namespace | None:
    """A name or a name path, as filled in by the naming core."""
    matches = [ns for ns in snapshot if spec in (ns.name, ns.path) and (nstype is None or ns.type == nstype)]
    if len(matches) > 1:
        paths = ", ".join(sorted(str(ns.path or ns.inode) for ns in matches))
        raise NotFound(f"'{spec}' is ambiguous: {paths}; give the path")
    return matches[0] if matches else None

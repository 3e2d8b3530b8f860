"""Default names, names from the world, validation, and the assignment of one name to every
namespace of a snapshot. Pure: no I/O (the stored renames are passed in).

Precedence, within each scope (the namespaces owned by one user namespace):
  1. an explicit rename (`nsfs rename`), used as given;
  2. a name from the world, as TYPE-NAME: the container engine's name, else the `ip netns` name
     (a bind mount under /run/netns);
  3. TYPE-HASH: a keyed digest (HMAC-SHA256, the boot id as key) of the type and the 64-bit id (the
     inode where the kernel has no id), 6 hex digits, lengthened only where two would collide.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterable, Mapping
from typing import Final

from namespacefs._digest import hmac_sha256_hex
from namespacefs.kernel import HIERARCHICAL, NS_TYPES
from namespacefs.model import Namespace, NsType, Snapshot, by_type, netns_names
from namespacefs.names.store import NamingError, StoredName
from namespacefs.syntax import MAX_NAME_BYTES, name_problem

SHORT: Final = 6  # hex digits of a default name
MAX_BYTES: Final = MAX_NAME_BYTES
_DEFAULT_RE: Final = re.compile(rf"^({'|'.join(NS_TYPES)})-[0-9a-f]{{{SHORT},64}}$")

# where a name came from
RENAME, ENGINE, NETNS, DEFAULT = "rename", "engine", "netns", "default"


def validate(name: str, nstype: str) -> None:
    """Raise NamingError unless `name` can name a namespace of type `nstype`: names are path
    components, and must not pass for another type's default name."""
    if nstype not in NS_TYPES:
        raise NamingError(f"'{nstype}' is not a namespace type ({', '.join(NS_TYPES)})")
    problem = name_problem(name)
    if problem is not None:
        too_long = isinstance(name, str) and len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES
        raise NamingError(problem, errno.ENAMETOOLONG if too_long else None)
    m = _DEFAULT_RE.match(name)
    if m and m.group(1) != nstype:
        raise NamingError(f"'{name}' looks like the default name of a {m.group(1)} namespace; "
                        f"it cannot name a {nstype} namespace")


def ns_key(ns: Namespace) -> str:
    """What a rename is stored under (Namespace.stored_key)."""
    return ns.stored_key


def scope_key(ns: Namespace, snapshot: Snapshot) -> str:
    """The key of the owning user namespace: names are unique within it ('' for the initial one)."""
    if ns.owner is None:
        return ""
    owner = snapshot.get(ns.owner)
    return ns_key(owner) if owner is not None else f"ino:user:0:{ns.owner}"


def digest(nstype: str, ident: int | None, inode: int, seed: str) -> str:
    """The full hex digest behind a default name: HMAC-SHA256(seed, what)."""
    return hmac_sha256_hex(seed.encode(), [_message(nstype, ident, inode)])[0]


def _message(nstype: str, ident: int | None, inode: int) -> bytes:
    """What the digest is of: the type and the 64-bit id, or the inode on kernels without ids."""
    return f"{nstype}:id:{ident}".encode() if ident is not None else f"{nstype}:ino:{inode}".encode()


#: seed -> {message: digest}: a namespace's default name depends on these alone, so a process
#: that names many snapshots (the daemon) works each out once. Emptied when it grows past
#: DIGESTS_KEPT (namespaces long gone).
_DIGESTS: dict[str, dict[bytes, str]] = {}
DIGESTS_KEPT = 200_000


def _digests(members: list[Namespace], seed: str) -> dict[int, str]:
    """inode -> the full digest of each (from _DIGESTS where it is there; the others in one call of
    the compiled HMAC: thousands of namespaces are named at every command)."""
    known = _DIGESTS.setdefault(seed, {})
    if len(known) > DIGESTS_KEPT:
        known.clear()
    messages = [_message(ns.type, ns.id, ns.inode) for ns in members]
    missing = [m for m in messages if m not in known]
    if missing:
        known.update(zip(missing, hmac_sha256_hex(seed.encode(), missing), strict=True))
    return {ns.inode: known[m] for ns, m in zip(members, messages, strict=True)}


def default_name(ns: Namespace, seed: str, length: int = SHORT) -> str:
    return f"{ns.type}-{digest(ns.type, ns.id, ns.inode, seed)[:length]}"


def world_name(ns: Namespace, engine: Mapping[int, str]) -> tuple[str, str] | None:
    """(TYPE-NAME, origin) from the container engine, else from ip netns; None if neither applies."""
    for origin, candidates in ((ENGINE, [engine[ns.inode]] if ns.inode in engine else []), (NETNS, netns_names(ns))):
        for raw in candidates:
            name = f"{ns.type}-{raw}"
            try:
                validate(name, ns.type)
            except NamingError:
                continue
            return name, origin
    return None


def assign(snapshot: Snapshot, stored: Iterable[StoredName], engine: Mapping[int, str] | None = None,
           seed: str | None = None) -> dict[int, tuple[str, str]]:
    """inode -> (name, origin) for every namespace in the snapshot. `stored` are the renames for
    this boot; a stored rename applies only to the live namespace it was made for (same key, type,
    device, inode and scope)."""
    seed = seed if seed is not None else snapshot.boot_id
    engine = engine or {}
    by_key = {r.key: r for r in stored}
    result: dict[int, tuple[str, str]] = {}
    for scope, members in _scopes(snapshot).items():
        if by_key:  # (the order decides between two renames to one name; nothing else depends on it)
            members.sort(key=by_type)
        taken: set[str] = set()
        rest: list[Namespace] = []
        for ns in members:
            r = by_key.get(ns.stored_key) if by_key else None
            if r is not None and matches(r, ns, scope) and r.name not in taken:
                result[ns.inode] = (r.name, RENAME)
                taken.add(r.name)
            else:
                rest.append(ns)
        worldly: dict[str, list[tuple[Namespace, str]]] = {}
        for ns in rest:
            found = world_name(ns, engine) if ns.inode in engine or ns.type == NsType.NET else None
            if found is not None:
                worldly.setdefault(found[0], []).append((ns, found[1]))
        for name, claimants in worldly.items():
            if len(claimants) == 1 and name not in taken:  # two claim it: neither gets it (no guessing)
                ns, origin = claimants[0]
                result[ns.inode] = (name, origin)
                taken.add(name)
        _defaults([ns for ns in rest if ns.inode not in result], taken, seed, result)
    return result


def _scopes(snapshot: Snapshot) -> dict[str, list[Namespace]]:
    """The namespaces of each scope (scope_key), the owner's key worked out once per owner."""
    keys: dict[int | None, str] = {}
    scopes: dict[str, list[Namespace]] = {}
    for ns in snapshot:
        key = keys.get(ns.owner)
        if key is None:
            key = keys[ns.owner] = scope_key(ns, snapshot)
        scopes.setdefault(key, []).append(ns)
    return scopes


def matches(row: StoredName, ns: Namespace, scope: str) -> bool:
    """The liveness check: the stored rename was made for this very namespace."""
    return row.type == ns.type and row.inode == ns.inode and row.dev == ns.dev and row.scope == scope and (
        row.ns_id == ns.id)


def _age(ns: Namespace) -> tuple[int, int]:
    """Older first: the kernel hands out 64-bit ids in increasing order (the inode, where there is
    no id, is only a stable tie-break)."""
    return (ns.id if ns.id is not None else ns.inode, ns.inode)


def _defaults(members: list[Namespace], taken: set[str], seed: str, result: dict[int, tuple[str, str]]) -> None:
    """TYPE-HASH for each, 6 hex digits, lengthened (by 2) where two would collide. Of siblings that
    collide the oldest keeps the shorter name and only the newer ones are lengthened, so a name that
    is already shown does not change when a colliding namespace appears. A name taken by a rename
    or a world name lengthens every default that would collide with it."""
    full = _digests(members, seed)
    short = [f"{ns.type}-{full[ns.inode][:SHORT]}" for ns in members]
    if len(set(short)) == len(short) and taken.isdisjoint(short):  # no two collide (all but always)
        result.update((ns.inode, (name, DEFAULT)) for ns, name in zip(members, short, strict=True))
        taken.update(short)
        return
    pending = members
    length = SHORT
    while pending:
        names: dict[str, list[Namespace]] = {}
        for ns in pending:
            name = f"{ns.type}-{full[ns.inode][:length]}"
            if name in names:
                names[name].append(ns)
            else:
                names[name] = [ns]
        pending = []
        for name, group in names.items():
            if length >= 64:  # (64 digits: a SHA-256 collision; not reached)
                result.update((ns.inode, (name, DEFAULT)) for ns in group)
                continue
            if name in taken:
                pending.extend(group)
                continue
            oldest, *newer = sorted(group, key=_age) if len(group) > 1 else group
            result[oldest.inode] = (name, DEFAULT)
            taken.add(name)
            pending.extend(newer)
        length += 2


def path_of(ns: Namespace, name: str, owner_path: str | None) -> str:
    """The name path of a namespace called `name` whose owning user namespace has the path
    owner_path (None: its owner is not in the snapshot, 'user:[INODE]' stands for it). The top
    user namespace is '/'; the namespaces it owns are '/NAME': '/user-3f9a1c/net-web'. The one
    rule for paths (the daemon names what it adds between scans with it too)."""
    if ns.owner is None:
        return "/" if ns.type == NsType.USER else f"/{name}"
    if owner_path is None:
        return f"/user:[{ns.owner}]/{name}"
    return f"{owner_path.rstrip('/')}/{name}"


def paths(snapshot: Snapshot, names: Mapping[int, tuple[str, str]]) -> dict[int, str]:
    """inode -> the path through the owning user namespaces (path_of) of every namespace: each
    owner's path worked out once (owners are user namespaces), then every other namespace's from
    it."""
    out: dict[int, str] = {}
    table = snapshot.namespaces
    prefix: dict[int | None, str | None] = {}
    for inode, ns in table.items():
        if inode in out:
            continue
        owner = ns.owner
        if owner is None or ns.type == NsType.USER:
            _path(inode, 0, table, names, out)
            continue
        if owner not in prefix:
            prefix[owner] = _path(owner, 1, table, names, out).rstrip("/") + "/" if owner in table else None
        start = prefix[owner]
        out[inode] = start + names[inode][0] if start is not None else path_of(ns, names[inode][0], None)
    return out


def _path(inode: int, depth: int, table: Mapping[int, Namespace], names: Mapping[int, tuple[str, str]],
          out: dict[int, str]) -> str:
    """One namespace's path (path_of), its owners' first, into `out`. (Not a closure: a nested
    function that calls itself is a reference cycle, left for the garbage collector each pass.)"""
    if inode not in out:
        ns = table[inode]
        up = ns.owner if ns.owner is not None and ns.owner in table and depth <= 64 else None
        out[inode] = path_of(ns, names[inode][0], _path(up, depth + 1, table, names, out) if up is not None else None)
    return out[inode]


def parent_path(ns: Namespace, snapshot: Snapshot) -> str | None:
    """Pid and user namespaces: the path along the parent chain ('/pid-1a2b3c/pid-4d5e6f'), from the
    names already in the snapshot; None for other types."""
    if ns.type not in HIERARCHICAL:
        return None
    chain: list[str] = []
    cur: Namespace | None = ns
    while cur is not None and cur.parent is not None and len(chain) < 64:
        chain.append(cur.name or f"{cur.type}:[{cur.inode}]")
        cur = snapshot.get(cur.parent)
    if cur is not None and cur.parent is not None:
        chain.append(f"{cur.type}:[{cur.parent}]")
    return "/" + "/".join(reversed(chain))

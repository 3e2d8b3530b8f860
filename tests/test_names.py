"""Names for namespaces (issue 3), against real namespaces made by processes these tests own.
Every database lives under tmp_path; every process is killed by its own process group."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import kill_group, nsfs
from namespacefs import core, names
from namespacefs.discover import discover
from namespacefs.model import Namespace, Snapshot
from namespacefs.names import defaults, migrate

Spawn = Callable[..., subprocess.Popen[str]]
def scan_env() -> dict[str, str]:
    """The environment for nsfs here (read when called: it has the session's private NSFS_DB),
    scanning by itself, not asking a daemon another test may run."""
    return {**os.environ, "NSFS_NO_DAEMON": "1"}


def snap() -> Snapshot:
    return discover()


def run_nsfs(*args: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    """The real nsfs. Scans only processes and bind mounts (what these namespaces are found by;
    the full scan is discovery's business, and slow on a host busy with other tests): renames of
    namespaces that a partial scan does not see must survive it, which the kernel is asked about
    by id."""
    if "--sources" not in args and args[0] in ("ls", "show", "rename", "names"):
        args = (*args, "--sources", "process,bindmount")
    return nsfs(*args, check=check, env=scan_env(), **kw)


def start(spawn: Spawn, *unshare: str, marker: str = "") -> tuple[subprocess.Popen[str], int]:
    """`unshare FLAGS sleep` in a process group of its own; returns (popen, pid of the sleep)."""
    tag = [f"0.{int(marker[:12], 16)}"] if marker else []  # a command line no one else runs
    proc = spawn(["unshare", *unshare, "--", "sleep", "3600", *tag])
    want = {"--net": "net", "--uts": "uts", "--user": "user", "--ipc": "ipc"}
    kinds = [want[f] for f in unshare if f in want]
    deadline = time.time() + 5
    while time.time() < deadline:  # unshare execs sleep in place: wait until it has
        try:
            if os.readlink(f"/proc/{proc.pid}/exe").endswith("sleep") and all(
                    os.readlink(f"/proc/{proc.pid}/ns/{k}") != os.readlink(f"/proc/self/ns/{k}") for k in kinds):
                return proc, proc.pid
        except OSError:
            pass
        time.sleep(0.01)
    raise RuntimeError(f"unshare {unshare} did not start")


def inode_of(pid: int, nstype: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{nstype}").st_ino


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "state" / "names.db")


# --- default names -----------------------------------------------------------------------------


def test_default_names_are_short_typed_hashes_stable_across_runs(spawn: Spawn, db: str) -> None:
    _, pid = start(spawn, "--net", "--uts")
    net, uts = inode_of(pid, "net"), inode_of(pid, "uts")
    first = names.apply(snap(), db)
    for inode, nstype in ((net, "net"), (uts, "uts")):
        assert re.fullmatch(rf"{nstype}-[0-9a-f]{{6,}}", first.namespaces[inode].name or "")
    # another process, another scan: the same names
    out = run_nsfs("ls", "--db", db, "-n", "-r", "-o", "NS,NAME", f"{pid}:net", f"{pid}:uts")
    shown = dict(line.split() for line in out.stdout.splitlines())
    assert shown == {str(net): first.namespaces[net].name, str(uts): first.namespaces[uts].name}
    assert not os.path.exists(db), "listing names must not create the database"


def test_default_names_differ_across_boot_seeds(spawn: Spawn) -> None:
    _, pid = start(spawn, "--net")
    s = snap()
    ns = s.namespaces[inode_of(pid, "net")]
    a = defaults.assign(s, [], seed="boot-a")[ns.inode][0]
    b = defaults.assign(s, [], seed="boot-b")[ns.inode][0]
    assert a != b and a.startswith("net-") and b.startswith("net-")
    assert defaults.assign(s, [], seed="boot-a")[ns.inode][0] == a
    assert str(ns.id) not in a and str(ns.inode) not in a  # a keyed digest, not the id


def test_default_names_stay_the_ones_documented_and_stored_before() -> None:
    """Default names are a persisted interface: pinned here as the hmac module made them (for
    these fixed keys) before the digest was computed from pre-keyed hashes."""
    user = Namespace("user", 4026531837, 1, 4, None, None, (), ())
    net = Namespace("net", 4026531840, 4097, 4, 4026531837, None, (), ())
    no_id = Namespace("uts", 4026532001, None, 4, 4026531837, None, (), ())
    s = Snapshot("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", "k", 0.0, 0.0, {n.inode: n for n in (user, net, no_id)}, {})
    assert defaults.assign(s, []) == {4026531837: ("user-a62c34", "default"), 4026531840: ("net-85529e", "default"),
                                      4026532001: ("uts-e36dad", "default")}
    assert defaults.digest("pid", 12345, 4026532222, "boot-a") == (
        "e2b7ad0f59397bd7381955897fff50604e8e81b148ea5c2dd4b359f161b7f024")
    for seed in ("", "boot-a", "k" * 64, "k" * 65, "é" * 100):  # the key's padding and hashing (RFC 2104)
        for what in (("net", 7, 9, b"net:id:7"), ("mnt", None, 9, b"mnt:ino:9")):
            assert defaults.digest(*what[:3], seed) == hmac.new(seed.encode(), what[3], hashlib.sha256).hexdigest()


def _synthetic(count: int) -> Snapshot:
    user = Namespace("user", 1, 1, 1, None, None, (), ())
    nets = [Namespace("net", 100 + i, 1000 + i, 1, 1, None, (), ()) for i in range(count)]
    return Snapshot("b", "k", 0.0, 0.0, {ns.inode: ns for ns in [user, *nets]}, {})


def test_default_names_lengthen_only_where_siblings_collide() -> None:
    s = _synthetic(3000)  # (model data: a 24-bit collision cannot be ordered from the kernel)
    for n in range(1000):
        seed = f"seed-{n}"
        short = {ns.inode: defaults.default_name(ns, seed) for ns in s.of_type("net")}
        if len(set(short.values())) < len(short):
            break
    else:
        pytest.fail("no 6-digit collision among 3000 names in 1000 seeds")
    got = defaults.assign(s, [], seed=seed)
    assigned = [got[ns.inode][0] for ns in s.of_type("net")]
    assert len(set(assigned)) == len(assigned)
    oldest: dict[str, int] = {}  # short name -> id of the oldest namespace that has it
    for ns in s.of_type("net"):
        oldest[short[ns.inode]] = min(oldest.get(short[ns.inode], ns.id), ns.id)  # type: ignore[type-var]
    lengthened = 0
    for ns in s.of_type("net"):
        if oldest[short[ns.inode]] == ns.id:  # alone, or the oldest of those that collide: short
            assert got[ns.inode][0] == short[ns.inode]
        else:
            assert got[ns.inode][0] == f"net-{defaults.digest('net', ns.id, ns.inode, seed)[:8]}"
            lengthened += 1
    assert lengthened >= 1


def test_a_colliding_newcomer_does_not_change_the_name_an_older_sibling_shows() -> None:
    s = _synthetic(3000)  # (model data, as above: which namespaces collide is up to the digest)
    seed, older, newer = _a_collision(s)
    alone = Snapshot("b", "k", 0.0, 0.0, {i: ns for i, ns in s.namespaces.items() if i != newer.inode}, {})
    before = defaults.assign(alone, [], seed=seed)[older.inode][0]
    after = defaults.assign(s, [], seed=seed)
    assert after[older.inode][0] == before and len(before) == len("net-") + 6
    assert len(after[newer.inode][0]) == len("net-") + 8


def _a_collision(s: Snapshot) -> tuple[str, Namespace, Namespace]:
    """A seed under which two net namespaces of s share a 6-digit default name: (seed, older, newer)."""
    for n in range(1000):
        seen: dict[str, Namespace] = {}
        for ns in sorted(s.of_type("net"), key=lambda ns: ns.id or 0):
            name = defaults.default_name(ns, f"seed-{n}")
            if name in seen:
                return f"seed-{n}", seen[name], ns
            seen[name] = ns
    raise AssertionError("no 6-digit collision among 3000 names in 1000 seeds")


# --- world names ---------------------------------------------------------------------------------


def test_ip_netns_name_becomes_the_default_and_a_rename_wins(db: str) -> None:
    name = f"nsfs-t-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        inode = os.stat(f"/run/netns/{name}").st_ino
        s = names.apply(snap(), db)
        assert s.namespaces[inode].name == f"net-{name}"
        assert s.namespaces[inode].path == f"/net-{name}"
        run_nsfs("rename", "--db", db, f"net-{name}", "mine")
        s = names.apply(snap(), db)
        assert s.namespaces[inode].name == "mine"
        assert names.assigned(s, db).names[inode] == ("mine", names.RENAME)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


def test_container_engine_names_are_used_when_the_containers_part_gives_them(spawn: Spawn, db: str) -> None:
    s = snap()
    engine = core.engine_names(s)
    got = defaults.assign(s, [], engine)
    for inode, cname in engine.items():
        name, origin = got[inode]
        if origin == names.ENGINE:
            assert name == f"{s.namespaces[inode].type}-{cname}"
    # and the precedence below a rename, on a namespace we own
    _, pid = start(spawn, "--uts")
    s = snap()
    ns = s.namespaces[inode_of(pid, "uts")]
    assert defaults.assign(s, [], {ns.inode: "box"})[ns.inode] == ("uts-box", names.ENGINE)
    names.rename(s, ns, "explicit", db)
    rows = names.store.rows(names.open_db(db), s.boot_id)
    assert defaults.assign(s, rows, {ns.inode: "box"})[ns.inode] == ("explicit", names.RENAME)


# --- renames -------------------------------------------------------------------------------------


def test_rename_survives_restarts_and_is_shown_by_ls_show_and_json(spawn: Spawn, db: str) -> None:
    _, pid = start(spawn, "--net")
    net = inode_of(pid, "net")
    run_nsfs("rename", "--db", db, f"{pid}:net", "web")
    # new processes: ls, JSON, show by name and by path
    out = run_nsfs("ls", "--db", db, "-r", "-n", "-o", "NS,NAME,NSPATH", f"{pid}:net").stdout.split()
    assert out == [str(net), "web", "/web"]
    data = json.loads(run_nsfs("ls", "--db", db, "-J", f"{pid}:net").stdout)
    (entry,) = data["namespaces"]
    assert (entry["name"], entry["path"]) == ("web", "/web")
    assert str(net) in run_nsfs("show", "--db", db, "/web").stdout
    env = {**scan_env(), "NSFS_DB": db}  # the environment variable instead of --db
    out = subprocess.run([sys.executable, "-m", "namespacefs", "ls", "-r", "-n", "-o", "NAME", f"{pid}:net"],
                         capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["web"]
    assert "web" in run_nsfs("ls", "--db", db).stdout.split()  # NAME is a default column


def test_concurrent_renames_from_several_processes(spawn: Spawn, db: str) -> None:
    pids = [start(spawn, "--uts")[1] for _ in range(6)]
    script = ("import sys; from namespacefs import names; from namespacefs.discover import discover; "
              "s = discover(('process',)); ns = s.namespace_of(int(sys.argv[1]), 'uts'); "
              "names.rename(s, ns, sys.argv[2], sys.argv[3])")

    def race(argsets: list[tuple[int, str]]) -> list[subprocess.CompletedProcess[str]]:
        procs = [subprocess.Popen([sys.executable, "-c", script, str(p), n, db], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=scan_env()) for p, n in argsets]
        return [subprocess.CompletedProcess(p.args, p.wait(60), *p.communicate()) for p in procs]

    # six processes, six namespaces, six names: all land
    results = race([(p, f"host-{i}") for i, p in enumerate(pids)])
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    s = names.apply(snap(), db)
    assert [s.namespace_of(p, "uts").name for p in pids] == [f"host-{i}" for i in range(6)]  # type: ignore[union-attr]
    # six processes want one name for six namespaces of one scope: exactly one gets it
    results = race([(p, "wanted") for p in pids])
    assert sum(r.returncode == 0 for r in results) == 1, [r.stderr for r in results]
    for r in results:
        if r.returncode:
            assert "already the name of" in r.stderr or "was just given" in r.stderr, r.stderr
            assert "NameError" in r.stderr
    s = names.apply(snap(), db)
    assert sum(s.namespace_of(p, "uts").name == "wanted" for p in pids) == 1  # type: ignore[union-attr]


def test_names_are_unique_per_owning_user_namespace(spawn: Spawn, db: str) -> None:
    _, a = start(spawn, "--user", "--map-root-user", "--net")
    _, b = start(spawn, "--user", "--map-root-user", "--net")
    default = names.apply(snap(), db).namespace_of(a, "net")
    assert default is not None and re.fullmatch(r"/user-[0-9a-f]{6,}/net-[0-9a-f]{6,}", default.path or "")
    assert f"{default.inode}" in run_nsfs("show", "--db", db, default.path or "").stdout  # a default path works
    run_nsfs("rename", "--db", db, f"{a}:user", "tenant-a")
    run_nsfs("rename", "--db", db, f"{b}:user", "tenant-b")
    run_nsfs("rename", "--db", db, f"{a}:net", "web")
    run_nsfs("rename", "--db", db, f"{b}:net", "web")  # the same name in a sibling user namespace: fine
    s = names.apply(snap(), db)
    assert s.namespace_of(a, "net").path == "/tenant-a/web"  # type: ignore[union-attr]
    assert s.namespace_of(b, "net").path == "/tenant-b/web"  # type: ignore[union-attr]
    # a bare name that two scopes use is ambiguous; the paths are not
    assert "ambiguous" in run_nsfs("show", "--db", db, "web", check=False).stderr
    assert str(inode_of(b, "net")) in run_nsfs("show", "--db", db, "/tenant-b/web").stdout
    # within one scope the name is taken (by a namespace of any type)
    _, c = start(spawn, "--user", "--map-root-user", "--net", "--uts")
    run_nsfs("rename", "--db", db, f"{c}:net", "web")
    r = run_nsfs("rename", "--db", db, f"{c}:uts", "web", check=False)
    assert r.returncode == 1 and "already the name of the net namespace" in r.stderr


def _name_then_reuse(spawn: Spawn, db: str) -> int | None:
    """Name a new uts namespace 'doomed', end it, and make new ones until one gets its inode (the
    kernel hands out the lowest free inode: fill the holes below it, keeping those alive). Returns
    the inode, or None if a namespace made by someone else on this host took it first."""
    proc, pid = start(spawn, "--uts")
    old = inode_of(pid, "uts")
    s = snap()
    names.rename(s, s.namespaces[old], "doomed", db)
    kill_group(proc)
    for _ in range(300):
        _, pid = start(spawn, "--uts")
        if inode_of(pid, "uts") == old:
            return old
        if inode_of(pid, "uts") > old:
            return None  # ours are past it: another process's namespace has it now
    return None


def test_nested_user_and_pid_namespaces_have_a_path_along_their_parent_chain(spawn: Spawn, db: str) -> None:
    proc = spawn(["unshare", "--user", "--map-root-user", "--pid", "--fork", "--",
                  "unshare", "--user", "--map-root-user", "--pid", "--fork", "--", "sleep", "3600"])
    deadline, inner = time.time() + 5, None
    while inner is None and time.time() < deadline:
        for pid in _descendants(proc.pid):
            if os.readlink(f"/proc/{pid}/exe").endswith("sleep"):
                inner = pid
        time.sleep(0.01)
    assert inner is not None, "the nested namespaces did not start"
    run_nsfs("rename", "--db", db, f"{inner}:user", "inner-user")
    run_nsfs("rename", "--db", db, f"{inner}:pid", "inner-pid")
    s = names.apply(snap(), db)
    user, pidns = s.namespace_of(inner, "user"), s.namespace_of(inner, "pid")
    assert user is not None and pidns is not None
    middle_user, middle_pid = s.namespaces[user.parent], s.namespaces[pidns.parent]  # type: ignore[index]
    assert names.parent_path(user, s) == f"/{middle_user.name}/inner-user"
    assert names.parent_path(pidns, s) == f"/{middle_pid.name}/inner-pid"
    out = run_nsfs("names", "--db", db, "-r", "-n", "-o", "NAME,PARENTPATH", "-t", "pid").stdout.splitlines()
    assert f"inner-pid /{middle_pid.name}/inner-pid" in out
    data = json.loads(run_nsfs("names", "--db", db, "-J", "-t", "user").stdout)
    assert {"name": "inner-user", "parent_path": f"/{middle_user.name}/inner-user"}.items() <= \
        next(e for e in data["names"] if e["name"] == "inner-user").items()
    assert names.parent_path(s.namespace_of(inner, "net"), s) is None  # type: ignore[arg-type]


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                kids = [int(c) for c in f.read().split()]
        except OSError:
            continue
        out += kids
        todo += kids
    return out


def test_a_stored_name_keyed_by_inode_needs_the_same_type_and_owner() -> None:
    # (model data: a 6.18 kernel gives every namespace an id; older ones key names by inode, and a
    # reused inode must not inherit the name unless type, device and owning scope still match)
    user = Namespace("user", 1, None, 7, None, None, (), ())
    uts = Namespace("uts", 50, None, 7, 1, None, (), ())
    s = Snapshot("b", "k", 0.0, 0.0, {1: user, 50: uts}, {})
    row = names.store.StoredName("b", defaults.ns_key(uts), "uts", None, 50, 7, defaults.scope_key(uts, s), "kept", 0, 0)
    assert defaults.assign(s, [row])[50] == ("kept", names.RENAME)
    for stale in (row.__class__(**{**_fields(row), "type": "ipc"}), row.__class__(**{**_fields(row), "scope": "x"}),
                  row.__class__(**{**_fields(row), "dev": 8})):
        assert defaults.assign(s, [stale])[50][1] == names.DEFAULT


def _fields(row: Any) -> dict[str, Any]:
    return {f: getattr(row, f) for f in row.__slots__}


def test_a_reused_inode_does_not_inherit_a_dead_namespaces_name(spawn: Spawn, db: str) -> None:
    for attempt in range(5):  # (other tests running on the host compete for the freed inode)
        db_now = f"{db}.{attempt}"
        old = _name_then_reuse(spawn, db_now)
        if old is not None:
            break
    else:
        pytest.fail("a freed inode was taken by another process's namespace 5 times running (busy host?)")
    db = db_now
    s = names.apply(snap(), db)
    new = s.namespaces[old]
    assert new.name != "doomed" and new.name.startswith("uts-")  # type: ignore[union-attr]
    hist = names.history(db)
    assert [(h["name"], h["inode"], h["reason"]) for h in hist] == [("doomed", old, "gone")]
    names.rename(s, new, "doomed", db)  # the dead one's name never blocks a new namespace
    assert names.apply(snap(), db).namespaces[old].name == "doomed"


def test_history_lists_and_prunes(spawn: Spawn, db: str) -> None:
    proc, pid = start(spawn, "--net")
    run_nsfs("rename", "--db", db, f"{pid}:net", "short-lived")
    ident = snap().namespace_of(pid, "net").id  # type: ignore[union-attr]
    kill_group(proc)
    deadline = time.time() + 10
    while time.time() < deadline:  # a net namespace is freed asynchronously by the kernel
        names.apply(snap(), db)
        if names.history(db):
            break
        time.sleep(0.2)
    out = run_nsfs("names", "--db", db, "--history", "-r", "-n", "-o", "NAME,TYPE,ID,REASON").stdout.split()
    assert out == ["short-lived", "net", str(ident), "gone"]
    assert json.loads(run_nsfs("names", "--db", db, "--history", "-J").stdout)["history"][0]["name"] == "short-lived"
    assert "pruned 0" in run_nsfs("names", "--db", db, "--prune", "--older-than", "1").stdout
    assert "pruned 1" in run_nsfs("names", "--db", db, "--prune").stdout
    assert names.history(db) == []


# --- export / import -----------------------------------------------------------------------------


def test_export_destroy_recreate_import_restores_names(spawn: Spawn, db: str, tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    proc1, p1 = start(spawn, "--net", "--uts", marker=marker)      # found again by its command line
    proc2, p2 = start(spawn, "--net", marker=marker[::-1])         # found again through a pid map
    run_nsfs("rename", "--db", db, f"{p1}:net", "restored-net")
    run_nsfs("rename", "--db", db, f"{p1}:uts", "restored-uts")
    run_nsfs("rename", "--db", db, f"{p2}:net", "mapped-net")
    export = tmp_path / "names.json"
    run_nsfs("names", "--db", db, "export", str(export))
    data = json.loads(export.read_text())
    assert {e["name"] for e in data["names"]} == {"restored-net", "restored-uts", "mapped-net"}
    # destroy, and recreate on a "new host" (a fresh database)
    kill_group(proc1)
    kill_group(proc2)
    new_db = str(tmp_path / "other" / "names.db")
    _, q1 = start(spawn, "--net", "--uts", marker=marker)
    _, q2 = start(spawn, "--net", "--uts", marker=marker[1:] + "0")  # another command line: only the pid map finds it
    r = run_nsfs("names", "--db", new_db, "import", str(export), "--pid-map", f"{p2}:{q2}")
    assert r.returncode == 0, r.stderr
    s = names.apply(snap(), new_db)
    assert s.namespace_of(q1, "net").name == "restored-net"  # type: ignore[union-attr]
    assert s.namespace_of(q1, "uts").name == "restored-uts"  # type: ignore[union-attr]
    assert s.namespace_of(q2, "net").name == "mapped-net"  # type: ignore[union-attr]
    assert "matched by pid" in r.stdout and "matched by command line" in r.stdout
    # without the pid map, what cannot be matched is reported (and the rest applied)
    third_db = str(tmp_path / "third" / "names.db")
    r = run_nsfs("names", "--db", third_db, "import", str(export), check=False)
    assert r.returncode == 1
    assert "'mapped-net' (net): not applied" in r.stderr
    assert names.apply(snap(), third_db).namespace_of(q1, "net").name == "restored-net"  # type: ignore[union-attr]


def test_import_on_the_same_boot_matches_by_id_and_dry_run_changes_nothing(spawn: Spawn, db: str) -> None:
    _, pid = start(spawn, "--ipc")
    s = snap()
    ns = s.namespace_of(pid, "ipc")
    assert ns is not None
    names.rename(s, ns, "kept", db)
    data = migrate.export(s, db)
    other = db + ".2"
    result = migrate.import_names(data, s, other, dry_run=True)
    assert [(e["name"], n.inode) for e, n, _ in result.applied] == [("kept", ns.inode)]
    assert names.apply(s, other).namespaces[ns.inode].name != "kept"
    result = migrate.import_names(data, s, other)
    assert names.apply(s, other).namespaces[ns.inode].name == "kept"


# --- the database ----------------------------------------------------------------------------------


def test_open_db_creates_dirs_uses_wal_and_hosts_other_tables(db: str) -> None:
    conn = names.open_db(db)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.execute("CREATE TABLE IF NOT EXISTS containers_names (key TEXT PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO containers_names VALUES ('k', 'v')")
    finally:
        conn.close()
    conn = names.open_db(db)
    assert conn.execute("SELECT name FROM containers_names").fetchall() == [("v",)]
    conn.close()


@pytest.fixture
def locker(db: str) -> Iterator[subprocess.Popen[str]]:
    names.open_db(db).close()
    code = ("import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
            "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, db], stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    yield proc
    kill_group(proc)


def test_a_locked_database_waits_then_says_who_holds_it(spawn: Spawn, db: str, locker: subprocess.Popen[str]) -> None:
    _, pid = start(spawn, "--uts")
    s = snap()
    started = time.monotonic()
    with pytest.raises(names.NamingError, match=rf"locked; held by pid {locker.pid} \(python"):
        names.rename(s, s.namespace_of(pid, "uts"), "blocked", db)  # type: ignore[arg-type]
    waited = time.monotonic() - started
    assert 2.5 < waited < 10
    # readers are not blocked by a writer (WAL): listing still works and names still come out
    r = run_nsfs("ls", "--db", db, "-n", "-r", "-o", "NAME", f"{pid}:uts")
    assert r.stdout.startswith("uts-")


def test_a_corrupt_database_is_never_replaced_and_says_how_to_recover(spawn: Spawn, db: str) -> None:
    _, pid = start(spawn, "--uts")
    os.makedirs(os.path.dirname(db))
    garbage = b"this is not an sqlite database at all\n" * 200
    Path(db).write_bytes(garbage)
    r = run_nsfs("rename", "--db", db, f"{pid}:uts", "x", check=False)
    assert r.returncode == 1
    assert "is damaged" in r.stderr and ".recover" in r.stderr and "left untouched" in r.stderr
    with pytest.raises(names.NamingError, match="damaged"):
        names.open_db(db)
    # listing still works, on default names, and says why
    r = run_nsfs("ls", "--db", db, "-n", "-r", "-o", "NAME", f"{pid}:uts")
    assert r.stdout.startswith("uts-") and "is damaged" in r.stderr
    assert Path(db).read_bytes() == garbage  # nothing was lost or replaced


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "message"), [
    ("", "cannot be empty"),
    (".", "cannot be a name"),
    ("..", "cannot be a name"),
    ("a/b", "cannot contain '/'"),
    ("a\x00b", "NUL"),
    ("a\tb", "control characters"),
    ("bell\x07", "control characters"),
    ("x" * 256, "at most 255 bytes"),
    ("é" * 128, "at most 255 bytes"),
    ("user-3f9a1c", "default name of a user namespace"),
    ("mnt-0123456789", "default name of a mnt namespace"),
    ("12345", "cannot be a number"),
    (" padded", "white space"),
])
def test_bad_names_are_rejected_with_a_clear_message(name: str, message: str) -> None:
    with pytest.raises(names.NamingError, match=re.escape(message)):
        names.validate(name, "net")


def test_good_names_pass_validation() -> None:
    for name in ("web", "net-3f9a1c", "net-web", "ünïcode", "x" * 255, "a.b_c-d"):
        names.validate(name, "net")


def test_bad_input_on_the_command_line_gets_a_message_not_a_traceback(spawn: Spawn, db: str, tmp_path: Path) -> None:
    _, pid = start(spawn, "--uts")
    for args, message in [
        (("rename", f"{pid}:uts", "a/b"), "cannot contain '/'"),
        (("rename", f"{pid}:uts", ".."), "cannot be a name"),
        (("rename", f"{pid}:uts", "net-abcdef"), "default name of a net namespace"),
        (("rename", f"{pid}:uts"), "give a new name"),
        (("rename", "no-such-namespace-here", "x"), "no namespace is called"),
        (("names", "import"), "needs the export file"),
        (("names", "import", str(tmp_path / "missing.json")), "cannot read"),
        (("names", "--older-than", "3"), "goes with --prune"),
        (("names", "import", "-", "--pid-map", "12:x"), "bad pid map entry"),
    ]:
        r = run_nsfs(*args, "--db", db, check=False, input="{}")
        assert r.returncode == 1 and message in r.stderr, (args, r.stderr)
    r = run_nsfs("names", "--prune", "--older-than", "nan", "--db", db, check=False)
    assert r.returncode == 2 and "must be a finite number >= 0" in r.stderr, r.stderr
    bad = tmp_path / "bad.json"
    for text, message in [("not json", "is not JSON"), ('{"format": "other"}', "not a namespacefs names export"),
                          ('{"format": "namespacefs-names", "version": 99, "names": []}', "unsupported export version"),
                          ('{"format": "namespacefs-names", "version": 1, "names": [{"name": 1}]}', "entry 0"),
                          (_export_entry(processes=5), '"processes" must be a list'),
                          (_export_entry(processes=[{"pid": [1]}]), '"pid" must be a number'),
                          (_export_entry(processes=[{"pid": 1, "cmdline": [[1]]}]), '"cmdline" must be a list'),
                          (_export_entry(netns=5), '"netns" must be a list'),
                          (_export_entry(container=["a"]), '"container" must be a string'),
                          (_export_entry(id=True), '"id" must be a number')]:
        bad.write_text(text)
        r = run_nsfs("names", "--db", db, "import", str(bad), check=False)
        assert r.returncode == 1 and message in r.stderr, (text, r.stderr)
    with pytest.raises(names.NamingError, match="pid map"):
        migrate.parse_pid_map("1:2,three")
    # an empty --db is refused, never read as "the default database"
    r = run_nsfs("rename", "--db", "", f"{pid}:uts", "x", check=False)
    assert r.returncode == 1 and "database path is empty" in r.stderr


def _export_entry(**fields: Any) -> str:
    """An export file with one entry whose optional fields are `fields` (hand-edited, maybe wrong)."""
    return json.dumps({"format": "namespacefs-names", "version": 1, "names": [{"name": "x", "type": "net", **fields}]})


def test_a_user_reads_the_names_in_roots_database(tmp_path: Path) -> None:
    shared = tempfile.mkdtemp(prefix="nsfs-names-test-")  # (tmp_path is not traversable by other users)
    try:
        os.chmod(shared, 0o755)
        db = os.path.join(shared, "names.db")
        mine = inode_of(os.getpid(), "uts")  # a namespace an unprivileged user can see too
        run_nsfs("rename", "--db", db, str(mine), "readable")
        assert not os.path.exists(db + "-wal")  # every writer closed: the reader must cope without -shm
        r = nsfs("ls", "--db", db, "-n", "-r", "-o", "NS,NAME", "-t", "uts", user="65534", env=scan_env())
        assert f"{mine} readable" in r.stdout.splitlines()
        assert "names database" not in r.stderr
    finally:
        shutil.rmtree(shared)


def test_path_of_is_the_one_rule_for_name_paths() -> None:
    # (model data) the daemon names what it adds between scans with names.path_of: the same paths
    # as a full naming pass gives
    top = Namespace("user", 1, 10, 4, None, None, (), ())
    inner = Namespace("user", 2, 11, 4, 1, 1, (), ())
    net = Namespace("net", 3, 12, 4, 2, None, (), ())
    orphan = Namespace("uts", 5, 13, 4, 99, None, (), ())  # its owner is not in the snapshot
    s = Snapshot("b", "k", 0.0, 0.0, {n.inode: n for n in (top, inner, net, orphan)}, {})
    given = {1: ("user-top", names.DEFAULT), 2: ("tenant", names.RENAME), 3: ("web", names.RENAME),
             5: ("uts-x", names.DEFAULT)}
    assert defaults.paths(s, given) == {1: "/", 2: "/tenant", 3: "/tenant/web", 5: "/user:[99]/uts-x"}
    assert names.path_of(net, "web", "/tenant") == "/tenant/web"
    assert names.path_of(net, "web", "/") == "/web"
    assert names.path_of(top, "user-top", None) == "/"


def test_a_kept_database_is_read_again_only_after_a_commit_and_never_past_a_new_or_untrusted_file(
        spawn: Spawn, db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon names every update: its lookup connection stays open (store.kept_rows) and the
    rows are read again only when another connection committed (PRAGMA data_version). A rename by
    another process is seen at the next pass; a database made anew at the path is the one read; a
    database that may no longer be trusted is refused although a connection to it is open."""
    _, pid = start(spawn, "--uts")
    run_nsfs("rename", "--db", db, f"{pid}:uts", "first")
    store, selects = names.store, []
    real_rows = store.rows
    monkeypatch.setattr(store, "rows", lambda conn, boot: (selects.append(boot), real_rows(conn, boot))[1])

    def named() -> set[str]:
        return {r.name for r in store.kept_rows(db)[1]}

    try:
        assert named() == {"first"} and store.kept_rows(db)[2], "a database we may write is kept"
        for _ in range(5):
            assert named() == {"first"}
        assert len(selects) == 1, "the rows were read again though nothing was committed"
        run_nsfs("rename", "--db", db, f"{pid}:uts", "second")  # (another process, another connection)
        assert named() == {"second"} and len(selects) == 2
        for suffix in ("", "-wal", "-shm"):  # the database removed, and another made at its path
            with contextlib.suppress(FileNotFoundError):
                os.unlink(db + suffix)
        run_nsfs("rename", "--db", db, f"{pid}:uts", "third")
        assert named() == {"third"}
        os.chmod(db, 0o666)  # writable by anyone: anyone could have planted what it says now
        with pytest.raises(names.NamingError, match="refusing"):
            store.kept_rows(db)
        os.chmod(db, 0o644)
        os.unlink(db)
        assert store.kept_rows(db) == (None, [], False)
    finally:
        store.forget_kept()

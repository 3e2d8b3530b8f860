"""Per-user-namespace accounting, checked against user namespaces this test makes for real: two
with identical maps, two disjoint ones, one mapping host root; processes, threads and uids inside
them; RLIMIT_NPROC and /proc/sys/user values set in them."""

from __future__ import annotations

import errno
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from conftest import nsfs
from namespacefs import accounting, core

# A user namespace holder: unshares CLONE_NEWUSER, says 'ready', waits for its maps to be written
# and for 'UID GID THREADS CHILDREN [SYSCTL=VALUE]', then sets a sysctl in its namespace, becomes
# UID:GID inside, forks CHILDREN and starts THREADS, says 'ok' and waits to be killed.
HOLDER = r"""
import ctypes, os, sys, threading, time
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x10000000) != 0:
    sys.exit("unshare failed")
print("ready", flush=True)
words = sys.stdin.readline().split()
uid, gid, nthreads, nchildren = map(int, words[:4])
for setting in words[4:]:
    name, value = setting.split("=")
    with open("/proc/sys/user/" + name, "w") as f:
        f.write(value)
os.setgroups([])
os.setresgid(gid, gid, gid)
os.setresuid(uid, uid, uid)
for _ in range(nchildren):
    if os.fork() == 0:
        while True:
            time.sleep(60)
for _ in range(nthreads):
    threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
print("ok", flush=True)
sys.stdin.read()
"""

# Host id ranges unlikely to be used by anything else on the machine.
BASE = 3_700_000


@pytest.fixture(name="userns")
def userns_fixture(spawn: Callable[..., subprocess.Popen[str]]) -> Callable[..., dict[str, Any]]:
    def make(uid_map: str, gid_map: str | None = None, uid: int = 0, gid: int = 0, threads: int = 0,
             children: int = 0, sysctl: str = "") -> dict[str, Any]:
        proc = spawn([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert proc.stdout and proc.stdin
        assert proc.stdout.readline().strip() == "ready"
        for name, text in (("uid_map", uid_map), ("gid_map", gid_map or uid_map)):
            with open(f"/proc/{proc.pid}/{name}", "w") as f:
                f.write(text)
        proc.stdin.write(f"{uid} {gid} {threads} {children} {sysctl}\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "ok"
        return {"pid": proc.pid, "proc": proc, "inode": os.stat(f"/proc/{proc.pid}/ns/user").st_ino}

    return make


def _comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


def overlaps_between(acct: accounting.Accounting, a: int, b: int) -> dict[str, list[tuple[int, int]]]:
    return {o.kind: list(o.ranges) for o in acct.overlaps if {o.a, o.b} == {a, b}}


def test_parsers_and_range_arithmetic() -> None:
    limits = (b"Limit                     Soft Limit           Hard Limit           Units     \n"
              b"Max processes             4                    unlimited            processes \n")
    assert accounting.parse_nproc_limit(limits) == (4, None)
    with pytest.raises(ValueError):
        accounting.parse_nproc_limit(b"Max open files 1024 4096 files\n")
    assert accounting.host_ranges(((0, 100, 10), (10, 105, 10), (20, 300, 1))) == [(100, 15), (300, 1)]
    assert accounting.intersect([(100, 15)], [(110, 20), (0, 101)]) == [(100, 1), (110, 5)]
    assert accounting.to_inside(((0, 1000, 10), (10, 5000, 5)), 5003) == 13
    assert accounting.to_inside(((0, 1000, 10),), 999) is None


def test_identical_maps_overlap_disjoint_do_not_and_host_root_is_flagged(
        userns: Callable[..., dict[str, Any]]) -> None:
    same_a = userns(f"0 {BASE} 1000", f"0 {BASE + 50_000} 1000")
    same_b = userns(f"0 {BASE} 1000", f"0 {BASE + 50_000} 1000")
    apart_a = userns(f"0 {BASE + 10_000} 1000")
    apart_b = userns(f"0 {BASE + 20_000} 1000")
    partial = userns(f"0 {BASE + 900} 200")  # shares 100 uids with the identical pair
    root = userns(f"0 0 1\n1 {BASE + 30_000} 999")

    acct = accounting.compute(core.snapshot(), limits=False)

    assert overlaps_between(acct, same_a["inode"], same_b["inode"]) == {
        "uid": [(BASE, 1000)], "gid": [(BASE + 50_000, 1000)]}
    assert overlaps_between(acct, apart_a["inode"], apart_b["inode"]) == {}
    assert overlaps_between(acct, apart_a["inode"], same_a["inode"]) == {}
    assert overlaps_between(acct, partial["inode"], same_a["inode"])["uid"] == [(BASE + 900, 100)]
    assert "gid" not in overlaps_between(acct, partial["inode"], same_a["inode"])
    meaning = next(o.meaning for o in acct.overlaps if {o.a, o.b} == {same_a["inode"], same_b["inode"]} and o.kind == "uid")
    assert "files" in meaning and "RLIMIT_NPROC" in meaning

    flagged = acct.get(root["inode"])
    assert flagged is not None and flagged.host_root == ("uid", "gid")
    assert any(f"user:[{root['inode']}] maps host uid 0" in w for w in acct.warnings)
    for other in (same_a, same_b, apart_a, apart_b, partial):
        got = acct.get(other["inode"])
        assert got is not None and got.host_root == ()
    assert acct.get(acct.users[0].namespace.inode).host_root == ()  # the initial namespace maps root to itself


def test_counts_by_uid_inside_and_on_the_host(userns: Callable[..., dict[str, Any]]) -> None:
    ns = userns(f"0 {BASE + 40_000} 100", uid=7, gid=9, threads=3, children=2)
    acct = accounting.compute(core.snapshot(), limits=False)
    got = acct.get(ns["inode"])
    assert got is not None
    assert got.processes == 3  # the holder and its two children
    assert got.threads == 3 + 3  # each process's main thread plus the holder's three
    (row,) = got.uids
    assert (row.uid, row.host_uid, row.processes, row.threads) == (7, BASE + 40_007, 3, 6)
    assert row.host_threads == 6  # nothing else on the host runs as this uid


def test_rlimit_nproc_in_force_and_at_limit(userns: Callable[..., dict[str, Any]]) -> None:
    ns = userns(f"0 {BASE + 41_000} 10", uid=1, gid=1, threads=4)
    resource.prlimit(ns["pid"], resource.RLIMIT_NPROC, (5, 50))
    acct = accounting.compute(core.snapshot(), limits=False)
    (row,) = acct.get(ns["inode"]).uids  # type: ignore[union-attr]
    assert row.nproc_limit == 5 and row.threads == 5 and row.at_limit
    resource.prlimit(ns["pid"], resource.RLIMIT_NPROC, (6, 50))
    (row,) = accounting.compute(core.snapshot(), limits=False).get(ns["inode"]).uids  # type: ignore[union-attr]
    assert row.nproc_limit == 6 and not row.at_limit


# A user namespace holder that, as uid 1 inside, makes a nested user namespace with NESTED processes
# in it, says 'ok', then tries a fork for each line it reads and answers 'forked' or the errno.
NESTING_HOLDER = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x10000000) != 0:
    sys.exit("unshare failed")
print("ready", flush=True)
nested = int(sys.stdin.readline())
os.setgroups([])
os.setresgid(1, 1, 1)
os.setresuid(1, 1, 1)
r, w = os.pipe()
if os.fork() == 0:
    if libc.unshare(0x10000000) != 0:
        os._exit(1)
    for _ in range(nested - 1):
        if os.fork() == 0:
            while True:
                time.sleep(60)
    os.write(w, b"x")
    while True:
        time.sleep(60)
os.read(r, 1)
print("ok", flush=True)
for _line in sys.stdin:
    try:
        pid = os.fork()
    except OSError as e:
        print(e.errno, flush=True)
        continue
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    print("forked", flush=True)
"""


def test_the_nproc_counter_holds_the_tasks_of_namespaces_created_below(
        spawn: Callable[..., subprocess.Popen[str]]) -> None:
    """Since 5.14 a task is also charged to its namespace creator's counter in the parent namespace:
    a uid with 1 task of its own and 4 in a user namespace it made may not fork under NPROC 5."""
    proc = spawn([sys.executable, "-c", NESTING_HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout and proc.stdin
    assert proc.stdout.readline().strip() == "ready"
    for name in ("uid_map", "gid_map"):
        with open(f"/proc/{proc.pid}/{name}", "w") as f:
            f.write(f"0 {BASE + 43_000} 10")
    proc.stdin.write("4\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "ok"
    outer = os.stat(f"/proc/{proc.pid}/ns/user").st_ino

    def row_and_fork(limit: int) -> tuple[accounting.UidCount, str]:
        resource.prlimit(proc.pid, resource.RLIMIT_NPROC, (limit, 100))
        (row,) = accounting.compute(core.snapshot(), limits=False).get(outer).uids  # type: ignore[union-attr]
        proc.stdin.write("fork\n")  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
        return row, proc.stdout.readline().strip()  # type: ignore[union-attr]

    row, forked = row_and_fork(5)
    assert (row.uid, row.host_uid, row.threads, row.charged) == (1, BASE + 43_001, 1, 5)
    assert row.at_limit and forked == str(errno.EAGAIN)  # the kernel agrees: the counter is full
    row, forked = row_and_fork(6)
    assert not row.at_limit and forked == "forked"
    nested = [u for u in accounting.compute(core.snapshot(), limits=False).users if u.namespace.parent == outer]
    assert [(u.processes, [c.charged for c in u.uids]) for u in nested] == [(4, [4])]


def test_user_sysctls_are_read_inside_each_namespace(userns: Callable[..., dict[str, Any]]) -> None:
    ns = userns(f"0 {BASE + 42_000} 10", sysctl="max_mnt_namespaces=4321")
    acct = accounting.compute(core.snapshot(), limits=True)
    got = acct.get(ns["inode"])
    assert got is not None and got.limits_error is None
    assert got.limits is not None and got.limits["max_mnt_namespaces"] == 4321
    initial = acct.users[0]
    with open("/proc/sys/user/max_mnt_namespaces") as f:
        assert initial.limits is not None and initial.limits["max_mnt_namespaces"] == int(f.read())


def test_nested_namespaces_are_not_reported_as_overlapping(spawn: Callable[..., subprocess.Popen[str]]) -> None:
    proc = spawn(["unshare", "--user", "--map-root-user", "unshare", "--user", "--map-root-user", "sleep", "600"])
    deadline = time.monotonic() + 10
    while _comm(proc.pid) != "sleep":  # unshare execs unshare execs sleep
        assert time.monotonic() < deadline
        time.sleep(0.01)
    inner = proc.pid
    inner_ns = os.stat(f"/proc/{inner}/ns/user").st_ino
    snap = core.snapshot()
    child = snap.get(inner_ns)
    assert child is not None and child.parent is not None
    acct = accounting.compute(snap, limits=False)
    assert overlaps_between(acct, inner_ns, child.parent) == {}


def test_cli_json_table_tree_and_bad_input(userns: Callable[..., dict[str, Any]]) -> None:
    a = userns(f"0 {BASE + 60_000} 10")
    b = userns(f"0 {BASE + 60_000} 10")
    c = userns(f"0 {BASE + 60_000} 10")
    data = json.loads(nsfs("accounting", "-J").stdout)
    inodes = {u["inode"] for u in data["user_namespaces"]}
    assert {a["inode"], b["inode"]} <= inodes
    assert any({o["a"], o["b"]} == {a["inode"], b["inode"]} and o["ranges"] == [[BASE + 60_000, 10]]
               for o in data["overlaps"])
    ours = next(u for u in data["user_namespaces"] if u["inode"] == a["inode"])
    assert ours["limits"]["max_user_namespaces"] > 0 and ours["uids"][0]["host_uid"] == BASE + 60_000
    assert ours["uids"][0]["charged"] == ours["uids"][0]["threads"] == 1

    table = nsfs("accounting").stdout
    line = next(line for line in table.splitlines() if line.strip().startswith(str(a["inode"])))
    assert "shared-uids" in line and "shared-gids" in line
    # the JSON has every pair; the text joins the three namespaces with one map into one line
    assert sum({o["a"], o["b"]} <= {a["inode"], b["inode"], c["inode"]} for o in data["overlaps"] if o["kind"] == "uid") == 3
    first, second, third = sorted((a["inode"], b["inode"], c["inode"]))
    assert f"user:[{first}], user:[{second}] and user:[{third}] share host uids {BASE + 60_000}-" in table

    by_uid = nsfs("accounting", "--by", "uid", "-r", "-o", "NS,UID,HOSTUID,CHARGED").stdout.splitlines()
    assert f"{a['inode']} 0 {BASE + 60_000} 1" in by_uid

    tree = nsfs("accounting", "--tree", "-o", "NS").stdout
    assert f"─{a['inode']}" in tree

    assert "MAX_MNTNS" in nsfs("accounting", "-H").stdout
    unprivileged = json.loads(nsfs("accounting", "-J", user="65534").stdout)  # sees less, fails nowhere
    assert unprivileged["user_namespaces"][0]["level"] == 0
    bad = nsfs("accounting", "--by", "uid", "--tree", check=False)
    assert bad.returncode == 1 and "--tree goes with --by userns" in bad.stderr
    bad = nsfs("accounting", "-o", "NOPE", check=False)
    assert bad.returncode == 1 and "unknown column" in bad.stderr

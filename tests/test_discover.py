"""Discovery finds every hard-to-find namespace shape, each with the right holder, owner and parent."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import nsfs
from namespacefs import kernel
from namespacefs.discover import SOURCES, discover
from namespacefs.model import Holder, Namespace, Snapshot, diff

INITIAL_USER = os.stat("/proc/self/ns/user").st_ino


def holders_of(ns: Namespace, kind: str) -> list:
    return [h for h in ns.holders if h.kind == kind]


def test_a_thread_only_uts_namespace_is_found_with_its_task_holder(holder):
    made = holder("thread-uts")
    ns = discover().get(made["uts"])
    assert ns is not None and ns.type == "uts"
    assert made["pid"] not in ns.processes
    assert [(h.pid, h.tid) for h in holders_of(ns, "task")] == [(made["pid"], made["tid"])]
    assert ns.owner == INITIAL_USER


def test_a_thread_only_namespace_is_missed_without_the_task_source(holder):
    made = holder("thread-uts")
    assert discover(set(SOURCES) - {"task"}).get(made["uts"]) is None
    # the same from the command line: --sources=-LIST leaves sources out
    data = json.loads(nsfs("ls", "--sources=-task,socket", "-J").stdout)
    assert "task" not in data["sources"] and "socket" not in data["sources"] and "fd" in data["sources"]
    assert made["uts"] not in {ns["inode"] for ns in data["namespaces"]}


def test_an_fd_only_net_namespace_is_found_with_its_fd_holder(holder):
    made = holder("fd-net")
    ns = discover().get(made["net"])
    assert ns is not None and ns.type == "net" and ns.processes == ()
    assert [(h.kind, h.pid, h.fd) for h in ns.holders] == [("fd", made["pid"], made["fd"])]
    assert ns.owner == INITIAL_USER and ns.id is not None


@pytest.mark.parametrize("family", ["udp", "untabled"])
def test_a_socket_only_net_namespace_is_found_with_its_socket_holder(holder, family):
    made = holder("socket-net", family)
    snap = discover()
    ns = snap.get(made["net"])
    assert ns is not None and ns.type == "net"
    assert [(h.kind, h.pid, h.fd, h.socket) for h in ns.holders] == [("socket", made["pid"], made["fd"], made["socket"])]
    # its sockets in its own net namespace (tcp, udp, unix) hold nothing more
    own = snap.namespace_of(made["pid"], "net")
    assert own is not None and not [h for h in own.holders if h.kind == "socket" and h.pid == made["pid"]]
    assert discover(set(SOURCES) - {"socket"}).get(made["net"]) is None


def test_a_bind_mount_in_a_private_mount_namespace_is_found_and_its_holder_reported(holder, tmp_path: Path):
    target = tmp_path / "netns-file"
    target.touch()
    made = holder("private-bindmount", str(target))
    # the host cannot see that mount: only its own mount namespace can
    assert str(target) not in Path("/proc/self/mountinfo").read_text()
    ns = discover().get(made["net"])
    assert ns is not None and ns.type == "net" and ns.processes == ()
    mounts = holders_of(ns, "bindmount")
    assert [(h.mntns, h.path) for h in mounts] == [(made["mnt"], str(target))]


def test_a_user_namespace_chain_whose_middle_link_has_no_process(holder):
    made = holder("userns-chain")
    snap = discover()
    u1, u2 = snap.get(made["u1"]), snap.get(made["u2"])
    assert u1 is not None and u2 is not None
    assert u2.parent == u1.inode and u2.owner == u1.inode and made["leaf"] in u2.processes
    assert u1.parent == INITIAL_USER and u1.processes == ()
    assert [(h.kind, h.via) for h in u1.holders] == [("parent", u2.inode)]
    assert (u1.level, u2.level) == (1, 2)


def test_a_user_namespace_known_only_as_the_owner_of_an_fd_held_net_namespace(holder):
    made = holder("owner-only-userns")
    snap = discover()
    net, user = snap.get(made["net"]), snap.get(made["user"])
    assert net is not None and user is not None
    assert net.owner == user.inode and user.type == "user"
    assert [(h.kind, h.via) for h in user.holders] == [("owner", net.inode)]
    assert user.owner == INITIAL_USER and user.owner_uid == 0


def test_nested_pid_namespaces_have_parents_levels_and_inner_pids(spawn):
    outer = spawn(["unshare", "--pid", "--fork", "--kill-child", "--",
                   "unshare", "--pid", "--fork", "--kill-child", "--", "sleep", "600"])
    leaf = _wait_for_leaf(outer.pid, "sleep")
    snap = discover()
    inner = snap.namespace_of(leaf, "pid")
    assert inner is not None and inner.level == 2
    middle = snap.get(inner.parent)
    assert middle is not None and middle.level == 1 and middle.type == "pid"
    assert snap.get(middle.parent).level == 0
    assert snap.processes[leaf].nspid[-1] == 1  # the sleep is init of the innermost namespace
    assert len(snap.processes[leaf].nspid) == 3


def test_a_time_namespace_held_only_as_time_for_children(holder):
    made = holder("time-for-children")
    ns = discover().get(made["time"])
    assert ns is not None and ns.type == "time" and ns.processes == ()
    assert [(h.kind, h.pid) for h in ns.holders] == [("time_for_children", made["pid"])]
    assert made["time"] != made["own"]


def test_a_user_namespace_pinned_only_by_a_zombie_is_found_with_its_zombie_holder(holder):
    made = holder("zombie-userns")
    ns = discover().get(made["user"])
    assert ns is not None and ns.type == "user"
    assert Holder("zombie", pid=made["zombie"]) in ns.holders
    assert made["zombie"] not in ns.processes  # a zombie is in nothing any more


def test_ip_netns_bind_mounts_are_found(spawn):
    name = f"nsfs-test-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        ns = next(ns for ns in discover().of_type("net") if any(h.path == f"/run/netns/{name}" for h in ns.holders))
        assert ns.processes == ()
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=True)


def test_netnsids_asked_together_are_the_kernels_answers_one_by_one_and_ip_netns_list_id():
    """NETNSID of many net namespaces at once (one dump, then requests over one socket only until
    every assigned id is found) is what a single RTM_GETNSID per namespace answers and what
    `ip netns list-id` lists: an assigned id (in whatever order the namespaces come), unassigned ones."""
    from namespacefs import details
    from namespacefs.handles import open_namespace

    names = [f"nsfs-nsid-{os.getpid()}-{i}" for i in range(3)]
    try:
        for name in names:
            subprocess.run(["ip", "netns", "add", name], check=True)
        listed = subprocess.run(["ip", "netns", "list-id"], capture_output=True, text=True, check=True).stdout
        nsid = max((int(line.split()[1]) for line in listed.splitlines() if line.startswith("nsid ")), default=0) + 17
        subprocess.run(["ip", "netns", "set", names[1], str(nsid)], check=True)
        snap = discover()
        mine = {h.path: ns for ns in snap.of_type("net") for h in ns.holders if h.kind == "bindmount"}
        ours = [mine[f"/run/netns/{name}"] for name in names]
        one_by_one = {}
        for ns in ours:  # (ours only: another test's namespaces may come and go meanwhile)
            fd = open_namespace(ns, snap)
            try:
                one_by_one[ns.inode] = kernel.netnsid(fd)
            finally:
                os.close(fd)
        assert [one_by_one[ns.inode] for ns in ours] == [None, nsid, None]
        for order in (ours, ours[::-1]):
            assert details.netnsids(order, snap) == one_by_one
        assert [details.netnsid(ns, snap) for ns in ours] == [None, nsid, None]
        listed = subprocess.run(["ip", "netns", "list-id"], capture_output=True, text=True, check=True).stdout
        assert {int(line.split()[1]) for line in listed.splitlines() if line.startswith("nsid ")} >= {
            v for v in one_by_one.values() if v is not None} | {nsid}
        shown = {d["inode"]: d["netnsid"] for d in json.loads(nsfs("ls", "-J", "-t", "net").stdout)["namespaces"]}
        assert [shown[ns.inode] for ns in ours] == ["unassigned", str(nsid), "unassigned"]
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "delete", name], check=False)


def test_every_process_namespace_is_in_the_snapshot_with_consistent_types():
    snap = discover()
    assert len(snap.of_type("user")) >= 1
    for proc in snap.processes.values():
        for link, inode in proc.namespaces.items():
            ns = snap.get(inode)
            if ns is not None:  # it may have died between reading the link and opening it
                assert ns.type == link.replace("_for_children", "")
    _check_owners(snap)


def _check_owners(snap: Snapshot) -> None:
    for ns in snap:
        if ns.owner is not None:
            owner = snap.get(ns.owner)
            assert owner is not None and owner.type == "user", ns
        if ns.parent is not None:
            assert snap.get(ns.parent).type == ns.type


def test_churn_never_crashes_nor_misreports_type_or_owner(spawn, holder):
    """Scans while namespaces are made and destroyed many times a second."""
    stable = holder("owner-only-userns")
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            procs = [subprocess.Popen(["unshare", "-U", "-n", "-u", "-i", "true"]),
                     subprocess.Popen(["unshare", "-m", "-p", "-f", "true"])]
            for p in procs:
                p.wait()

    workers = [threading.Thread(target=churn) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        deadline, scans = time.monotonic() + 8, 0
        while time.monotonic() < deadline:
            snap = discover()
            scans += 1
            _check_owners(snap)
            net = snap.get(stable["net"])
            assert net is not None and net.type == "net" and net.owner == stable["user"]
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert scans >= 5


def test_diff_reports_appeared_and_vanished_namespaces(holder, spawn):
    before = discover()
    made = holder("fd-net")
    after = discover()
    d = diff(before, after)
    assert made["net"] in {ns.inode for ns in d.appeared}
    assert not diff(after, after)


def test_nsfs_ls_json_follows_the_contract(holder):
    made = holder("fd-net")
    data = json.loads(nsfs("ls", "--json").stdout)
    assert {"boot_id", "kernel", "taken_at", "namespaces"} <= set(data)
    types = {ns["type"] for ns in data["namespaces"]}
    assert types == {"mnt", "uts", "ipc", "pid", "net", "user", "cgroup", "time"}
    for ns in data["namespaces"]:
        assert {"type", "inode", "id", "owner", "parent", "holders", "processes", "name"} <= set(ns)
        assert all("kind" in h for h in ns["holders"])
    net = next(ns for ns in data["namespaces"] if ns["inode"] == made["net"])
    assert net["holders"] == [{"kind": "fd", "pid": made["pid"], "fd": made["fd"]}]
    assert net["owner"] == INITIAL_USER and isinstance(net["id"], int)


def test_nsfs_ls_table_filters_and_columns(holder):
    made = holder("fd-net")
    out = nsfs("ls", "-t", "net", "-P", "-o", "NS,TYPE,HOLDERS,ID", "-n", "-r").stdout
    rows = [line.split(" ") for line in out.splitlines()]
    assert [str(made["net"]), "net", "fd"] in [r[:3] for r in rows]
    assert all(r[1] == "net" for r in rows)
    assert "kthreadd" in nsfs("ls", "-p", "2").stdout
    listing = nsfs("ls", "-H").stdout
    for column in ("NS", "TYPE", "PATH", "NPROCS", "PID", "PPID", "COMMAND", "UID", "USER", "NETNSID", "NSFS", "PNS",
                   "ONS", "ID", "HOLDERS"):
        assert f" {column}  " in f" {listing}" or listing.lstrip().startswith(column)


def test_nsfs_ls_tree_nests_owned_namespaces_under_their_user_namespace(holder):
    made = holder("owner-only-userns")
    out = nsfs("ls", "-T", "-o", "NS,TYPE").stdout
    lines = out.splitlines()

    def row(inode: int, nstype: str) -> int:  # the line of that namespace, whatever its tree prefix
        return next(i for i, line in enumerate(lines) if line.split()[-1] == nstype and line.split()[-2].endswith(str(inode)))

    user_line, net_line = row(made["user"], "user"), row(made["net"], "net")
    assert net_line == user_line + 1 and "└─" in lines[net_line]
    # the tree column is left-aligned, so each branch starts where its parent's inode does
    assert lines[net_line].index("└─") == lines[user_line].index(str(made["user"]))
    # (a line may start with the blank lead of a last child's subtree, as lsns draws it: "  └─")
    assert all(not line.startswith(" ") or line.lstrip().startswith(("└─", "├─", "│")) for line in lines[1:]), out


def test_a_namespace_can_be_named_in_every_documented_way(holder):
    made = holder("fd-net")
    net, pid = made["net"], made["pid"]
    ident = json.loads(nsfs("show", str(net), "-J").stdout)["id"]
    for spec in (str(net), f"net:[{net}]", f"/proc/{pid}/fd/{made['fd']}", str(ident), f"id:{ident}"):
        shown = json.loads(nsfs("show", spec, "-J").stdout)
        assert shown["inode"] == net, spec
    assert json.loads(nsfs("show", f"{pid}:uts", "-J").stdout)["type"] == "uts"


def test_show_reads_per_type_details(holder):
    made = holder("thread-uts")
    uts = json.loads(nsfs("show", str(made["uts"]), "-J").stdout)
    assert uts["nodename"] == "thread-only" and uts["sysname"] == "Linux"
    fd_net = holder("fd-net")
    assert json.loads(nsfs("show", str(fd_net["net"]), "-J").stdout)["interfaces"] == ["lo"]


def test_bad_input_gets_a_clear_error_and_no_traceback():
    for args, message in ((["show", "net:[1]"], "no namespace"), (["show", "99999999:net"], "no process"),
                          (["show", "1:bogus"], "not a namespace type"), (["ls", "-o", "NOPE"], "unknown column"),
                          (["ls", "--sources", "nope"], "unknown source"), (["show", "no-such-name"], "no namespace")):
        result = nsfs(*args, check=False)
        assert result.returncode != 0 and message in result.stderr, (args, result.stderr)
    result = nsfs("ls", "-t", "bogus", check=False)
    assert result.returncode == 2 and "unknown namespace type" in result.stderr


def test_an_unprivileged_user_gets_a_clean_partial_answer():
    result = nsfs("ls", "--json", user="65534")
    data = json.loads(result.stdout)
    assert data["namespaces"], "an unprivileged user still sees its own namespaces"
    assert "could not be read" in result.stderr
    assert nsfs("ls", user="65534").stdout.startswith("        NS TYPE")


def _wait_for_leaf(root: int, comm: str, timeout: float = 5) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in _descendants(root):
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == comm:
                    return pid
            except OSError:
                continue
        time.sleep(0.02)
    raise TimeoutError(f"no {comm} under {root}")


def _descendants(root: int) -> list[int]:
    children = Path(f"/proc/{root}/task/{root}/children").read_text().split()
    found = [int(c) for c in children]
    for c in list(found):
        with contextlib.suppress(OSError):
            found += _descendants(c)
    return found


def test_a_snapshot_is_immutable_and_survives_pickling():
    snap = discover(sources={"process"})
    with pytest.raises(AttributeError):
        snap.kernel = "x"  # type: ignore[misc]
    other = snap.replace(kernel="x")
    assert (other.kernel, snap.kernel) == ("x", os.uname().release) and other.namespaces is snap.namespaces
    again = pickle.loads(pickle.dumps(snap))
    assert again.to_dict() == snap.to_dict() and again.by_id(next(iter(snap)).id) is not None


def test_a_mount_namespace_id_is_the_same_from_both_ioctls():
    """Kernels 6.8–6.17 have no NS_GET_ID; there a mount namespace's id comes from NS_GET_MNTNS_ID,
    which must then be the same number this 6.18 kernel gives through NS_GET_ID."""
    fd = os.open("/proc/self/ns/mnt", os.O_RDONLY)
    try:
        from_mntns_ioctl = kernel.ioctl_u64(fd, kernel.NS_GET_MNTNS_ID)
        assert from_mntns_ioctl == kernel.ns_id(fd, "mnt") == kernel.ns_id(fd)
    finally:
        os.close(fd)
    ours = discover().namespace_of(os.getpid(), "mnt")
    assert ours is not None and ours.id == from_mntns_ioctl


def test_the_models_named_constants_are_the_kernel_layers_and_the_documented_ones() -> None:
    from namespacefs import model

    assert tuple(model.NsType) == kernel.NS_TYPES  # the kernel layer stays the source of the types
    assert SOURCES == model.SOURCES == ("process", "task", "for_children", "fd", "socket", "bindmount", "listns")
    assert model.HOLDER_KINDS == ("process", "zombie", "task", "pid_for_children", "time_for_children", "fd",
                                  "bindmount", "socket", "parent", "owner", "listns")  # README's table, in order
    assert set(model.HOLDER_KINDS) - {"parent", "owner"} == model.DIRECT_KINDS
    a = Namespace("net", 7, None, 4, None, None, (), ())
    assert (a.key, a.stored_key) == (("net", 7), "ino:net:4:7")  # one key, and its stored text form
    assert Namespace("net", 7, 99, 4, None, None, (), ()).stored_key == "id:99"
    assert sorted([a, Namespace("user", 1, None, 4, None, None, (), ())], key=model.by_type)[1] is a  # (user before net)


_REREAD_AS_NOBODY = """
import json, subprocess, sys
from namespacefs.discover import discover
from namespacefs.discover.incremental import refresh
pids = [int(p) for p in sys.argv[1:]]
snap = discover()
counts = [dict(snap.errors)]
for _ in range(3):
    child = subprocess.Popen(["sleep", "60"])  # one more process each time: the model changes
    snap = refresh(snap, [*pids, child.pid], mounts=True)
    counts.append(dict(snap.errors))
    child.kill()
    child.wait()
print(json.dumps({"counts": counts, "ours": {str(p): dict(getattr(snap, "errors_by_pid", {}).get(p, {})) for p in pids}}))
"""


def test_a_live_models_errors_are_replaced_by_each_reread_not_added_to(spawn):
    """The daemon re-reads processes again and again; what it could not read of them is counted
    once (the last read's), not once per re-read, and a process gone leaves no error behind."""
    mine = spawn(["sleep", "60"])  # root's: an unprivileged reader may not read its links
    gone = spawn(["sleep", "60"])
    gone.kill()
    gone.wait()
    out = subprocess.run([sys.executable, "-c", _REREAD_AS_NOBODY, str(mine.pid), str(gone.pid)], user=65534,
                         capture_output=True, text=True, check=True, timeout=60)
    result = json.loads(out.stdout)
    first, *again = result["counts"]
    assert first.get("denied", 0) > 0  # the reader is unprivileged: it sees less, and says so
    assert all(counts == first for counts in again), result["counts"]
    assert result["ours"][str(mine.pid)].get("denied", 0) > 0 and result["ours"][str(gone.pid)] == {}

"""Acting on real containers and namespaces: enter, kill, pin/unpin, checkpoint/restore."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import nsfs
from namespacefs import containers, core
from namespacefs.kernel import NS_TYPES
from namespacefs.ops import kill as ops_kill
from runtimes import Started, gone, nsfs_env, start_bwrap, start_group, start_runc, started_fixture, wait_for

__all__ = ["started_fixture"]  # the `started` fixture

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="acting on namespaces needs root")

NESTED = "unshare -u -n sh -c 'hostname inner; exec sleep 1000' & exec sleep 1000"


def _inode(pid: int, nstype: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{nstype}").st_ino


def _kids(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


def _nested(init: int) -> int:
    return wait_for(lambda: next((k for k in _kids(init) if _inode(k, "uts") != _inode(init, "uts")
                                  and open(f"/proc/{k}/comm").read().strip() == "sleep"), None),
                    what="the nested container")


# --- enter -------------------------------------------------------------------------------------


def test_enter_sees_the_containers_hostname_pid_1_and_interfaces(tmp_path: Path, started: Started) -> None:
    runc = start_runc(tmp_path, started, "webbox", ["sleep", "1000"])
    env = nsfs_env(runc.state, tmp_path / "names.db")
    script = "hostname; cat /proc/1/comm; ls /sys/class/net; readlink /proc/self/ns/pid; echo $$"
    out = nsfs("enter", f"/{runc.id}", "--", "sh", "-c", script, env=env).stdout.split()
    hostname, pid1, *rest = out
    assert hostname == "webbox"
    assert pid1 == "sleep"  # the container's pid 1, seen through its own /proc
    assert rest[:-2] == ["lo"]  # runc gave it a net namespace with only loopback
    assert rest[-2] == f"pid:[{_inode(runc.pid, 'pid')}]"
    assert int(rest[-1]) > 1  # a new process inside the pid namespace, not its init


def test_enter_returns_the_commands_exit_status_and_takes_a_subset(tmp_path: Path, started: Started) -> None:
    runc = start_runc(tmp_path, started, "subset", ["sleep", "1000"])
    env = nsfs_env(runc.state, tmp_path / "names.db")
    assert nsfs("enter", str(runc.pid), "--", "sh", "-c", "exit 7", check=False, env=env).returncode == 7
    # only the uts namespace (-u): the host's /proc and mount namespace, the container's hostname
    out = nsfs("enter", str(runc.pid), "-u", "--", "sh", "-c", "hostname; readlink /proc/self/ns/mnt", env=env).stdout
    assert out.split() == ["subset", os.readlink("/proc/self/ns/mnt")]
    # nsenter's habit: -t PID, the namespace letters, then the command (with or without --)
    out = nsfs("enter", "-t", str(runc.pid), "-u", "hostname", env=env).stdout
    assert out.strip() == "subset"
    out = nsfs("enter", "-u", "-t", str(runc.pid), "--", "sh", "-c", "hostname -- 2>/dev/null; echo ok", env=env).stdout
    assert out.split() == ["subset", "ok"]
    assert "no target" in nsfs("enter", "-u", check=False, env=env).stderr
    # a namespace given as PID:TYPE enters just that one
    out = nsfs("enter", f"{runc.pid}:net", "--", "readlink", "/proc/self/ns/net", env=env).stdout
    assert out.strip() == f"net:[{_inode(runc.pid, 'net')}]"
    # no command: the target's shell (busybox sh here) reads ours from stdin
    shell = nsfs("enter", f"/{runc.id}", check=False, env=env, input="hostname; exit 3\n")
    assert shell.returncode == 3 and shell.stdout.strip() == "subset"
    missing = nsfs("enter", "/nope", "--", "true", check=False, env=env)
    assert missing.returncode == 1 and "nope" in missing.stderr
    no_cmd = nsfs("enter", str(runc.pid), "--", "/no/such/command", check=False, env=env)
    assert no_cmd.returncode == 1 and "/no/such/command" in no_cmd.stderr


def test_enter_rejects_garbage_with_one_clear_message(tmp_path: Path, started: Started) -> None:
    runc = start_runc(tmp_path, started, "garbage", ["sleep", "1000"])
    env = nsfs_env(runc.state, tmp_path / "names.db")
    empty = nsfs("enter", "", "--", "true", check=False, env=env)
    assert empty.returncode == 1 and "empty target" in empty.stderr  # not the host, whose name is ""
    for bad, says in ((["-S", "abc"], "invalid int value"), (["-x"], "unknown options")):
        result = nsfs("enter", f"/{runc.id}", *bad, "--", "true", check=False, env=env)
        assert result.returncode == 1 and says in result.stderr
        assert "usage:" not in result.stderr and result.stderr.count("nsfs enter:") == 1
    wrong_type = nsfs("enter", f"{runc.pid}:bogus", "--", "true", check=False, env=env)
    assert wrong_type.returncode == 1 and "not a namespace type" in wrong_type.stderr


def test_enter_a_user_namespace_as_its_root(started: Started, tmp_path: Path) -> None:
    _, init = start_bwrap(started, "userbox", ["sleep", "1000"])
    env = nsfs_env(tmp_path / "no-runc", tmp_path / "names.db")
    out = nsfs("enter", str(init), "--", "sh", "-c", "hostname; readlink /proc/self/ns/user", env=env).stdout.split()
    assert out == ["userbox", f"user:[{_inode(init, 'user')}]"]


# --- kill --------------------------------------------------------------------------------------


def test_kill_takes_the_nested_container_and_leaves_everything_else(tmp_path: Path, started: Started) -> None:
    runc = start_runc(tmp_path, started, "victim", ["sh", "-c", NESTED], caps_all=True)
    inner = _nested(runc.pid)
    sentinel = start_group(started, ["sleep", "1000"])
    _, bystander = start_bwrap(started, "bystander", ["sleep", "1000"])
    env = nsfs_env(runc.state, tmp_path / "names.db")
    dry = nsfs("kill", f"/{runc.id}", "--dry-run", env=env).stdout
    assert f"/{runc.id}/inner" in dry and str(inner) in dry and str(runc.pid) in dry
    assert not gone(runc.pid) and not gone(inner)  # a dry run kills nothing
    report = json.loads(nsfs("kill", f"/{runc.id}", "-J", env=env).stdout)
    assert report["containers"] == [f"/{runc.id}", f"/{runc.id}/inner"]
    assert {runc.pid, inner} <= set(report["pids"]) and report["left"] == []
    assert report["frozen_with"] == [f"freezer:{runc.cgroup}"]  # runc gave it a freezer cgroup of its own
    wait_for(lambda: gone(runc.pid) and gone(inner), what="the container to die")
    assert sentinel.poll() is None and not gone(bystander)
    assert os.getpid() not in report["pids"] and sentinel.pid not in report["pids"]
    with open(f"/sys/fs/cgroup/freezer{runc.cgroup}/freezer.state") as f:
        assert f.read().strip() == "THAWED"


def test_kill_can_use_the_cgroup2_freezer(tmp_path: Path, started: Started) -> None:
    runc = start_runc(tmp_path, started, "unified", ["sh", "-c", "sleep 1000 & exec sleep 1000"])
    wait_for(lambda: _kids(runc.pid), what="the container's second process")
    snap = core.snapshot(("process",))
    tree = containers.find(snap, oci_roots=[(str(runc.state), "runc")])
    target = tree.of_pid(runc.pid)
    assert target is not None and len(target.pids) == 2
    report = ops_kill.kill(tree, target, freezers=("cgroup2",))
    assert report.frozen_with == [f"cgroup2:{runc.cgroup}"] and report.left == []
    assert sorted(report.pids) == sorted(target.pids)


def test_kill_without_a_cgroup_of_its_own_stops_every_process(started: Started, tmp_path: Path) -> None:
    script = "unshare --uts sh -c 'hostname nested; exec sleep 1000' & exec sleep 1000"
    outer, init = start_bwrap(started, "stopped", ["sh", "-c", script])
    payload = wait_for(lambda: (_kids(init) or [None])[0], what="the sandboxed shell")
    nested = _nested(payload)
    sentinel = start_group(started, ["sleep", "1000"])
    env = nsfs_env(tmp_path / "no-runc", tmp_path / "names.db")
    report = json.loads(nsfs("kill", "stopped", "-J", env=env).stdout)
    assert report["containers"] == ["/stopped", "/stopped/nested"]
    assert report["frozen_with"] == [f"SIGSTOP {len(report['pids'])}"]
    assert {init, payload, nested} <= set(report["pids"]) and outer.pid not in report["pids"]
    assert report["left"] == []
    assert gone(init) and gone(nested) and sentinel.poll() is None


def _alive_in(nstype: str, inode: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and _inode(int(entry), nstype) == inode and not gone(int(entry)):
                found.append(int(entry))
        except OSError:
            continue
    return found


def test_kill_catches_processes_forked_while_it_works(started: Started, tmp_path: Path) -> None:
    """No pid namespace here, so the kernel does not help: every process must be found and killed."""
    script = "i=0; while [ $i -lt 300 ]; do sleep 1000 & i=$((i+1)); done; wait"
    outer = start_group(started, ["bwrap", "--unshare-user", "--unshare-ipc", "--unshare-net", "--unshare-uts",
                                  "--hostname", "forky", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                                  "sh", "-c", script])
    init = wait_for(lambda: next((k for k in _kids(outer.pid) if _kids(k)), None), what="the forking shell")
    net = _inode(init, "net")
    sentinel = start_group(started, ["sleep", "1000"])
    env = nsfs_env(tmp_path / "no-runc", tmp_path / "names.db")
    report = json.loads(nsfs("kill", "forky", "-J", env=env).stdout)
    assert report["left"] == [] and init in report["pids"]
    assert outer.pid not in report["pids"] and sentinel.pid not in report["pids"]
    assert _alive_in("net", net) == []
    assert sentinel.poll() is None


def test_kill_takes_a_container_nested_after_the_snapshot(started: Started, tmp_path: Path) -> None:
    """No pid namespace, so the kernel would not take the newcomer with the sandbox's init: kill
    must find it as a member's child in namespaces that no container had at the snapshot."""
    trigger = tmp_path / "go"
    script = f"while [ ! -e {trigger} ]; do sleep 0.05; done; unshare --uts sleep 1000 & exec sleep 1000"
    outer = start_group(started, ["bwrap", "--unshare-user", "--unshare-ipc", "--unshare-net", "--unshare-uts",
                                  "--hostname", "late", "--ro-bind", "/", "/", "--bind", str(tmp_path), str(tmp_path),
                                  "--dev", "/dev", "--proc", "/proc", "sh", "-c", script])
    init = wait_for(lambda: next((k for k in _kids(outer.pid) if _kids(k)), None), what="the sandboxed shell")
    snap = core.snapshot(("process",))
    tree = containers.find(snap)
    target = tree.of_pid(init)
    assert target is not None and target.name == "late" and not target.children
    sentinel = start_group(started, ["sleep", "1000"])
    trigger.touch()
    newcomer = wait_for(lambda: next((k for k in _kids(init) if _inode(k, "uts") != _inode(init, "uts")), None),
                        what="the container nested after the snapshot")
    report = ops_kill.kill(tree, target, freezers=())
    assert newcomer in report.late and newcomer in report.pids and report.left == []
    assert gone(init) and gone(newcomer)
    assert sentinel.poll() is None and outer.pid not in report.pids


def test_kill_with_another_signal_reaches_a_process_that_handles_it(started: Started, tmp_path: Path) -> None:
    marker = tmp_path / "got-term"
    script = f"trap 'echo term > {marker}; exit 0' TERM; while true; do sleep 0.1; done"
    # the shell is the sandbox's pid 1: from outside, a signal it has a handler for is delivered
    _, init = start_bwrap(started, "polite", ["--bind", str(tmp_path), str(tmp_path), "--as-pid-1",
                                              "sh", "-c", script])
    env = nsfs_env(tmp_path / "no-runc", tmp_path / "names.db")
    nsfs("kill", "polite", "-s", "TERM", env=env)
    wait_for(marker.exists, what="the TERM handler")
    assert marker.read_text().strip() == "term"
    wait_for(lambda: gone(init), what="the handler's exit")
    bad = nsfs("kill", "/", "-s", "NOSUCH", check=False, env=env)
    assert bad.returncode == 1 and "unknown signal" in bad.stderr


def test_kill_takes_signals_as_kill_does_and_rejects_garbage(started: Started, tmp_path: Path) -> None:
    _, init = start_bwrap(started, "signals", ["sleep", "1000"])
    env = nsfs_env(tmp_path / "no-runc", tmp_path / "names.db")
    for given, name in (("RTMIN+2", "SIGRTMIN+2"), ("sigterm", "SIGTERM"), ("9", "SIGKILL"), ("40", "SIGRTMIN+6")):
        report = json.loads(nsfs("kill", "signals", "--dry-run", "-J", "-s", given, env=env).stdout)
        assert report["signal"] == name and init in report["pids"]
    for given in ("0", "65", "RTMIN+99", "-9", ""):
        result = nsfs("kill", "signals", "--dry-run", "-s", given, check=False, env=env)
        assert result.returncode == 1 and "signal" in result.stderr, given
    for timeout in ("-1", "abc", "nan"):
        result = nsfs("kill", "signals", "--dry-run", "--timeout", timeout, check=False, env=env)
        assert result.returncode == 2 and ("not a number" in result.stderr or "finite number" in result.stderr), timeout
    empty = nsfs("kill", "", "--dry-run", check=False, env=env)
    assert empty.returncode == 1 and "empty container name" in empty.stderr
    assert not gone(init)  # dry runs and refusals kill nothing


# --- pin ---------------------------------------------------------------------------------------


def _unmount_left(paths: list[Path]) -> None:
    """Teardown after a failure: unmount whatever is still pinned (only our own files)."""
    for path in paths:
        while os.path.ismount(path) or _is_nsfs(path):
            if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
                break


def _is_nsfs(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split(" ")[4] == str(path) for line in f)


def test_pinned_namespaces_survive_their_last_process_and_go_after_unpin(started: Started, tmp_path: Path) -> None:
    proc = start_group(started, ["unshare", "-m", "-u", "-i", "-n", "-p", "-f", "-U", "-C", "-T", "sleep", "1000"])
    pid = wait_for(lambda: (_kids(proc.pid) or [None])[0], what="the unshared process")
    inodes = {t: _inode(pid, t) for t in NS_TYPES}
    pins = {t: tmp_path / f"pin-{t}" for t in NS_TYPES}
    try:
        for t in NS_TYPES:
            out = nsfs("pin", f"{pid}:{t}", str(pins[t])).stdout
            assert f"{t}:[{inodes[t]}]" in out
        # the inner process first, so that unshare reaps it: an orphaned zombie would still pin
        # the user and pid namespaces (and nsfs rightly reports it as their `zombie` holder)
        os.kill(pid, 9)
        proc.wait(timeout=10)
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), what="the last process to be reaped")
        snap = core.snapshot(("process", "bindmount"))
        ids = {}
        for t in NS_TYPES:
            ns = snap.get(inodes[t])
            assert ns is not None and ns.type == t and not ns.processes, t
            ids[t] = ns.id
            assert any(h.kind == "bindmount" and h.path == str(pins[t]) for h in ns.holders), t
            assert os.stat(pins[t]).st_ino == inodes[t]
        # a namespace with no process left is entered through its pin
        entered = nsfs("enter", str(pins["net"]), "--", "readlink", "/proc/self/ns/net").stdout
        assert entered.strip() == f"net:[{inodes['net']}]"
        for t in NS_TYPES:
            assert f"{t}:[{inodes[t]}]" in nsfs("unpin", str(pins[t])).stdout
            assert not pins[t].exists()
        snap = core.snapshot(("process", "bindmount"))
        # by the 64-bit ids: a freed inode number may already belong to someone else's new namespace
        assert all(i is not None for i in ids.values())
        assert not [t for t, i in ids.items() if snap.by_id(i) is not None]
    finally:
        _unmount_left(list(pins.values()))


def test_pin_explains_a_shared_mount_and_bad_paths(started: Started, tmp_path: Path) -> None:
    proc = start_group(started, ["unshare", "-m", "sleep", "1000"])
    wait_for(lambda: _inode(proc.pid, "mnt") != _inode(os.getpid(), "mnt"), what="the new mount namespace")
    shared = tmp_path / "shared"
    shared.mkdir()
    subprocess.run(["mount", "--bind", str(shared), str(shared)], check=True)
    try:
        subprocess.run(["mount", "--make-shared", str(shared)], check=True)
        result = nsfs("pin", f"{proc.pid}:mnt", str(shared / "m"), check=False)
        assert result.returncode == 1 and "shared mount" in result.stderr and "make-private" in result.stderr
        assert not (shared / "m").exists()
        subprocess.run(["mount", "--make-private", str(shared)], check=True)
        nsfs("pin", f"{proc.pid}:mnt", str(shared / "m"))
        nsfs("unpin", str(shared / "m"))
    finally:
        subprocess.run(["umount", "-l", str(shared)], check=False)
    not_pinned = nsfs("unpin", str(tmp_path), check=False)
    assert not_pinned.returncode == 1 and "not a pinned namespace" in not_pinned.stderr
    no_dir = nsfs("pin", f"{proc.pid}:net", "/no/such/dir/x", check=False)
    assert no_dir.returncode == 1 and "not a directory" in no_dir.stderr


def test_pin_never_stacks_on_a_pin_or_hides_a_file(started: Started, tmp_path: Path) -> None:
    proc = start_group(started, ["unshare", "-n", "sleep", "1000"])
    wait_for(lambda: _inode(proc.pid, "net") != _inode(os.getpid(), "net"), what="the new net namespace")
    pin, other = tmp_path / "pin", tmp_path / "data"
    other.write_text("keep me\n")
    try:
        nsfs("pin", f"{proc.pid}:net", str(pin))
        again = nsfs("pin", f"{proc.pid}:net", str(pin), check=False)
        assert again.returncode == 1 and "already pins net:" in again.stderr
        uts = nsfs("pin", f"{proc.pid}:uts", str(pin), check=False)
        assert uts.returncode == 1 and "unpin it first" in uts.stderr
        hidden = nsfs("pin", f"{proc.pid}:net", str(other), check=False)
        assert hidden.returncode == 1 and "not an empty file" in hidden.stderr
        assert other.read_text() == "keep me\n" and not _is_nsfs(other)
        nsfs("unpin", str(pin))
        assert not pin.exists() and not _is_nsfs(pin)  # one unpin: nothing was stacked
    finally:
        _unmount_left([pin, other])
    for argv, says in ((["pin", f"{proc.pid}:net", "/proc/nsfs-test-pin"], "cannot create"),
                       (["pin", f"{proc.pid}:net", ""], "empty path"), (["unpin", ""], "empty path")):
        result = nsfs(*argv, check=False)
        assert result.returncode == 1 and says in result.stderr, argv


# --- checkpoint / restore ----------------------------------------------------------------------


def _criu_check_passes() -> bool:
    try:
        return subprocess.run(["criu", "check"], capture_output=True, timeout=60).returncode == 0
    except FileNotFoundError:
        return False


def test_checkpoint_writes_topology_and_names_and_reports_criu_honestly(tmp_path: Path, started: Started) -> None:
    runc = start_runc(tmp_path, started, "saved", ["sh", "-c", NESTED], caps_all=True)
    inner = _nested(runc.pid)
    db = tmp_path / "names.db"
    env = nsfs_env(runc.state, db)
    out_dir = tmp_path / "ckpt"
    result = nsfs("checkpoint", f"/{runc.id}", str(out_dir), "-J", env=env)
    report = json.loads(result.stdout)
    topo = json.loads((out_dir / "topology.json").read_text())
    names = json.loads((out_dir / "names.json").read_text())
    criu = json.loads((out_dir / "criu.json").read_text())
    assert topo["container"]["path"] == f"/{runc.id}" and topo["container"]["engine"] == "runc"
    assert [c["path"] for c in topo["container"]["children"]] == [f"/{runc.id}/inner"]
    by_inode = {ns["inode"]: ns for ns in topo["namespaces"]}
    assert by_inode[_inode(runc.pid, "uts")]["hostname"] == "saved"
    assert by_inode[_inode(inner, "uts")]["hostname"] == "inner"
    assert by_inode[_inode(runc.pid, "net")]["type"] == "net"
    assert {p["pid"] for p in topo["processes"]} >= {runc.pid, inner}
    assert [c["name"] for c in names["containers"]] == [runc.id, "inner"]
    passes = _criu_check_passes()
    assert criu["check_ok"] is passes and report["criu"]["check_ok"] is passes
    if not passes:
        assert report["dumped"] is False and not (out_dir / "images").exists()
        assert "cannot checkpoint" in criu["message"] and "criu check" in criu["message"]
        text = nsfs("checkpoint", f"/{runc.id}", str(tmp_path / "again"), env=env).stdout
        assert "CRIU" in text and "no process images were written" in text
    # restore re-applies the saved names (here to the same, still running, containers): a rename
    # made after the checkpoint is undone, and a name that is still right is not stored again
    nsfs("containers", "--rename", f"/{runc.id}", "renamed", env=env)
    restored = nsfs("restore", str(out_dir), env=env)
    assert f"name {runc.id} re-applied to runc:{runc.id}" in restored.stdout
    assert "/renamed/inner still has its saved name" in restored.stdout
    if not passes:
        assert "no processes were restored" in restored.stdout
    paths = {c["path"] for c in json.loads(nsfs("containers", "-J", env=env).stdout)["containers"]}
    assert {f"/{runc.id}", f"/{runc.id}/inner"} <= paths and "/renamed" not in paths
    bad = nsfs("restore", str(tmp_path / "nothing-here"), check=False, env=env)
    assert bad.returncode == 1 and "not a namespacefs checkpoint" in bad.stderr
    (out_dir / "names.json").write_text("[1, 2]\n")  # damaged by hand: refused before the database
    damaged = nsfs("restore", str(out_dir), check=False, env=env)
    assert damaged.returncode == 1 and "names.json is damaged" in damaged.stderr


def test_checkpoint_without_criu_says_so_and_still_writes_topology(tmp_path: Path, started: Started) -> None:
    path = "/usr/bin:/bin"  # a PATH without /usr/sbin, where Debian installs criu
    if shutil.which("criu", path=path):
        pytest.skip("criu is installed in /usr/bin here")
    runc = start_runc(tmp_path, started, "nocriu", ["sleep", "1000"])
    env = dict(nsfs_env(runc.state, tmp_path / "names.db"), PATH=path)
    out_dir = tmp_path / "ckpt"
    report = json.loads(nsfs("checkpoint", f"/{runc.id}", str(out_dir), "-J", env=env).stdout)
    assert report["criu"] == {"installed": False, "version": None, "check_ok": False,
                              "message": "CRIU is not installed (Debian package 'criu')"}
    assert report["dumped"] is False and not (out_dir / "images").exists()
    topo = json.loads((out_dir / "topology.json").read_text())
    assert topo["container"]["init"] == runc.pid and topo["container"]["engine"] == "runc"
    restored = nsfs("restore", str(out_dir), env=env)
    assert "CRIU is not installed" in restored.stdout and "no processes were restored" in restored.stdout


def test_enter_joins_through_the_pidfd_that_resolution_checked(tmp_path: Path) -> None:
    """Issue 12: ops.enter.run acts through the pidfd the target was verified with, never a second
    one opened by pid later (a pid recycled in between would otherwise be entered). Shown by handing
    run() the pidfd of one process and the pid of another: the command runs in the pidfd's."""
    import sys

    from namespacefs import kernel
    from namespacefs.ops import enter as ops_enter

    marked = subprocess.Popen(["unshare", "-u", "sh", "-c", "hostname nsfs-through-pidfd && exec sleep 60"])
    other = subprocess.Popen(["sleep", "60"])
    try:
        wait_for(lambda: os.stat(f"/proc/{marked.pid}/ns/uts").st_ino != os.stat("/proc/self/ns/uts").st_ino
                 and subprocess.run(["nsenter", "-t", str(marked.pid), "-u", "hostname"], capture_output=True,
                                    text=True).stdout.strip() == "nsfs-through-pidfd")
        pidfd = kernel.pidfd_open(marked.pid)
        try:
            out = tmp_path / "out"
            plan = ops_enter.Plan(("uts",), pid=other.pid)
            status = ops_enter.run(plan, [sys.executable, "-c", f"import socket; open({str(out)!r}, 'w').write("
                                          "socket.gethostname())"], pidfd=pidfd)
            assert status == 0 and out.read_text() == "nsfs-through-pidfd"
            marked.kill()
            marked.wait()
            with pytest.raises(ops_enter.EnterError, match="has gone"):
                ops_enter.run(ops_enter.Plan(("uts",), pid=marked.pid), ["true"], pidfd=pidfd)
        finally:
            os.close(pidfd)
    finally:
        for proc in (marked, other):
            proc.kill()
            proc.wait()

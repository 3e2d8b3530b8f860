"""Id shifting for real: idmapped mounts (stat through the mount, writes landing with the right ids
on disk, unshift, the chained example of the 2014 thread, every error path) and the --chown mode
(ACLs, set-id bits, capabilities, links, conflicts, rollback, and a run killed with SIGKILL then
resumed)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import signal
import sqlite3
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import kill_group, nsfs
from namespacefs import kernel
from namespacefs.ops import chown_shift
from namespacefs.ops import shift as idmap
from test_accounting import userns_fixture  # noqa: F401 - the `userns` fixture

# --- helpers -----------------------------------------------------------------------------------


def run_as(func: Callable[[], Any], uid: int | None = None, gid: int | None = None, userns_pid: int | None = None,
           cwd: Path | None = None) -> Any:
    """Run func in a forked child (in cwd, which is entered first since pytest's temp directories
    are private to root; optionally joined to a user namespace, then as uid:gid there) and return
    its result, or the OSError it raised."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            if cwd is not None:
                os.chdir(cwd)
            if userns_pid is not None:
                fd = os.open(f"/proc/{userns_pid}/ns/user", os.O_RDONLY)
                kernel.setns(fd, kernel.CLONE_FLAGS["user"])
            if gid is not None:
                os.setgroups([])
                os.setresgid(gid, gid, gid)
            if uid is not None:
                os.setresuid(uid, uid, uid)
            out: Any = ("ok", func())
        except OSError as e:
            out = ("error", e.errno)
        except BaseException as e:
            out = ("crash", repr(e))
        os.write(w, pickle.dumps(out))
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        kind, value = pickle.loads(f.read())
    os.waitpid(pid, 0)
    assert kind != "crash", value
    if kind == "error":
        return OSError(value, os.strerror(value))
    return value


def ids(path: Path | str) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid


def make_file(path: Path, uid: int, gid: int, mode: int = 0o644) -> Path:
    path.write_text(path.name)
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    return path


@pytest.fixture
def mounts() -> Iterator[list[str]]:
    """Mount points the test made; anything still mounted is detached at teardown."""
    made: list[str] = []
    yield made
    for path in reversed(made):
        with contextlib.suppress(OSError):
            while idmap.is_mountpoint(path):
                kernel.umount(path, kernel.MNT_DETACH)


@pytest.fixture
def tree(tmp_path: Path, mounts: list[str]) -> tuple[Path, Path]:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    mounts.append(str(dst))
    return src, dst


# --- idmapped mounts ---------------------------------------------------------------------------


def test_map_parsing_and_checks() -> None:
    assert idmap.parse_map("0:100000:65536") == (0, 100000, 65536)
    for bad, why in (("1:2", "FROM:TO:COUNT"), ("a:b:c", "decimal"), ("0:0:0", "COUNT >= 1"), ("-1:0:1", ">= 0"),
                     ("4294967290:0:10", "past"), ("0:4294967295:1", "past")):
        with pytest.raises(idmap.ShiftError, match=why):
            idmap.parse_map(bad)
    with pytest.raises(idmap.ShiftError, match="overlap on the FROM"):
        idmap.check_map(((0, 1000, 10), (5, 5000, 10)))
    with pytest.raises(idmap.ShiftError, match="overlap on the TO"):
        idmap.check_map(((0, 1000, 10), (100, 1005, 10)))
    with pytest.raises(idmap.ShiftError, match="at most 340"):
        idmap.check_map(tuple((i, i + 10000, 1) for i in range(341)))
    assert idmap.apply_map(((10, 100, 5),), 12) == 102 and idmap.apply_map(((10, 100, 5),), 15) is None


def test_stat_through_the_mount_and_on_disk_ids_unchanged(tree: tuple[Path, Path]) -> None:
    src, dst = tree
    make_file(src / "a", 1000, 1000)
    make_file(src / "b", 1005, 1007)
    make_file(src / "unmapped", 5, 5)
    out = nsfs("shift", str(src), str(dst), "--map", "1000:301000:100")
    assert "idmapped" in out.stdout
    assert ids(dst / "a") == (301000, 301000)
    assert ids(dst / "b") == (301005, 301007)
    assert ids(dst / "unmapped") == (65534, 65534)  # the overflow ids
    assert ids(src / "b") == (1005, 1007)  # nothing was chowned
    info = idmap.mount_of(str(dst))
    assert info is not None and info.idmapped and info.mountpoint == str(dst)


def test_separate_gid_map(tree: tuple[Path, Path]) -> None:
    src, dst = tree
    make_file(src / "f", 10, 20)
    nsfs("shift", str(src), str(dst), "--map", "0:400000:100", "--gid-map", "0:500000:100")
    assert ids(dst / "f") == (400010, 500020)


def test_writes_through_the_mount_land_with_on_disk_ids(tree: tuple[Path, Path]) -> None:
    src, dst = tree
    os.chown(src, 1000, 1000)
    os.chmod(src, 0o777)
    (src / "unmapped").mkdir(mode=0o777)
    os.chown(src / "unmapped", 5, 5)
    os.chmod(src / "unmapped", 0o777)
    nsfs("shift", str(src), str(dst), "--map", "1000:301000:100")
    assert run_as(lambda: Path("new").write_text("x"), uid=301003, gid=301004, cwd=dst) == 1
    assert ids(src / "new") == (1003, 1004)
    assert ids(dst / "new") == (301003, 301004)
    # a directory whose ids the map does not cover cannot be written through the mount, whatever its mode
    err = run_as(lambda: Path("unmapped/new").write_text("x"), uid=301003, gid=301004, cwd=dst)
    assert isinstance(err, OSError) and err.errno == errno.EACCES
    # host root is not in the mapping, so it may not create files through the mount
    err = run_as(lambda: os.mkdir(dst / "by-root"))
    assert isinstance(err, OSError) and err.errno == errno.EOVERFLOW
    assert not (src / "by-root").exists()


def test_read_only_and_recursive(tree: tuple[Path, Path], mounts: list[str]) -> None:
    src, dst = tree
    os.chown(src, 1000, 1000)
    (src / "sub").mkdir()
    kernel.mount("tmpfs", str(src / "sub"), "tmpfs", 0, "size=1m")
    mounts.insert(0, str(src / "sub"))
    make_file(src / "sub" / "inner", 1001, 1001)
    make_file(src / "top", 1002, 1002, 0o666)
    nsfs("shift", str(src), str(dst), "--map", "1000:301000:100", "--recursive", "--read-only")
    assert ids(dst / "sub" / "inner") == (301001, 301001)
    assert idmap.mount_of(str(dst / "sub")).idmapped  # type: ignore[union-attr]
    err = run_as(lambda: Path("top").write_text("y"), uid=301002, gid=301002, cwd=dst)
    assert isinstance(err, OSError) and err.errno == errno.EROFS
    out = nsfs("unshift", str(dst))
    assert f"unmounted {dst}/sub" in out.stdout and f"unmounted {dst}" in out.stdout
    assert not idmap.is_mountpoint(str(dst)) and not idmap.is_mountpoint(str(dst / "sub"))


def test_without_recursive_submounts_are_not_carried(tree: tuple[Path, Path], mounts: list[str]) -> None:
    src, dst = tree
    (src / "sub").mkdir()
    kernel.mount("tmpfs", str(src / "sub"), "tmpfs", 0, "size=1m")
    mounts.insert(0, str(src / "sub"))
    make_file(src / "sub" / "inner", 1001, 1001)
    nsfs("shift", str(src), str(dst), "--map", "1000:301000:100")
    assert not (dst / "sub" / "inner").exists()


def test_unshift_restores_the_empty_directory(tree: tuple[Path, Path]) -> None:
    src, dst = tree
    make_file(src / "a", 1000, 1000)
    nsfs("shift", str(src), str(dst), "--map", "1000:301000:100")
    assert (dst / "a").exists()
    nsfs("unshift", str(dst))
    assert not idmap.is_mountpoint(str(dst)) and list(dst.iterdir()) == []
    assert ids(src / "a") == (1000, 1000)
    # and the transient user namespace is gone with the mount: shifting again works
    nsfs("shift", str(src), str(dst), "--map", "1000:302000:100")
    assert ids(dst / "a") == (302000, 302000)


def test_chained_example_of_the_thread(tree: tuple[Path, Path], userns: Callable[..., dict[str, Any]]) -> None:
    """Image ids 100000-165535 are seen as 0-65535 in the container and as 200000-265535 on the host."""
    src, dst = tree
    os.chmod(src, 0o755)
    os.chown(src, 100000, 100000)
    make_file(src / "etc-passwd", 100000, 100000)
    make_file(src / "home-user", 101000, 101000)
    container = userns("0 200000 65536")
    nsfs("shift", str(src), str(dst), "--map", "100000:200000:65536")

    assert ids(dst / "etc-passwd") == (200000, 200000)  # the host's view
    assert ids(dst / "home-user") == (201000, 201000)
    inside = run_as(lambda: [ids("etc-passwd"), ids("home-user")], userns_pid=container["pid"], cwd=dst)
    assert inside == [(0, 0), (1000, 1000)]  # the container's view
    # container root writes through the mount: the file lands as image id 100000 on disk
    assert run_as(lambda: Path("written").write_text("c"), uid=0, gid=0, userns_pid=container["pid"], cwd=dst) == 1
    assert ids(src / "written") == (100000, 100000)
    nsfs("unshift", str(dst))


def test_shift_with_an_existing_user_namespace(tree: tuple[Path, Path], userns: Callable[..., dict[str, Any]]) -> None:
    src, dst = tree
    make_file(src / "f", 7, 8)
    container = userns("0 200000 65536")
    out = nsfs("shift", str(src), str(dst), "--userns", f"{container['pid']}:user", "-J")
    info = json.loads(out.stdout)
    assert info["dst"] == str(dst) and "idmapped" in info["options"] and str(container["inode"]) in info["via"]
    assert ids(dst / "f") == (200007, 200008)


def test_error_paths(tree: tuple[Path, Path], tmp_path: Path, mounts: list[str]) -> None:
    src, dst = tree
    make_file(src / "f", 1000, 1000)

    def fails(*args: str, expect: str) -> None:
        result = nsfs(*args, check=False)
        assert result.returncode == 1, result.stdout
        assert expect in result.stderr, result.stderr

    fails("shift", str(src), str(dst), "--map", "1000:2000", expect="malformed map")
    fails("shift", str(src), str(dst), "--map", "0:1000:10", "--map", "5:5000:10", expect="overlap")
    fails("shift", str(src), str(dst), "--map", "0:1000:10", "--map", "50:1005:10", expect="overlap")
    fails("shift", str(src), str(dst), expect="--map FROM:TO:COUNT")
    fails("shift", str(src), str(dst), "--map", "0:1:1", "--userns", "1:user", expect="not both")
    fails("shift", str(src), str(dst), "--gid-map", "0:1:1", "--userns", "1:user", expect="--gid-map goes with --map")
    fails("shift", str(src), str(dst), "--userns", f"{os.getpid()}:user", expect="initial user namespace")
    fails("shift", str(src), str(dst), "--userns", f"{os.getpid()}:net", expect="not user")
    fails("shift", str(src), str(tmp_path / "missing"), "--map", "0:1:1", expect="no such file or directory")
    fails("shift", str(tmp_path / "nosrc"), str(dst), "--map", "0:1:1", expect="no such file or directory")
    fails("shift", str(src), "--map", "0:1:1", expect="give DST")
    fails("shift", str(src), str(src), "--map", "0:1:1", expect="the same path")
    fails("shift", str(src), str(src / "f"), "--map", "0:1:1", expect="both be directories")
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("")
    fails("shift", str(src), str(full), "--map", "0:1:1", expect="not empty")

    # a filesystem that cannot be idmapped (ramfs has no FS_ALLOW_IDMAP)
    ram, ram_dst = tmp_path / "ram", tmp_path / "ram-dst"
    ram.mkdir()
    ram_dst.mkdir()
    kernel.mount("ramfs", str(ram), "ramfs")
    mounts.insert(0, str(ram))
    fails("shift", str(ram), str(ram_dst), "--map", "0:1000:10", expect="ramfs mounted at")
    assert not idmap.is_mountpoint(str(ram_dst))

    # DST busy: something is mounted there already
    nsfs("shift", str(src), str(dst), "--map", "1000:301000:100")
    fails("shift", str(src), str(dst), "--map", "1000:301000:100", expect="is busy")
    # an idmapped mount cannot be idmapped again
    again = tmp_path / "again"
    again.mkdir()
    mounts.append(str(again))
    fails("shift", str(dst), str(again), "--map", "301000:1000:100", expect="idmapped mount already")

    # unshift: busy, not a mount point, not an idmapped mount
    holder = subprocess.Popen(["sleep", "600"], cwd=dst, start_new_session=True)
    try:
        fails("unshift", str(dst), expect="is busy")
    finally:
        kill_group(holder)
    fails("unshift", str(src), expect="not a mount point")
    fails("unshift", str(ram), expect="not an idmapped mount")
    nsfs("unshift", str(dst))
    fails("unshift", str(dst), expect="not a mount point")

    # option combinations and privileges
    fails("shift", str(src), str(dst), "--chown", "--map", "0:1:1", expect="give no DST")
    fails("shift", str(src), "--resume", expect="go with --chown")
    fails("shift", str(src), str(dst), "--map", "0:1:1", "--journal", "/tmp/x", expect="go with --chown")
    result = nsfs("shift", str(src), str(dst), "--map", "0:1:1", user="65534", check=False)
    assert result.returncode == 1 and "needs root" in result.stderr


def test_unshift_lazy_detaches_a_busy_mount(tree: tuple[Path, Path]) -> None:
    src, dst = tree
    nsfs("shift", str(src), str(dst), "--map", "1000:301000:100")
    holder = subprocess.Popen(["sleep", "600"], cwd=dst, start_new_session=True)
    try:
        nsfs("unshift", "--lazy", str(dst))
        assert not idmap.is_mountpoint(str(dst))
    finally:
        kill_group(holder)


# --- --chown mode ------------------------------------------------------------------------------

ACL_USER_OBJ, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER = 0x01, 0x04, 0x10, 0x20


def acl(*entries: tuple[int, int, int]) -> bytes:
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", t, p, i) for t, p, i in entries)


def test_chown_mode_shifts_ids_acls_setid_bits_caps_and_links(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    os.chown(root, 1000, 1000)
    f = make_file(root / "setuid", 1001, 1002, 0o6755)
    (root / "dir").mkdir()
    os.chown(root / "dir", 1003, 1003)
    os.setxattr(root / "dir", "system.posix_acl_access",
                acl((ACL_USER_OBJ, 7, 0xFFFFFFFF), (0x02, 5, 1004), (ACL_GROUP_OBJ, 5, 0xFFFFFFFF), (0x08, 5, 1005),
                    (ACL_MASK, 7, 0xFFFFFFFF), (ACL_OTHER, 5, 0xFFFFFFFF)))
    capfile = make_file(root / "capped", 1000, 1000, 0o755)
    cap_v3 = struct.pack("<IIIIII", 0x03000000 | 1, 1 << 10, 0, 0, 0, 1000)  # CAP_NET_BIND_SERVICE, rootid 1000
    os.setxattr(capfile, "security.capability", cap_v3)
    os.link(f, root / "hardlink")
    os.symlink("setuid", root / "link")
    os.lchown(root / "link", 1006, 1006)
    make_file(root / "outside-map", 7, 7)
    journal = tmp_path / "j.db"

    out = nsfs("shift", "--chown", str(root), "--map", "1000:301000:100", "--journal", str(journal), "-J")
    status = json.loads(out.stdout)
    assert status["state"] == "done" and status["conflicts"] == 0 and status["done"] == status["total"] == 5
    assert ids(root) == (301000, 301000)
    assert ids(f) == (301001, 301002) and stat.S_IMODE(os.stat(f).st_mode) == 0o6755  # set-id bits put back
    assert ids(root / "link") == (301006, 301006) and os.readlink(root / "link") == "setuid"
    assert ids(root / "outside-map") == (7, 7)
    shifted_acl = os.getxattr(root / "dir", "system.posix_acl_access")
    entries = [struct.unpack_from("<HHI", shifted_acl, o) for o in range(4, len(shifted_acl), 8)]
    assert (0x02, 5, 301004) in entries and (0x08, 5, 301005) in entries
    cap = os.getxattr(capfile, "security.capability")
    assert struct.unpack_from("<I", cap, 20)[0] == 301000 and cap[:20] == cap_v3[:20]

    again = nsfs("shift", "--chown", str(root), "--map", "1000:301000:100", "--journal", str(journal), check=False)
    assert again.returncode == 1 and "shifted already" in again.stderr

    nsfs("unshift", "--chown", str(root), "--journal", str(journal))
    assert ids(root) == (1000, 1000) and ids(f) == (1001, 1002) and stat.S_IMODE(os.stat(f).st_mode) == 0o6755
    assert ids(root / "link") == (1006, 1006)
    assert (0x02, 5, 1004) in [struct.unpack_from("<HHI", os.getxattr(root / "dir", "system.posix_acl_access"), o)
                               for o in range(4, 52, 8)]
    assert os.getxattr(capfile, "security.capability") == cap_v3


def test_chown_mode_records_conflicts_and_leaves_them_alone(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    a = make_file(root / "a", 1000, 1000)
    b = make_file(root / "b", 1001, 1001)
    journal = tmp_path / "j.db"
    db = chown_shift.open_journal(str(journal))
    chown_shift.plan(db, str(root), ((1000, 301000, 100),), ((1000, 301000, 100),))
    db.close()
    os.chown(b, 4242, 4242)  # someone else changes a file between the plan and the run
    result = nsfs("shift", "--chown", str(root), "--resume", "--journal", str(journal), check=False)
    assert result.returncode == 1 and "1 conflicts" in result.stdout and "owned by 4242:4242" in result.stderr
    assert ids(a) == (301000, 301000) and ids(b) == (4242, 4242)


def test_chown_mode_errors(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    for args, expect in (
        (["--resume"], "no journal"),
        (["--rollback"], "no journal"),
        (["--map", "0:1:1", "--journal", str(root / "j.db")], "must be outside the tree"),
        (["--map", "0:1:1", "--recursive"], "apply to idmapped mounts"),
        (["--resume", "--map", "0:1:1"], "give no --map"),
        (["--resume", "--rollback"], "give one of"),
    ):
        journal = [] if "--journal" in args else ["--journal", str(tmp_path / "none.db")]
        result = nsfs("shift", "--chown", str(root), *args, *journal, check=False)
        assert result.returncode == 1 and expect in result.stderr, (args, result.stderr)
    (tmp_path / "junk").write_bytes(b"not a database, " * 100)
    result = nsfs("shift", "--chown", str(root), "--status", "--journal", str(tmp_path / "junk"), check=False)
    assert result.returncode == 1 and "is not a shift journal" in result.stderr
    result = nsfs("shift", "--chown", str(tmp_path / "missing"), "--map", "0:1:1", check=False)
    assert result.returncode == 1 and "not a directory" in result.stderr


@pytest.fixture
def ram(tmp_path: Path, mounts: list[str]) -> Path:
    """A tmpfs of our own (fast to fill, whatever the disk is doing), unmounted at teardown."""
    path = tmp_path / "ram"
    path.mkdir()
    kernel.mount("tmpfs", str(path), "tmpfs", 0, "size=256m")
    mounts.append(str(path))
    return path


def make_tree(root: Path, dirs: int, files: int, uid: int) -> None:
    root.mkdir()
    for d in range(dirs):
        dp = root / f"d{d}"
        dp.mkdir()
        os.chown(dp, uid, uid)
        for i in range(files):
            fd = os.open(dp / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o644)
            os.fchown(fd, uid, uid)
            os.close(fd)


def all_ids(root: Path) -> set[tuple[int, int]]:
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            found.add(ids(os.path.join(dirpath, name)))
    return found


def kill_mid_run(root: Path, journal: Path, *extra: str, sig: int = signal.SIGKILL,
                 result: list[subprocess.Popen[bytes]] | None = None) -> tuple[int, int]:
    """Start a --chown shift, send its process group sig (SIGKILL: it and its workers die) once
    some but not all chunks are recorded as done; return (done, total) as the journal says after."""
    # (SIGINT as a terminal's Ctrl-C finds it: a suite started in the background by a shell without
    # job control inherits it ignored, and Python then installs no KeyboardInterrupt for it)
    proc = subprocess.Popen([sys.executable, "-m", "namespacefs", "shift", "--chown", str(root), "--journal", str(journal),
                             "--jobs", "1", "--no-progress", *extra], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            done = 0
            if journal.exists():
                with contextlib.suppress(sqlite3.OperationalError):
                    db = sqlite3.connect(journal, timeout=1)
                    try:
                        done = db.execute("SELECT coalesce(sum(count), 0) FROM dirs WHERE done = 1").fetchone()[0]
                    finally:
                        db.close()
            if done > 0:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=60)
                break
            assert proc.poll() is None, "the run finished before it could be interrupted"
            time.sleep(0.002)
    finally:
        kill_group(proc)
    if result is not None:
        result.append(proc)
    db = sqlite3.connect(journal)
    try:
        return db.execute("SELECT coalesce(sum(count * done), 0), coalesce(sum(count), 0) FROM dirs").fetchone()
    finally:
        db.close()


def test_interrupted_chown_run_resumes_without_shifting_anything_twice(tmp_path: Path, ram: Path) -> None:
    root, journal = ram / "tree", tmp_path / "j.db"
    make_tree(root, 400, 200, 1000)  # 80,400 entries (and the root, owned by root, outside the map)
    # the map's domain includes its own range: shifting a file twice would turn 2000 into 3000
    done, total = kill_mid_run(root, journal, "--map", "1000:2000:10000")
    assert 0 < done < total == 400 * 201
    status = chown_shift.status(str(root), str(journal))
    assert status.state == "running"
    assert all_ids(root) == {(1000, 1000), (2000, 2000)}  # half-shifted, and every file recorded

    refused = nsfs("shift", "--chown", str(root), "--map", "1000:2000:10000", "--journal", str(journal), check=False)
    assert refused.returncode == 1 and "--resume" in refused.stderr
    out = nsfs("shift", "--chown", str(root), "--resume", "--journal", str(journal), "-J")
    status_after = json.loads(out.stdout)
    assert status_after["state"] == "done" and status_after["done"] == total and status_after["conflicts"] == 0
    assert all_ids(root) == {(2000, 2000)}


def test_interrupted_chown_run_rolls_back(tmp_path: Path, ram: Path) -> None:
    root, journal = ram / "tree", tmp_path / "j.db"
    make_tree(root, 400, 200, 1000)
    done, total = kill_mid_run(root, journal, "--map", "1000:2000:10000")
    assert 0 < done < total
    nsfs("shift", "--chown", str(root), "--rollback", "--journal", str(journal))
    assert all_ids(root) == {(1000, 1000)}
    assert chown_shift.status(str(root), str(journal)).state == "rolled-back"


def test_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    make_tree(root, 5, 10, 1000)
    main, sub = os.openpty()
    try:
        result = subprocess.run([sys.executable, "-m", "namespacefs", "shift", "--chown", str(root), "--map", "1000:2000:1",
                                 "--journal", str(tmp_path / "j.db")], stderr=sub, stdout=subprocess.PIPE, timeout=60)
        os.close(sub)
        sub = -1
        shown = b""
        with contextlib.suppress(OSError):
            while chunk := os.read(main, 4096):
                shown += chunk
    finally:
        os.close(main)
        if sub >= 0:
            os.close(sub)
    assert result.returncode == 0
    assert b"shifting [" in shown and b"100% 55/55 files" in shown


def test_ctrl_c_stops_cleanly_and_the_run_resumes(tmp_path: Path, ram: Path) -> None:
    root, journal = ram / "tree", tmp_path / "j.db"
    make_tree(root, 400, 200, 1000)
    procs: list[subprocess.Popen[bytes]] = []
    done, total = kill_mid_run(root, journal, "--map", "1000:2000:10000", sig=signal.SIGINT, result=procs)
    assert 0 < done < total
    (proc,) = procs
    err = proc.stderr.read().decode() if proc.stderr else ""
    assert proc.returncode == 130 and "interrupted" in err and "--resume" in err and "Traceback" not in err
    nsfs("shift", "--chown", str(root), "--resume", "--journal", str(journal))
    assert all_ids(root) == {(2000, 2000)}


def test_a_run_interrupted_while_planning_is_planned_again(tmp_path: Path) -> None:
    root, journal = tmp_path / "tree", tmp_path / "j.db"
    make_tree(root, 3, 3, 1000)
    db = chown_shift.open_journal(str(journal))
    chown_shift.plan(db, str(root), ((1000, 2000, 1),), ((1000, 2000, 1),))
    db.db.execute("DELETE FROM dirs WHERE id > 2")  # as if killed before the plan committed in full
    db.set_meta(state="planning")
    db.close()
    assert all_ids(root) == {(1000, 1000)}  # nothing is touched while planning
    out = json.loads(nsfs("shift", "--chown", str(root), "--resume", "--journal", str(journal), "-J").stdout)
    assert out["state"] == "done" and out["total"] == 12
    assert all_ids(root) == {(2000, 2000)}

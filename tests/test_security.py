"""Safe with hostile input and hostile neighbours (issue 11): every case found by trying the tool as a
hostile user would, each with a test that failed before its fix. Real mounts, real sockets on
127.0.0.1, real unprivileged users (setpriv); nothing is mocked."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import kill_group, nsfs
from namespacefs import syntax
from namespacefs.forking import fork_and_act
from runtimes import Started, nsfs_env, start_bwrap, start_group, started_fixture, wait_for

__all__ = ["started_fixture"]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the hostile cases need root to set up")
NOBODY = "65534"


def one_line_error(result: subprocess.CompletedProcess[str], says: str = "") -> None:
    """Failed, with exactly one line on stderr (`nsfs ...: message`), no traceback."""
    assert result.returncode != 0, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("nsfs"), result.stderr
    assert "Traceback" not in result.stderr
    assert says in result.stderr, result.stderr


def mount_table(*paths: str | Path) -> list[str]:
    """The mounts (root and mountpoint) on or below these paths (others come and go on a shared host)."""
    tops = [str(p) for p in paths]
    with open("/proc/self/mountinfo") as f:
        return sorted(" ".join(line.split()[3:5]) for line in f
                      if any(line.split()[4] == t or line.split()[4].startswith(t.rstrip("/") + "/") for t in tops))


def _inode(pid: int, nstype: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{nstype}").st_ino


# --- 1. mounts only on ordinary files of ordinary filesystems --------------------------------


def test_pin_on_proc_sys_or_dev_is_refused_and_nothing_is_mounted(started: Started) -> None:
    proc = start_group(started, ["unshare", "-u", "sleep", "1000"])
    wait_for(lambda: _inode(proc.pid, "uts") != _inode(os.getpid(), "uts"), what="the new uts namespace")
    places = (("/proc/version", "proc"), ("/sys/kernel/nsfs-test-pin", "sysfs"), ("/dev/nsfs-test-pin", "devtmpfs"),
              ("/sys/fs/cgroup/nsfs-test-pin", "/sys/fs/cgroup"))  # (a tmpfs, but the kernel's tree)
    before = mount_table(*(dest for dest, _ in places))
    try:
        for dest, fs in places:
            result = nsfs("pin", f"{proc.pid}:uts", dest, check=False)
            one_line_error(result, "not an ordinary filesystem")
            assert fs in result.stderr
            assert not os.path.lexists(dest) or dest == "/proc/version"
        assert mount_table(*(dest for dest, _ in places)) == before
    finally:
        _undo_pins([dest for dest, _ in places])
    assert Path("/proc/version").read_text().startswith("Linux")  # every process can still read it


def _undo_pins(paths: list[str]) -> None:
    """Teardown after a failure: unmount a pin this test made (an nsfs mount exactly there), remove its file."""
    for path in paths:
        with open("/proc/self/mountinfo") as f:
            pinned = any(line.split()[4] == path and " - nsfs " in line for line in f)
        if pinned:
            subprocess.run(["umount", "-l", path], check=False)
            if path != "/proc/version":
                with contextlib.suppress(OSError):
                    os.unlink(path)


def test_pin_never_follows_a_symlink_planted_at_its_path(started: Started, tmp_path: Path) -> None:
    proc = start_group(started, ["unshare", "-u", "sleep", "1000"])
    wait_for(lambda: _inode(proc.pid, "uts") != _inode(os.getpid(), "uts"), what="the new uts namespace")
    (tmp_path / "empty").write_text("")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "empty")
    before = mount_table(tmp_path)
    try:
        one_line_error(nsfs("pin", f"{proc.pid}:uts", str(link), check=False), "symbolic link")
        assert mount_table(tmp_path) == before
    finally:
        _undo_pins([str(tmp_path / "empty"), str(link)])


def test_shift_and_mount_refuse_a_target_on_devtmpfs(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    dst = Path(f"/dev/nsfs-test-{os.getpid()}")
    dst.mkdir()
    try:
        before = mount_table(dst)
        one_line_error(nsfs("shift", "--map", "0:100000:65536", str(src), str(dst), check=False), "devtmpfs")
        one_line_error(nsfs("mount", str(dst), check=False), "devtmpfs")
        assert mount_table(dst) == before
    finally:
        if mount_table(dst):  # (made before the fix: undo it)
            subprocess.run(["umount", "-l", str(dst)], check=False)
        dst.rmdir()


# --- 2. planted token files, socket directories and names databases -----------------------------


def _serve(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "namespacefs", "serve", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "NSFS_DB": str(tmp / "names.db")})


def test_the_daemon_refuses_a_token_file_or_socket_directory_someone_else_controls(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # like /tmp
    one_line_error(_serve(tmp_path, "--socket", str(shared / "api.sock")), "writable by others")
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    planted = mine / "token"
    planted.write_text("nobodys-token\n")
    os.chown(planted, 65534, 65534)
    os.chmod(planted, 0o600)
    one_line_error(_serve(tmp_path, "--socket", str(mine / "api.sock"), "--listen", "127.0.0.1:1",
                          "--token-file", str(planted)), "owned by uid 65534")
    os.chown(planted, 0, 0)
    os.chmod(planted, 0o644)
    one_line_error(_serve(tmp_path, "--socket", str(mine / "api.sock"), "--listen", "127.0.0.1:1",
                          "--token-file", str(planted)), "can be read by others")
    os.chmod(planted, 0o600)
    planted.unlink()
    planted.symlink_to(tmp_path / "elsewhere")
    one_line_error(_serve(tmp_path, "--socket", str(mine / "api.sock"), "--listen", "127.0.0.1:1",
                          "--token-file", str(planted)), "symbolic link")
    assert not (tmp_path / "elsewhere").exists()


def _free_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return int(port)


class Served:
    """`nsfs serve --listen` in a socket directory that does not exist yet."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "new" / "run"
        self.socket = str(self.dir / "api.sock")
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "namespacefs", "serve", "--socket", self.socket, "--interval", "5",
             "--listen", f"127.0.0.1:{self.port}"], start_new_session=True, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "NSFS_DB": str(tmp / "names.db")})
        deadline = time.monotonic() + 120
        while not self.answers():
            assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else "died"
            assert time.monotonic() < deadline, "the daemon did not start"
            time.sleep(0.2)
        self.token = (self.dir / "token").read_text().strip()

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"GET /api/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                return s.recv(12).startswith(b"HTTP/1.1")
        except OSError:
            return False

    def get(self, path: str, token: str | None = None) -> tuple[int, Any]:
        head = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        if token:
            head += f"Authorization: Bearer {token}\r\n"
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as s:
            s.sendall((head + "\r\n").encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        status_line, _, rest = data.partition(b"\r\n")
        body = rest.partition(b"\r\n\r\n")[2]
        return int(status_line.split()[1]), json.loads(body or b"null")

    def stop(self) -> None:
        kill_group(self.proc)


@pytest.fixture(scope="module")
def served() -> Any:
    """The daemon, in a directory every user can reach (so that a test can open its socket up)."""
    top = Path(f"/tmp/nsfs-served-{os.getpid()}")
    top.mkdir(mode=0o755)
    os.chmod(top, 0o755)
    try:
        daemon = Served(top)
        yield daemon
        daemon.stop()
    finally:
        subprocess.run(["rm", "-rf", str(top)], check=False)


def test_serve_listen_with_a_new_socket_directory_makes_it_and_its_token(served: Served) -> None:
    st = os.stat(served.dir)
    assert st.st_uid == 0 and st.st_mode & 0o077 == 0
    token = os.stat(served.dir / "token")
    assert token.st_mode & 0o077 == 0
    assert served.get("/api/status")[0] == 401
    assert served.get("/api/status", served.token)[0] == 200


def test_a_names_database_someone_else_controls_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "names.db"
    nsfs("rename", "--db", str(db), f"{os.getpid()}:uts", "host-uts-test")  # a good one first
    os.chown(db, 65534, 65534)
    one_line_error(nsfs("rename", "--db", str(db), f"{os.getpid()}:uts", "other", check=False), "owned by uid 65534")
    os.chown(db, 0, 0)
    os.chmod(db, 0o666)
    one_line_error(nsfs("rename", "--db", str(db), f"{os.getpid()}:uts", "other", check=False), "writable by others")
    os.chmod(db, 0o644)
    listed = nsfs("names", "--db", str(db), "-r", "-n", "-o", "NAME")
    assert "host-uts-test" in listed.stdout.split()


def _about_names(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "names database" in line]


def test_ls_with_dev_null_as_database_lists_no_lock_holders(tmp_path: Path) -> None:
    result = nsfs("ls", "--db", "/dev/null", "-n", "-r")
    assert "held by" not in result.stderr and "pid " not in result.stderr
    assert len(_about_names(result.stderr)) == 1 and "not a regular file" in result.stderr
    assert result.stdout  # the namespaces are listed, with default names


def test_an_exclusively_locked_database_costs_ls_its_names_not_three_seconds(tmp_path: Path) -> None:
    db = tmp_path / "names.db"
    nsfs("rename", "--db", str(db), f"{os.getpid()}:uts", "locked-uts")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None);"
        "c.execute('PRAGMA locking_mode=EXCLUSIVE'); c.execute('BEGIN EXCLUSIVE'); print('held', flush=True);"
        "time.sleep(60)"), str(db)], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        start = time.monotonic()
        result = nsfs("ls", "--db", str(db), "-n", "-r", "-o", "NS,NAME", env={**os.environ, "NSFS_NO_DAEMON": "1"})
        took = time.monotonic() - start
        assert len(_about_names(result.stderr)) == 1 and "locked" in result.stderr, result.stderr
        assert result.stdout and "locked-uts" not in result.stdout
        assert took < 2.5, took  # the scan itself is well under a second; the 3 s were the lock wait
    finally:
        kill_group(holder)


def _damaged_db(tmp_path: Path) -> Path:
    """A names database with renames whose data pages are overwritten (the header still reads fine)."""
    db = tmp_path / "names.db"
    nsfs("rename", "--db", str(db), f"{os.getpid()}:uts", "before-damage")
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.close()
    page = 4096
    with open(db, "r+b") as f:
        f.seek(page)  # page 2 onwards: the tables, not the header
        f.write(os.urandom(page * 2))
    return db


def test_a_container_rename_never_writes_into_a_damaged_database(tmp_path: Path, started: Started) -> None:
    _, _init = start_bwrap(started, "damaged", ["sleep", "1000"])
    db = _damaged_db(tmp_path)
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    env = nsfs_env(tmp_path / "no-runc", db)
    result = nsfs("containers", "--db", str(db), "--rename", "damaged", "newname", check=False, env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith("nsfs containers:") and "damaged" in result.stderr
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest
    one_line_error(nsfs("rename", "--db", str(db), f"{os.getpid()}:uts", "other", check=False), "damaged")
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest


# --- 3/4. kill leaves stopped processes stopped ---------------------------------------------------


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rpartition(b")")[2].split()[0].decode()


def test_kill_with_usr1_leaves_a_stopped_process_stopped(tmp_path: Path, started: Started) -> None:
    _, init = start_bwrap(started, "stopped", ["sh", "-c", "trap 'echo usr1' USR1; while :; do sleep 0.2; done"])
    os.kill(init, signal.SIGSTOP)
    wait_for(lambda: _state(init) == "T" or None, what="the stopped shell")
    env = nsfs_env(tmp_path / "no-runc", tmp_path / "names.db")
    report = json.loads(nsfs("kill", "stopped", "-s", "USR1", "-J", env=env).stdout)
    assert init in report["pids"]
    time.sleep(0.3)
    assert _state(init) == "T"  # the user's stop stands
    running = [p for p in report["pids"] if p != init and os.path.exists(f"/proc/{p}")]
    assert all(_state(p) != "T" for p in running)  # what we stopped ourselves runs again
    nsfs("kill", "stopped", "-s", "TERM", env=env)  # an ending signal may thaw it, so that it can end
    wait_for(lambda: not os.path.exists(f"/proc/{init}") or _state(init) == "Z" or None, what="the shell to end")


# --- 5. no tracebacks, and a forked child never returns ------------------------------------------


@pytest.mark.parametrize("argv, says", [
    (["ls", "²"], ""),
    (["ls", "٣:net"], ""),
    (["show", "id:١٢"], ""),
    (["rename", f"{os.getpid()}:uts", "\udcff"], "UTF-8"),
    (["rename", f"{os.getpid()}:uts", "a\x85b"], "control"),
    (["rename", f"{os.getpid()}:uts", "a\u202eb"], "RIGHT-TO-LEFT OVERRIDE"),
    (["rename", f"{os.getpid()}:uts", "²"], "cannot be a number"),
    (["mount", "--ready-fd", "99", "--foreground", "/run/nsfs-never"], "--ready-fd 99"),
    (["shift", "--map", "0:100_000:1", "/tmp", "/tmp"], "decimal"),
    (["shift", "--map", "0:١٠٠:1", "/tmp", "/tmp"], "decimal"),
    (["serve", "--listen", "127.0.0.1:19_716"], "loopback HOST"),
    (["serve", "--listen", ""], "loopback HOST"),
    (["serve", "--socket", ""], "empty path"),
    (["watch", "--socket", ""], "empty path"),
    (["containers", "--forget", ""], "empty container name"),
    (["ls", "-p", "1_0"], "invalid int value"),
    (["enter", "-S", "٣", "1", "--", "true"], "invalid int value"),
    (["kill", "--dry-run", "-s", "١", "nsfs-no-such-container"], "unknown signal"),
])
def test_bad_input_gets_one_line_and_no_traceback(argv: list[str], says: str, tmp_path: Path) -> None:
    env = {**os.environ, "NSFS_DB": str(tmp_path / "names.db")}
    one_line_error(nsfs(*argv, check=False, env=env), says)


def test_enter_with_an_empty_command_name_never_returns_into_the_cli(started: Started) -> None:
    proc = start_group(started, ["unshare", "-u", "sleep", "1000"])
    wait_for(lambda: _inode(proc.pid, "uts") != _inode(os.getpid(), "uts"), what="the new uts namespace")
    result = nsfs("enter", str(proc.pid), "-u", "--", "", check=False)
    one_line_error(result, "empty command name")
    assert result.stdout == ""


def test_a_forked_child_never_returns_whatever_it_does(tmp_path: Path) -> None:
    marker = tmp_path / "returned"
    for act, status in ((lambda: 7, 7), (lambda: None, 0), (lambda: sys.exit(3), 1), (lambda: 1 / 0, 1),
                        (lambda: (_ for _ in ()).throw(KeyboardInterrupt), 1), (lambda: "text", 1)):
        pid = fork_and_act(act)
        if pid == 0:  # only a child that returned gets here
            marker.write_text("a child came back")
            os._exit(99)
        _, raw = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(raw) == status
    assert not marker.exists()


def test_the_number_parser_takes_ascii_digits_only() -> None:
    assert syntax.number("4026531840") == 4026531840
    for bad in ("", "²", "٣", "1_000", " 7", "7\n", "+7", "-7", "0x10", "1" * 21, "\udcff"):
        assert not syntax.is_number(bad)
        with pytest.raises(ValueError):
            syntax.number(bad)
    with pytest.raises(ValueError, match="between 1 and 65535"):
        syntax.number("65536", "the port", 1, 65535)


def test_the_name_validator_refuses_what_would_not_print_as_itself() -> None:
    assert syntax.name_problem("web-1") is None and syntax.name_problem("café") is None
    for bad in ("", ".", "..", "a/b", "a\0b", "a\tb", "a\x85b", "a\u202eb", "a\u2028b", "\udcff", "٣٣", " a",
                "x" * 256):
        assert syntax.name_problem(bad) is not None, bad


# --- 6. names import: history, --dry-run, argument order, limits ---------------------------------


def _export_of(tmp_path: Path, db: Path, name: str) -> Path:
    nsfs("rename", "--db", str(db), f"{os.getpid()}:uts", name)
    out = tmp_path / f"{name}.json"
    nsfs("names", "--db", str(db), "export", str(out))
    return out


def test_names_import_over_a_name_keeps_a_history_row_and_dry_run_says_so(tmp_path: Path) -> None:
    db = tmp_path / "names.db"
    export = _export_of(tmp_path, db, "imported-name")
    nsfs("rename", "--db", str(db), f"{os.getpid()}:uts", "current-name")
    dry = nsfs("names", "import", "--dry-run", str(export), "--db", str(db))  # options between the positionals
    assert "would name" in dry.stdout and "replacing its name 'current-name'" in dry.stdout
    history = json.loads(nsfs("names", "--db", str(db), "--history", "-J").stdout)["history"]
    assert [h["name"] for h in history if h["reason"] == "renamed"] == ["imported-name"]  # the rename above
    nsfs("names", "--db", str(db), "import", str(export))
    history = json.loads(nsfs("names", "--db", str(db), "--history", "-J").stdout)["history"]
    assert [h["name"] for h in history if h["reason"] == "renamed"] == ["imported-name", "current-name"]


def test_renames_in_one_user_namespace_keep_a_bounded_history(tmp_path: Path) -> None:
    from namespacefs import core, names

    db = str(tmp_path / "names.db")
    snap = core.snapshot(fresh=True, db=db)
    ns = snap.namespace_of(os.getpid(), "uts")
    assert ns is not None
    for i in range(names.MAX_REPLACED_PER_SCOPE + 20):
        names.rename(snap, ns, f"churn-{i}", db)
    kept = [h for h in names.history(db) if h["reason"] == "renamed"]
    assert len(kept) == names.MAX_REPLACED_PER_SCOPE
    assert kept[-1]["name"] == f"churn-{names.MAX_REPLACED_PER_SCOPE + 18}"  # the newest are kept


def test_names_import_refuses_deep_nesting_binary_pid_maps_and_huge_files(tmp_path: Path) -> None:
    db = tmp_path / "names.db"
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    one_line_error(nsfs("names", "--db", str(db), "import", str(deep), check=False), "nested too deeply")
    export = _export_of(tmp_path, db, "for-the-map")
    binary = tmp_path / "pids.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    one_line_error(nsfs("names", "--db", str(db), "import", str(export), "--pid-map-file", str(binary), check=False),
                   "not a text file")
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as f:
        f.truncate(65 << 20)  # sparse: costs no disk
    result = nsfs("names", "--db", str(db), "import", str(huge), check=False)
    one_line_error(result, "larger than")


# --- 7. the HTTP server -------------------------------------------------------------------------


def _until_closed(s: socket.socket) -> None:
    """Read until the server closes the connection (EOF or a reset); socket.timeout if it never does."""
    try:
        while s.recv(65536):
            pass
    except ConnectionResetError:
        pass


def test_slow_clients_are_cut_off_within_seconds(served: Served) -> None:
    from namespacefs.service.daemon import REQUEST_TIMEOUT

    start = time.monotonic()
    idle = [socket.create_connection(("127.0.0.1", served.port)) for _ in range(30)]
    dribbling = [socket.create_connection(("127.0.0.1", served.port)) for _ in range(30)]
    try:
        for s in dribbling:
            s.sendall(b"GET /api/status HTTP/1.1\r\nHost: x\r\n")  # a head that never ends
        time.sleep(1)
        for s in dribbling:
            s.sendall(b"X-Slow: 1\r\n")  # a byte now and then resets no deadline
        for s in [*idle, *dribbling]:
            s.settimeout(max(0.1, start + REQUEST_TIMEOUT + 3 - time.monotonic()))
            _until_closed(s)  # (socket.timeout here: held open)
        assert time.monotonic() - start < REQUEST_TIMEOUT + 3
    finally:
        for s in [*idle, *dribbling]:
            s.close()
    assert served.answers()  # and the daemon serves the next client


def test_a_path_selector_never_tells_which_files_exist(served: Served) -> None:
    answers = []
    for path in ("/etc/shadow", "/etc/nsfs-no-such-file", "/proc/1/ns/net", "/root"):
        status, body = served.get(f"/api/namespaces/{path}", served.token)
        answers.append((status, body["detail"].replace(path, "PATH")))
    assert len(set(answers)) == 1 and answers[0][0] == 404, answers


# --- 3. unprivileged readers: the filesystem with --allow-other, the CLI, the socket, the port ----

READER = r"""
import json, os, sys
m, paths = sys.argv[1], json.loads(sys.argv[2])
out = {}
for p in paths:
    try:
        with open(os.path.join(m, p)) as f:
            out[p] = f.read()
    except OSError as e:
        out[p] = e.errno
pids = [int(x) for x in sys.argv[3].split()]
readable = []
for pid in pids:
    try:
        os.stat(f"/proc/{pid}/ns/pid")
        readable.append(pid)
    except OSError:
        pass
print(json.dumps({"read": out, "readable": readable}))
"""


@pytest.fixture(scope="module")
def public_mnt() -> Any:
    """namespacefs with --allow-other on a mountpoint every user can reach (a 0755 directory in /tmp)."""
    top = Path(f"/tmp/nsfs-security-{os.getpid()}")
    top.mkdir(mode=0o755)
    mountpoint = top / "mnt"
    mountpoint.mkdir()
    os.chmod(top, 0o755)
    log = open(top / "server.log", "w")  # noqa: SIM115
    server = subprocess.Popen([sys.executable, "-m", "namespacefs", "mount", "--foreground", "--allow-other",
                               "--db", str(top / "names.db"), str(mountpoint)], start_new_session=True, stderr=log)
    log.close()
    try:
        wait_for(lambda: (mountpoint / "uts").exists() or server.poll() is not None or None, what="the mount")
        assert server.poll() is None, (top / "server.log").read_text()
        yield mountpoint
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        subprocess.run(["umount", "-l", str(mountpoint)], check=False, capture_output=True)
        assert "Traceback" not in (top / "server.log").read_text()
        subprocess.run(["rm", "-rf", str(top)], check=False)


def _read_as(argv_prefix: list[str], mnt: Path, paths: list[str], pids: list[int]) -> dict[str, Any]:
    out = subprocess.run([*argv_prefix, sys.executable, "-c", READER, str(mnt), json.dumps(paths),
                          " ".join(map(str, pids))], capture_output=True, text=True, timeout=60, cwd="/")
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]


def _rootless(started: Started, hostname: str) -> int:
    """A rootless container of nobody's (its own user and uts namespace); the pid of its command."""
    proc = start_group(started, [*AS_NOBODY, "unshare", "-U", "-r", "--uts", "sh", "-c",
                                 f"hostname {hostname} && exec sleep 1000"])
    wait_for(lambda: Path(f"/proc/{proc.pid}/comm").read_text() == "sleep\n" or None, what="the rootless sleep")
    return proc.pid


def test_allow_other_shows_nobody_what_the_kernel_shows_nobody(public_mnt: Path, started: Started,
                                                                tmp_path: Path) -> None:
    _, box = start_bwrap(started, "nsfs-secret-box", ["sleep", "1000"])
    mine = _rootless(started, "nsfs-mine-box")
    # nobody's process in a uts namespace root made: nobody may see it (ptrace) but not enter it
    lent = start_group(started, ["unshare", "--uts", "sh", "-c", f"hostname nsfs-lent-box && exec {' '.join(AS_NOBODY)} "
                                 "sleep 1000"])
    wait_for(lambda: Path(f"/proc/{lent.pid}/comm").read_text() == "sleep\n" or None, what="the lent sleep")
    box_uts, box_mnt, mine_uts = _inode(box, "uts"), _inode(box, "mnt"), _inode(mine, "uts")
    lent_uts = _inode(lent.pid, "uts")
    host_uts = _inode(os.getpid(), "uts")
    host_pidns = _inode(os.getpid(), "pid")
    wait_for(lambda: all((public_mnt / "uts" / str(i)).exists() for i in (mine_uts, box_uts, lent_uts)) or None,
             what="all three in the filesystem")
    paths = [f"uts/{lent_uts}/hostname", f"uts/{lent_uts}/tasks", f"uts/{host_uts}/hostname",
             f"uts/{box_uts}/hostname", f"uts/{box_uts}/uname", f"uts/{box_uts}/tasks", f"uts/{box_uts}/holders",
             f"mnt/{box_mnt}/mountinfo", f"uts/{mine_uts}/hostname", f"uts/{mine_uts}/tasks", f"pid/{host_pidns}/tasks"]
    as_root = {p: (public_mnt / p).read_text() for p in paths}
    assert as_root[f"uts/{box_uts}/hostname"] == "nsfs-secret-box\n" and str(box) in as_root[f"uts/{box_uts}/tasks"]
    host_pids = [int(x) for x in as_root[f"pid/{host_pidns}/tasks"].split()]
    got = _read_as(AS_NOBODY, public_mnt, paths, host_pids)
    read = got["read"]
    import errno

    # denied: the box's namespaces (it cannot open them), so what only entering (hostname) or
    # ptrace-reading (mountinfo, members, holders) would tell
    denied = (errno.ENOENT, errno.EACCES, errno.EPERM)
    for path in (f"uts/{box_uts}/hostname", f"uts/{box_uts}/uname", f"mnt/{box_mnt}/mountinfo",
                 f"uts/{box_uts}/tasks", f"uts/{box_uts}/holders"):
        assert read[path] in denied, (path, read[path])
    # seen but not entered: a process of its own in a uts namespace root owns
    assert read[f"uts/{lent_uts}/tasks"] == f"{lent.pid}\n" and read[f"uts/{lent_uts}/hostname"] == errno.EACCES
    # allowed: its own container's hostname (it may enter it), the one it is in, its own processes
    assert read[f"uts/{mine_uts}/hostname"] == "nsfs-mine-box\n"
    assert read[f"uts/{host_uts}/hostname"] == f"{socket.gethostname()}\n"
    assert read[f"uts/{mine_uts}/tasks"] == f"{mine}\n"
    # and the members of the host's pid namespace it is shown are exactly those the kernel lets it read
    shown = {int(x) for x in read[f"pid/{host_pidns}/tasks"].split()}
    alive = {p for p in host_pids if os.path.exists(f"/proc/{p}")}
    assert shown & alive == set(got["readable"]) & alive
    assert mine in shown and box not in shown and os.getpid() not in shown
    # and the listing holds only namespaces it could open itself (and their owners)
    listed = subprocess.run([*AS_NOBODY, sys.executable, "-c", f"import os; print(*os.listdir({str(public_mnt / 'uts')!r}))"],
                            capture_output=True, text=True, timeout=60, cwd="/")
    assert listed.returncode == 0, listed.stderr
    assert str(mine_uts) in listed.stdout.split() and str(box_uts) not in listed.stdout.split()


def test_a_reader_in_an_unprivileged_user_namespace_gets_only_its_own(public_mnt: Path, started: Started,
                                                                      tmp_path: Path) -> None:
    _, box = start_bwrap(started, "nsfs-secret-box2", ["sleep", "1000"])
    box_uts = _inode(box, "uts")
    wait_for(lambda: (public_mnt / "uts" / str(box_uts)).exists() or None, what="the box in the filesystem")
    script = (READER.replace('print(json.dumps({"read": out, "readable": readable}))',
                                     'out["me"] = os.stat("/proc/self/ns/uts").st_ino\n'
                                     'out["mine"] = open(f"{m}/uts/{out[\'me\']}/hostname").read()\n'
                                     'out["types"] = sorted(os.listdir(f"{m}/uts"))\n'
                                     'print(json.dumps({"read": out, "readable": readable}))'))
    out = subprocess.run([*AS_NOBODY, "unshare", "-U", "-r", "--uts", "sh", "-c",
                          'hostname nsfs-inside && exec "$0" -c "$1" "$2" "$3" "$4"', sys.executable, script,
                          str(public_mnt), json.dumps([f"uts/{box_uts}/hostname"]), str(box)],
                         capture_output=True, text=True, timeout=60, cwd="/")
    assert out.returncode == 0, out.stderr
    read = json.loads(out.stdout)["read"]
    assert read["mine"] == "nsfs-inside\n"  # what `hostname` gives it in there
    assert read["types"] == [str(read["me"])]  # only the uts namespace its user namespace owns
    assert isinstance(read[f"uts/{box_uts}/hostname"], int)  # denied (not even listed)
    assert json.loads(out.stdout)["readable"] == []  # (and the kernel agrees: root's box is not its to read)


def test_the_cli_as_nobody_shows_what_nobody_may_see(started: Started) -> None:
    _, box = start_bwrap(started, "nsfs-secret-box3", ["sleep", "1000"])
    mine = _rootless(started, "nsfs-mine-box3")
    env = {**os.environ, "NSFS_NO_DAEMON": "1", "NSFS_DB": "/nonexistent/names.db"}
    listed = json.loads(nsfs("ls", "-J", "-t", "uts", user=NOBODY, env=env).stdout)
    inodes = {ns["inode"] for ns in listed["namespaces"]}
    assert _inode(mine, "uts") in inodes and _inode(box, "uts") not in inodes
    shown = nsfs("show", str(_inode(box, "uts")), user=NOBODY, check=False, env=env)
    one_line_error(shown, "")


def test_nobody_cannot_use_the_socket_or_the_port_without_the_token(served: Served) -> None:
    code = (f"import socket, sys\ns = socket.socket(socket.AF_UNIX)\n"
            f"try:\n    s.connect({served.socket!r}); print('connected')\n"
            f"except OSError as e:\n    print(e.errno)\n"
            f"try:\n    open({str(served.dir / 'token')!r}).read(); print('read the token')\n"
            f"except OSError as e:\n    print(e.errno)\n")
    out = subprocess.run([*AS_NOBODY, sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd="/")
    import errno

    assert out.stdout.split() == [str(errno.EACCES), str(errno.EACCES)], out
    assert served.get("/api/snapshot")[0] == 401
    assert served.get("/api/snapshot", "not-the-token")[0] == 401


def test_a_user_let_in_on_the_socket_gets_only_its_share_of_the_api(served: Served, started: Started) -> None:
    _, box = start_bwrap(started, "nsfs-secret-box4", ["sleep", "1000"])
    mine = _rootless(started, "nsfs-mine-box4")
    code = (f"import json, socket, sys\n"
            f"def get(path):\n"
            f"    s = socket.socket(socket.AF_UNIX); s.connect({served.socket!r})\n"
            f"    s.sendall(f'GET {{path}} HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n'.encode())\n"
            f"    data = b''\n"
            f"    while chunk := s.recv(65536): data += chunk\n"
            f"    head, _, body = data.partition(b'\\r\\n\\r\\n')\n"
            f"    return int(head.split()[1]), body\n"
            f"status, body = get('/api/snapshot')\n"
            f"snap = json.loads(body) if status == 200 else None\n"
            f"import os\n"
            f"def readable(pid):\n"
            f"    try:\n"
            f"        os.stat(f'/proc/{{pid}}/ns/pid'); return True\n"
            f"    except OSError:\n"
            f"        return False\n"
            f"pids = sorted(p['pid'] for p in snap['processes']) if snap else []\n"
            f"print(json.dumps({{'snapshot': status, 'containers': get('/api/containers')[0], 'pids': pids,\n"
            f"                  'denied': [p for p in pids if os.path.exists(f'/proc/{{p}}') and not readable(p)]}}))\n")
    os.chmod(served.dir, 0o755)  # the socket opened up by an admin: the API must still apply the rule
    os.chmod(served.socket, 0o666)
    try:
        deadline = time.monotonic() + 30
        while True:  # (the daemon's snapshot must have the test's processes first)
            out = subprocess.run([*AS_NOBODY, sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                                 cwd="/")
            assert out.returncode == 0, out.stderr
            got = json.loads(out.stdout)
            if mine in (got["pids"] or []) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        os.chmod(served.socket, 0o600)
        os.chmod(served.dir, 0o700)
    assert got["snapshot"] == 200 and got["containers"] == 403
    assert mine in got["pids"] and box not in got["pids"] and os.getpid() not in got["pids"]
    assert got["denied"] == []  # every process it was shown, the kernel lets it read too


RENAMER = r"""
import os, sys
m = sys.argv[1]
me = {t: os.stat(f"/proc/self/ns/{t}").st_ino for t in ("user", "uts")}
user = open(f"{m}/user/{me['user']}/name").read().strip()
old = open(f"{m}/uts/{me['uts']}/name").read().strip()
results = []
for i in range(14):
    new = f"churn-{i}"
    try:
        os.rename(f"{m}/tree/{user}/{old}", f"{m}/tree/{user}/{new}")
        results.append("ok")
        old = new
    except OSError as e:
        results.append(e.errno)
print(" ".join(map(str, results)))
"""


def test_unprivileged_renames_through_mv_are_rate_limited(public_mnt: Path) -> None:
    import errno

    from namespacefs.fs.operations import RENAME_BURST

    out = subprocess.run([*AS_NOBODY, "unshare", "-U", "-r", "--uts", sys.executable, "-c", RENAMER, str(public_mnt)],
                         capture_output=True, text=True, timeout=120, cwd="/")
    assert out.returncode == 0, out.stderr
    results = out.stdout.split()
    assert results[:RENAME_BURST] == ["ok"] * RENAME_BURST  # its own namespace: allowed...
    assert set(results[RENAME_BURST:]) == {str(errno.EAGAIN)}  # ...but not without bound


def test_a_container_rename_keeps_the_name_it_replaces(tmp_path: Path, started: Started) -> None:
    _, _init = start_bwrap(started, "renamed-twice", ["sleep", "1000"])
    db = tmp_path / "names.db"
    env = nsfs_env(tmp_path / "no-runc", db)
    nsfs("containers", "--rename", "renamed-twice", "first-name", env=env)
    nsfs("containers", "--rename", "first-name", "second-name", env=env)
    nsfs("containers", "--forget", "second-name", env=env)
    conn = sqlite3.connect(db)
    try:
        kept = [name for (name,) in conn.execute("SELECT name FROM containers_names_history ORDER BY seq")]
    finally:
        conn.close()
    assert kept == ["first-name", "second-name"]


def test_columns_in_another_scripts_digits_is_no_crash() -> None:
    result = nsfs("ls", "-n", env={**os.environ, "COLUMNS": "٨٠", "NSFS_NO_DAEMON": "1"})
    assert result.stdout and "internal error" not in result.stderr


def test_shift_chown_with_a_directory_as_journal_is_one_line(tmp_path: Path) -> None:
    src = tmp_path / "tree"
    src.mkdir()
    (src / "file").write_text("x")
    before = os.stat(src / "file")
    result = nsfs("shift", "--chown", "--map", "0:100000:10", "--journal", str(tmp_path), str(src), check=False)
    one_line_error(result, "is a directory")
    after = os.stat(src / "file")
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)  # nothing was shifted


def test_a_reader_unmapped_in_its_user_namespace_sees_nothing_never_everything(started: Started) -> None:
    from namespacefs import access, core

    proc = start_group(started, [*AS_NOBODY, "unshare", "-U", "sleep", "1000"])  # no map: its uid is unmapped inside
    wait_for(lambda: _inode(proc.pid, "user") != _inode(os.getpid(), "user") or None, what="the user namespace")
    snap = core.snapshot(fresh=True)
    got = access.access_of(access.Reader(65534, 65534, proc.pid), snap)
    assert got.pids == frozenset() and got.entered is not None and not access.may_see(
        access.Reader(65534, 65534, proc.pid), os.getpid(), snap)


def test_checkpoint_fails_when_criu_writes_no_image(tmp_path: Path, started: Started) -> None:
    _, _init = start_bwrap(started, "no-image", ["sleep", "1000"])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "criu"  # says yes to everything and writes nothing: its exit status alone is no proof
    fake.write_text("#!/bin/sh\n[ \"$1\" = --version ] && echo 'Version: 9.9'\nexit 0\n")
    fake.chmod(0o755)
    env = {**nsfs_env(tmp_path / "no-runc", tmp_path / "names.db"), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    out_dir = tmp_path / "ckpt"
    result = nsfs("checkpoint", "no-image", str(out_dir), check=False, env=env)
    one_line_error(result, "no process images were written")
    assert (out_dir / "topology.json").exists()  # what could be saved is saved, and said so
    assert "exited 0 but wrote no process image" in json.loads((out_dir / "criu.json").read_text())["message"]

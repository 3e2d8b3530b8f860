"""`nsfs ls` with a daemon running prints what the daemon rendered (GET /api/ls), and that is byte
for byte what a scan of its own prints, for every option the daemon is given. The namespaces
compared are ours (other work on the machine changes the rest): each run selects them with -Q, or
compares only their lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from namespacefs.cli import command_parser
from namespacefs.cli.remote import LS_LOCAL_ONLY, LS_OPTIONS
from test_service import Daemon, Holder

QUIET = ("--interval", "600", "--sweep", "600")


class Host:
    """The daemon, and namespaces of ours: A in new uts, ipc and net namespaces; B in a new user
    namespace with a uts and a mount namespace it owns."""

    def __init__(self, tmp: Path) -> None:
        self.daemon = Daemon(tmp, QUIET)
        self.a = Holder("--uts", "--ipc", "--net")
        self.b = Holder("--user", "--map-root-user", "--uts", "--mount")
        self.inodes = [self.a.ns(t)[0] for t in ("uts", "ipc", "net")] + [self.b.ns(t)[0] for t in ("user", "uts", "mnt")]
        self.daemon.wait_for(lambda: all(self.daemon.has(i) for i in self.inodes))
        self.mine = " || ".join(f"NS == {i}" for i in self.inodes)

    def env(self, daemon: bool) -> dict[str, str]:
        env = {**os.environ, "NSFS_SOCKET": self.daemon.socket, "NSFS_DB": self.daemon.db, "COLUMNS": "120"}
        env.pop("NSFS_NO_DAEMON", None)
        return env if daemon else {**env, "NSFS_NO_DAEMON": "1"}

    def ls(self, *argv: str, daemon: bool = True) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "namespacefs", "ls", *argv], capture_output=True,
                              env=self.env(daemon), timeout=120, check=False)

    def served(self) -> int:
        return int(self.daemon.status()["listings"]["served"])

    def both(self, *argv: str) -> tuple[subprocess.CompletedProcess[bytes], subprocess.CompletedProcess[bytes]]:
        """`nsfs ls ARGV` through the daemon (which must have answered) and by a scan of its own."""
        before = self.served()
        remote = self.ls(*argv)
        assert self.served() == before + 1, f"the daemon did not answer nsfs ls {argv}"
        return remote, self.ls(*argv, daemon=False)

    def stop(self) -> None:
        self.a.kill()
        self.b.kill()
        self.daemon.stop()


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    h = Host(tmp_path_factory.mktemp("nsfs-live-ls"))
    yield h
    h.stop()


OPTIONS = [(), ("-t", "uts"), ("-t", "net"), ("-o", "NS,TYPE,NAME,NSPATH,PID,PPID,ONS,PNS"),
           ("-o", "+NSPATH,HOLDERS"), ("--tree",), ("-T", "parent"), ("-T", "process"), ("-n",), ("-r",), ("-l",),
           ("--output-all",), ("-J", "-o", "NS,NAME,NPROCS"), ("-J", "-T", "-o", "NS,TYPE,NAME"),
           ("-r", "-n", "-u", "-W"), ("-P",)]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: " ".join(o) or "default")
def test_the_daemons_ls_is_byte_for_byte_a_scans_ls(host: Host, options: tuple[str, ...]) -> None:
    for _attempt in range(3):  # (a process of ours that another scan saw come or go: once more)
        remote, local = host.both(*options, "-Q", host.mine)
        assert remote.returncode == local.returncode == 0, (remote.stderr, local.stderr)
        if remote.stdout == local.stdout:
            break
    assert remote.stdout == local.stdout
    if "-P" not in options:
        assert all(str(i).encode() in remote.stdout for i in host.inodes if "-t" not in options)


def test_the_json_contract_from_the_daemon_is_a_scans_for_our_namespaces(host: Host) -> None:
    """Each namespace and process is one line of `nsfs ls --json`: ours are the same bytes (what the
    whole host holds, when and how long it was read, differ between two reads)."""
    for options in (("--json",), ("--json", "-T"), ("--json", "-t", "uts", "-W")):
        remote, local = host.both(*options)
        assert remote.returncode == local.returncode == 0

        def mine(out: bytes) -> list[bytes]:  # (each without the list's separator: whether another item
            # follows ours depends on the namespaces and processes of others that come and go in between)
            return [line.rstrip(b",") for line in out.splitlines()
                    if any(b'"inode":%d,' % i in line for i in host.inodes)
                    or any(b'{"pid":%d,' % p in line for p in (host.a.pid, host.b.pid))]

        assert mine(remote.stdout) == mine(local.stdout)
        assert len(mine(remote.stdout)) >= (2 if "uts" in options else len(host.inodes) + 2)
        assert sorted(json.loads(remote.stdout)) == sorted(json.loads(local.stdout))


def test_the_default_table_has_our_lines_as_a_scan_has_them(host: Host) -> None:
    remote, local = host.both()
    for out in (remote.stdout, local.stdout):
        assert out.startswith(b"        NS TYPE ")

    def lines(out: bytes) -> set[tuple[bytes, ...]]:
        return {tuple(line.split()) for line in out.splitlines() if any(str(i).encode() in line for i in host.inodes)}

    assert lines(remote.stdout) == lines(local.stdout)
    assert len(lines(remote.stdout)) == len(host.inodes)


def test_selectors_and_errors_are_the_commands_own(host: Host) -> None:
    uts = host.a.ns("uts")[0]
    name = next(ns["name"] for ns in json.loads(host.ls("--json").stdout)["namespaces"] if ns["inode"] == uts)
    for argv in ((str(uts),), (name,), (f"{host.a.pid}:uts",), ("-p", str(host.a.pid), "-o", "NS,TYPE,NAME,NSPATH")):
        remote, local = host.both(*argv)
        assert remote.returncode == local.returncode == 0
        assert remote.stdout == local.stdout
        assert (str(host.a.pid) if argv[0] != "-p" else str(uts)).encode() in remote.stdout
    for argv in (("no-such-namespace-here",), ("-p", "4194000"), ("-J", "-r"), ("-Q", "NS ==")):
        remote = host.ls(*argv)
        local = host.ls(*argv, daemon=False)
        assert remote.returncode == local.returncode != 0
        assert remote.stderr == local.stderr and remote.stderr.startswith(b"nsfs ls: ")


def test_what_the_daemon_cannot_honour_is_scanned_here(host: Host, tmp_path: Path) -> None:
    for argv in (("-v",), ("--sources", "process"), ("--db", str(tmp_path / "other.db")), ("/proc/self/ns/uts",)):
        before = host.served()
        done = host.ls(*argv, "-o", "NS")
        assert done.returncode == 0, done.stderr
        assert host.served() == before, f"nsfs ls {argv} asked the daemon"
    # the daemon's own database, named another way, is the daemon's
    remote, local = host.both("--db", os.path.relpath(host.daemon.db), "-Q", host.mine)
    assert remote.stdout == local.stdout


def test_every_option_of_ls_is_sent_to_the_daemon_or_done_here() -> None:
    dests = {a.dest for a in command_parser("ls")._actions} - {"help", "==SUPPRESS=="}  # (-h, -V)
    assert dests == set(LS_OPTIONS) | set(LS_LOCAL_ONLY)


def test_nsfs_ls_through_the_daemon_imports_no_discovery_naming_or_containers(host: Host) -> None:
    probe = ("import sys, io, runpy\n"
             "sys.argv = ['nsfs', 'ls', '-o', 'NS']\n"
             "from namespacefs.cli import main\n"
             "status = main()\n"
             "heavy = sorted(m for m in sys.modules if m.split('.')[1:2] and m.split('.')[1] in "
             "('discover', 'names', 'containers', 'core') or m in ('json', 'http.client'))\n"
             "print(status, heavy, file=sys.stderr)\n")
    before = host.served()
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, env=host.env(True), timeout=60, check=False)
    assert host.served() == before + 1
    assert done.stderr.decode().splitlines()[-1] == "0 []", done.stderr


#: What `nsfs ls` printed by a daemon has no use for: the model and everything that makes one (and
#: the kernel layer's ctypes), naming, containers, and the standard modules only they import.
NOT_FOR_PRINTING = ("namespacefs.model", "namespacefs.kernel", "namespacefs.handles", "namespacefs.details",
                    "namespacefs.discover", "namespacefs.names", "namespacefs.containers", "namespacefs.core",
                    "namespacefs.targets", "ctypes", "dataclasses", "inspect", "sqlite3", "hashlib", "json",
                    "orjson", "http.client", "shutil")


@pytest.mark.parametrize("argv", [["ls"], ["ls", "--json"], ["ls", "-t", "net", "-o", "+NSPATH"]], ids=" ".join)
def test_nsfs_ls_printed_by_the_daemon_imports_no_model_kernel_layer_or_json(host: Host, argv: list[str]) -> None:
    probe = ("import sys\n"
             f"sys.argv = ['nsfs', *{argv!r}]\n"
             "from namespacefs.cli import main\n"
             "status = main()\n"
             f"heavy = sorted(m for m in sys.modules if m in {NOT_FOR_PRINTING!r} or m.startswith(tuple("
             f"p + '.' for p in {NOT_FOR_PRINTING!r})))\n"
             "print(status, heavy, file=sys.stderr)\n")
    before = host.served()
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, env=host.env(True), timeout=60, check=False)
    assert host.served() == before + 1
    assert done.stderr.decode().splitlines()[-1] == "0 []", done.stderr
    assert done.stdout  # (what the daemon rendered, printed)


@pytest.mark.parametrize("argv", [["ls", "-n"], ["ls", "--json"], ["ls", "-t", "net", "-o", "NS,NSPATH"]], ids=" ".join)
def test_with_no_daemon_nsfs_ls_looks_for_its_socket_once(tmp_path: Path, argv: list[str]) -> None:
    """No daemon: one look at where its socket would be (in a directory we trust), no connect(),
    and the scan of our own does not look again."""
    sock = tmp_path / "run" / "api.sock"
    sock.parent.mkdir(mode=0o700)
    trace = tmp_path / "trace"
    env = {**os.environ, "NSFS_SOCKET": str(sock)}
    env.pop("NSFS_NO_DAEMON", None)
    subprocess.run(["strace", "-f", "-e", "trace=%file,connect", "-o", str(trace), sys.executable, "-m", "namespacefs",
                    *argv], env=env, capture_output=True, timeout=120, check=True)
    calls = trace.read_text().splitlines()
    assert len([c for c in calls if f'"{sock}"' in c]) == 1, [c for c in calls if "api.sock" in c]
    assert not [c for c in calls if "connect(" in c and "sun_path" in c and str(sock.parent) in c]


def test_the_api_answers_with_the_status_and_refuses_bad_options(host: Host) -> None:
    http = host.daemon.http
    got = http.get("/api/ls", params={"json": "1", "filter": host.mine})
    assert got.status_code == 200 and got.headers["content-type"] == "application/json"
    assert {ns["inode"] for ns in got.json()["namespaces"]} == set(host.inodes)
    assert http.get("/api/ls", params={"bogus": "1"}).status_code == 400
    assert http.get("/api/ls", params={"type": "nosuch"}).status_code == 400
    assert http.get("/api/ls", params={"db": "/elsewhere/names.db"}).status_code == 409
    refused = http.get("/api/ls", params={"task": "4194000"})
    assert refused.status_code == 422 and refused.headers["x-nsfs-exit"] == "1"
    assert "4194000" in refused.json()["detail"]


def _on_a_terminal(host: Host, daemon: bool, *argv: str) -> bytes:
    """`nsfs ls ARGV` with its standard output on a terminal 60 columns wide (a pty of ours)."""
    import pty

    main, side = pty.openpty()
    try:
        env = {**host.env(daemon), "COLUMNS": "60"}
        proc = subprocess.Popen([sys.executable, "-m", "namespacefs", "ls", *argv], stdout=side,
                                stderr=subprocess.DEVNULL, env=env)
        os.close(side)
        side = -1
        out = b""
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # (EIO: the other side is closed)
                break
            if not chunk:
                break
            out += chunk
        assert proc.wait(timeout=60) == 0
        return out
    finally:
        os.close(main)
        if side >= 0:
            os.close(side)


def test_on_a_terminal_the_daemon_fits_the_table_to_its_width(host: Host) -> None:
    argv = ("-o", "NS,TYPE,NAME,NSPATH,COMMAND", "-Q", host.mine)
    before = host.served()
    remote = _on_a_terminal(host, True, *argv)
    assert host.served() == before + 1
    local = _on_a_terminal(host, False, *argv)
    assert remote == local
    assert max(len(line) for line in remote.decode().splitlines()) <= 60
    assert "…".encode() in remote  # (the COMMAND column was cut to fit, as on the terminal it went to)

"""`nsfs enter` against util-linux nsenter, one test per row of the README's compatibility table.

Where Debian's nsenter (2.38) has the flag, both commands run the same command in namespaces this
test makes and their output is compared; a newer flag is checked against what nsenter 2.42's manual
documents, and Debian's nsenter is checked to really lack it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from compat_table import Row, debian_has, rows, run_nsfs
from conftest import kill_group
from namespacefs import kernel

TYPES = {"-m": "mnt", "-u": "uts", "-i": "ipc", "-n": "net", "-p": "pid", "-U": "user", "-C": "cgroup", "-T": "time"}


class Target:
    """A process (the init of a fresh pid namespace) in new namespaces of every type, with its own
    hostname, working directory and environment."""

    def __init__(self, cwd: Path, *flags: str, script: str = "hostname compat-target; exec sleep 600") -> None:
        self.proc = subprocess.Popen(["unshare", *flags, "sh", "-c", script], start_new_session=True, cwd=cwd,
                                     env={"PATH": os.environ["PATH"], "FOO": "compat-env"})
        self.cwd = cwd
        deadline = time.monotonic() + 10
        self.pid = self.proc.pid
        while True:
            assert time.monotonic() < deadline and self.proc.poll() is None, "the target did not start"
            if "--fork" in flags:
                with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                    kids = f.read().split()
                self.pid = int(kids[0]) if kids else self.proc.pid
            forked = self.pid != self.proc.pid or "--fork" not in flags
            if forked and os.readlink(f"/proc/{self.pid}/exe").endswith("sleep"):
                break
            time.sleep(0.01)

    def link(self, nstype: str) -> str:
        return os.readlink(f"/proc/{self.pid}/ns/{nstype}")


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    t = Target(tmp_path_factory.mktemp("cwd"), "-m", "-u", "-i", "-n", "-p", "-U", "-C", "-T", "--fork",
               "--map-root-user")
    yield t
    kill_group(t.proc)


@pytest.fixture
def others(tmp_path: Path) -> Iterator[list[Target]]:
    made: list[Target] = []
    yield made
    for t in made:
        kill_group(t.proc)


def nsenter(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["nsenter", *args], capture_output=True, text=True, timeout=60)
    assert not check or result.returncode == 0, result.stderr
    return result


def nsfs(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_nsfs("enter", args, check)


def both(*args: str) -> str:
    """The output of the same nsenter command line run by nsenter and by nsfs enter: the same."""
    theirs, ours = nsenter(*args).stdout, nsfs(*args).stdout
    assert ours == theirs, (args, ours, theirs)
    return ours


# --- one check per table row -------------------------------------------------------------------


def check_target(t: Target, others: list[Target]) -> None:
    assert both("-t", str(t.pid), "-u", "hostname").strip() == "compat-target"
    for tool in (nsenter, nsfs):
        assert tool("-t", "999999", "-u", "true", check=False).returncode != 0
    assert "no process 999999" in nsfs("-t", "999999", "-u", "true", check=False).stderr
    # 2.42: PID:INODE, the inode of the process's pidfd
    pidfd = os.pidfd_open(t.pid)
    try:
        inode = os.fstat(pidfd).st_ino
    finally:
        os.close(pidfd)
    assert nsfs("-t", f"{t.pid}:{inode}", "-u", "hostname").stdout.strip() == "compat-target"
    wrong = nsfs("-t", f"{t.pid}:{inode + 1}", "-u", "hostname", check=False)
    assert wrong.returncode == 1 and "pidfd" in wrong.stderr


def check_all(t: Target, others: list[Target]) -> None:
    links = " ".join(f"/proc/self/ns/{ty}" for ty in ("uts", "ipc", "net", "cgroup", "user"))
    out = both("-a", "-t", str(t.pid), "sh", "-c", f"hostname; readlink {links}").split()
    assert out == ["compat-target", *(t.link(ty) for ty in ("uts", "ipc", "net", "cgroup", "user"))]


def _check_type(letter: str) -> Callable[[Target, list[Target]], None]:
    nstype = TYPES[letter]

    def check(t: Target, others: list[Target]) -> None:
        out = both("-t", str(t.pid), letter, "readlink", f"/proc/self/ns/{nstype}")
        assert out.strip() == t.link(nstype)
        long = {"mnt": "mount"}.get(nstype, nstype)
        assert nsfs("-t", str(t.pid), f"--{long}", "readlink", f"/proc/self/ns/{nstype}").stdout == out

    return check


def check_file(t: Target, others: list[Target]) -> None:
    assert both(f"--uts=/proc/{t.pid}/ns/uts", "hostname").strip() == "compat-target"
    assert both(f"-u/proc/{t.pid}/ns/uts", "hostname").strip() == "compat-target"  # -uFILE: getopt's form
    assert nsfs(f"--net=/proc/{t.pid}/ns/uts", "true", check=False).stderr.count("not net") == 1
    name = f"nsfs-compat-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        inside = both(f"--net=/run/netns/{name}", "readlink", "/proc/self/ns/net").strip()
        assert inside == f"net:[{os.stat(f'/run/netns/{name}').st_ino}]"
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


def check_nsid(t: Target, others: list[Target]) -> None:
    fd = os.open(f"/proc/{t.pid}/ns/uts", os.O_RDONLY)
    try:
        ident = kernel.ns_id(fd)
    finally:
        os.close(fd)
    assert ident is not None
    assert nsenter(f"--uts=:{ident}", "hostname", check=False).returncode != 0  # 2.38 takes it as a file name
    assert nsfs(f"--uts=:{ident}", "hostname").stdout.strip() == "compat-target"


def check_net_socket(t: Target, others: list[Target]) -> None:
    script = "import socket, sys, time; s = socket.socket(); print(s.fileno(), flush=True); time.sleep(600)"
    proc = subprocess.Popen(["unshare", "-n", sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout is not None
        fd = proc.stdout.readline().strip()
        inside = nsfs("-t", str(proc.pid), "-N", fd, "readlink", "/proc/self/ns/net").stdout.strip()
        assert inside == os.readlink(f"/proc/{proc.pid}/ns/net") != os.readlink("/proc/self/ns/net")
        bad = nsfs("-t", str(proc.pid), "-N", "0", "true", check=False)
        assert bad.returncode == 1 and "not a socket" in bad.stderr
    finally:
        kill_group(proc)


def check_user_parent(t: Target, others: list[Target]) -> None:
    nested = Target(t.cwd, "-U", "-r", "unshare", "-U", "-r", script="exec sleep 600")
    others.append(nested)
    fd = os.open(f"/proc/{nested.pid}/ns/user", os.O_RDONLY)
    up = kernel.ns_parent_fd(fd)
    os.close(fd)
    assert up is not None
    parent = f"user:[{os.fstat(up).st_ino}]"
    os.close(up)
    assert parent != nested.link("user") and parent != os.readlink("/proc/self/ns/user")
    out = nsfs("-t", str(nested.pid), "-U", "--user-parent", "readlink", "/proc/self/ns/user").stdout.strip()
    assert out == parent


def check_setuid(t: Target, others: list[Target]) -> None:
    assert both("-t", str(t.pid), "-U", "-S", "0", "-G", "0", "id", "-u").strip() == "0"
    assert both("-t", str(t.pid), "-u", "-S", "65534", "-G", "65534", "id", "-u").strip() == "65534"
    assert nsfs("-t", str(t.pid), "-u", "-S", "follow", "id", "-u").stdout.strip() == "0"  # 2.42: follow


def check_setgid(t: Target, others: list[Target]) -> None:
    assert both("-t", str(t.pid), "-u", "-S", "65534", "-G", "65534", "id", "-g").strip() == "65534"
    assert both("-t", str(t.pid), "-u", "-G", "65534", "id", "-G").strip() == "65534"  # groups dropped
    assert nsfs("-t", str(t.pid), "-u", "-G", "follow", "id", "-g").stdout.strip() == "0"


def check_preserve_credentials(t: Target, others: list[Target]) -> None:
    out = both("-t", str(t.pid), "-U", "--preserve-credentials", "sh", "-c", "id -u; grep ^Groups /proc/self/status")
    assert out.splitlines()[0] == "0"


def check_keep_caps(t: Target, others: list[Target]) -> None:
    assert not debian_has("nsenter", ["--keep-caps"])
    amb = "grep ^CapAmb /proc/self/status"
    kept = nsfs("-t", str(t.pid), "-U", "-S", "0", "--keep-caps", "sh", "-c", amb).stdout.split()[1]
    plain = nsfs("-t", str(t.pid), "-U", "-S", "0", "sh", "-c", amb).stdout.split()[1]
    assert int(kept, 16) != 0 and int(plain, 16) == 0


def check_root(t: Target, others: list[Target]) -> None:
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox-static is not installed (bootstrap.sh installs it)")
    root = t.cwd / "root"
    (root / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy(busybox, root / "bin" / "busybox")
    (root / "marker").write_text("in the new root\n")
    assert both("-t", str(t.pid), "-u", f"-r{root}", "/bin/busybox", "cat", "/marker") == "in the new root\n"
    assert both("-t", str(t.pid), "-u", f"--root={root}", "/bin/busybox", "cat", "/marker") == "in the new root\n"


def check_wd(t: Target, others: list[Target]) -> None:
    assert both("-t", str(t.pid), "-u", "-w", "pwd").strip() == str(t.cwd)  # -w: the target's
    assert both("-t", str(t.pid), "-u", "-w/tmp", "pwd").strip() == "/tmp"
    assert both("-t", str(t.pid), "-u", "--wd=/tmp", "pwd").strip() == "/tmp"


def check_wdns(t: Target, others: list[Target]) -> None:
    assert both("-t", str(t.pid), "-u", "-W", "/tmp", "pwd").strip() == "/tmp"


def check_env(t: Target, others: list[Target]) -> None:
    assert not debian_has("nsenter", ["-e"])
    assert nsfs("-t", str(t.pid), "-u", "-e", "sh", "-c", "echo $FOO").stdout.strip() == "compat-env"
    assert nsfs("-t", str(t.pid), "-u", "sh", "-c", "echo ${FOO:-ours}").stdout.strip() == "ours"


def check_no_fork(t: Target, others: list[Target]) -> None:
    out = both("-F", "-t", str(t.pid), "-p", "readlink", "/proc/self/ns/pid").strip()
    assert out == os.readlink("/proc/self/ns/pid") != t.link("pid")  # no fork: not in it itself


def check_follow_context(t: Target, others: list[Target]) -> None:
    if os.path.exists("/sys/fs/selinux/enforce"):
        pytest.skip("SELinux is on here: -Z would change the context (tested where it is off)")
    assert both("-Z", "-t", str(t.pid), "-u", "hostname").strip() == "compat-target"
    assert "SELinux is off" in nsfs("-Z", "-t", str(t.pid), "-u", "hostname").stderr


def check_join_cgroup(t: Target, others: list[Target]) -> None:
    assert not debian_has("nsenter", ["-c"])
    with open("/proc/self/mounts") as f:
        roots = [line.split()[1] for line in f if line.split()[2] == "cgroup2"]
    if not roots:
        pytest.skip("no cgroup v2 hierarchy mounted here")
    group = Path(roots[0]) / f"nsfs-compat-{os.getpid()}"
    try:
        group.mkdir()
    except OSError as e:
        pytest.skip(f"cannot make a cgroup v2 group here: {e.strerror}")
    inner = Target(t.cwd, "-u", script="exec sleep 600")
    others.append(inner)
    try:
        (group / "cgroup.procs").write_text(str(inner.pid))
        out = nsfs("-t", str(inner.pid), "-u", "-c", "cat", "/proc/self/cgroup").stdout
        assert f"0::/{group.name}" in out.splitlines()
    finally:
        kill_group(inner.proc)
        others.remove(inner)
        deadline = time.monotonic() + 10
        while group.exists():
            try:
                group.rmdir()
            except OSError:
                assert time.monotonic() < deadline, "the test's cgroup stayed busy"
                time.sleep(0.05)


def check_help(t: Target, others: list[Target]) -> None:
    assert nsenter("-h").returncode == 0
    out = nsfs("-h").stdout
    for flag in ("--net-socket", "--user-parent", "--preserve-credentials", "--keep-caps", "--no-fork", "--env",
                 "--follow-context", "--join-cgroup", "--wdns", "--root", "--no-netns-exec"):
        assert flag in out, flag


def check_version(t: Target, others: list[Target]) -> None:
    assert nsenter("-V").stdout.startswith("nsenter from util-linux")
    assert nsfs("-V").stdout.startswith("nsfs from namespacefs ")


CHECKS: dict[str, Callable[[Target, list[Target]], None]] = {
    "-t": check_target, "-a": check_all, **{letter: _check_type(letter) for letter in TYPES},
    "--TYPE=FILE": check_file, "--TYPE=:NSID": check_nsid, "-N": check_net_socket, "--user-parent": check_user_parent,
    "-S": check_setuid, "-G": check_setgid, "--preserve-credentials": check_preserve_credentials,
    "--keep-caps": check_keep_caps, "-r": check_root, "-w": check_wd, "-W": check_wdns, "-e": check_env,
    "-F": check_no_fork, "-Z": check_follow_context, "-c": check_join_cgroup, "-h": check_help, "-V": check_version,
}
#: how Debian's nsenter is asked whether it has a flag (the flag, with an argument where it needs one)
PROBE = {"-t": ["-t", "1"], "-S": ["-S", "0"], "-G": ["-G", "0"], "-N": ["-N", "3"], "-W": ["-W", "/"],
         "--TYPE=FILE": ["--uts=/proc/self/ns/uts"]}


def test_every_row_of_the_table_has_a_test_and_every_test_a_row() -> None:
    assert sorted(r.flag for r in rows("nsenter")) == sorted(CHECKS)


@pytest.mark.parametrize("row", rows("nsenter"), ids=lambda r: r.flag)
def test_nsenter_flag(row: Row, target: Target, others: list[Target]) -> None:
    if row.flag != "--TYPE=:NSID":  # (its own check shows 2.38 lacks it: it reads ':N' as a file name)
        assert debian_has("nsenter", [*PROBE.get(row.flag, [row.flag]), "true"]) == row.in_debian
    assert row.nsfs.startswith("nsfs enter")
    CHECKS[row.flag](target, others)


# --- ip netns users (not a table row: `ip netns exec` is iproute2's) ----------------------------


@pytest.fixture
def netns() -> Iterator[str]:
    """`ip netns add NAME` with an /etc/netns/NAME/resolv.conf of its own; all removed after."""
    name = f"nsfs-exec-{os.getpid()}"
    made_etc = not os.path.exists("/etc/netns")
    subprocess.run(["ip", "netns", "add", name], check=True)
    etc = Path("/etc/netns") / name
    try:
        etc.mkdir(parents=True)
        (etc / "resolv.conf").write_text(f"nameserver 192.0.2.53 # {name}\n")
        yield name
    finally:
        shutil.rmtree(etc, ignore_errors=True)
        if made_etc:
            shutil.rmtree("/etc/netns", ignore_errors=True)
        subprocess.run(["ip", "netns", "del", name], check=True)


def test_entering_an_ip_netns_by_name_is_ip_netns_exec(netns: str) -> None:
    look = ["sh", "-c", "cat /etc/resolv.conf; ls /sys/class/net; readlink /proc/self/ns/net"]
    theirs = subprocess.run(["ip", "netns", "exec", netns, *look], capture_output=True, text=True, check=True).stdout
    assert f"# {netns}" in theirs and theirs.split()[-2:-1] == ["lo"]
    def ours_in_mountinfo() -> list[str]:  # (other tests mount and unmount meanwhile: only what we could leak)
        return [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
                if netns in line or " - sysfs " in line or "/etc/" in line.split(" - ")[0]]

    mounts_before = ours_in_mountinfo()
    host_resolv = Path("/etc/resolv.conf").read_bytes()
    for form in ([netns, "--"], [f"/run/netns/{netns}", "--"], [f"--net=/run/netns/{netns}"]):
        assert nsfs(*form, *look).stdout == theirs, form
    plain = nsfs("--no-netns-exec", netns, "--", *look).stdout
    assert f"# {netns}" not in plain and plain.split()[-1] == theirs.split()[-1]  # the same netns, our /etc
    assert sorted(plain.split()[:-1]) != sorted(theirs.split()[:-1])  # our /sys/class/net: the host's
    assert ours_in_mountinfo() == mounts_before  # nothing propagated back
    assert Path("/etc/resolv.conf").read_bytes() == host_resolv
    # entering more than the net namespace is nsenter's plain setns
    assert f"# {netns}" not in nsfs("-a", netns, "--", "cat", "/etc/resolv.conf", check=False).stdout

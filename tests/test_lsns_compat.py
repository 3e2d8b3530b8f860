"""`nsfs ls` against util-linux lsns, one test per row of the README's compatibility table.

Where Debian's lsns (2.38) has the flag, both commands run on namespaces this test makes and their
answers are compared; a newer flag is checked against what lsns 2.42 documents, and Debian's lsns
is checked to really lack it (so the table's "in 2.38" column stays true)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from compat_table import NSFS_ENV, Row, debian_has, rows, run_nsfs
from conftest import kill_group

ENV = NSFS_ENV  # also for the ptys and pipes this file starts itself
LSNS_COLUMNS = ("NS", "TYPE", "PATH", "NPROCS", "PID", "PPID", "COMMAND", "UID", "USER", "NETNSID", "NSFS", "PNS", "ONS")
NUMBERS = {"ns", "nprocs", "pid", "ppid", "uid", "pns", "ons"}  # lsns.c 2.42: SCOLS_JSON_NUMBER columns


class Target:
    """`sleep 601` with a child `sleep 600`, both in fresh uts, ipc and net namespaces of ours."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(["unshare", "-u", "-i", "-n", "sh", "-c", "sleep 600 & exec sleep 601"],
                                     start_new_session=True)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 10
        while not (os.readlink(f"/proc/{self.pid}/exe").endswith("sleep") and self.children()):
            assert time.monotonic() < deadline, "the target did not start"
            time.sleep(0.01)
        self.child = self.children()[0]
        self.own = {os.stat(f"/proc/{self.pid}/ns/{t}").st_ino: t for t in ("uts", "ipc", "net")}

    def children(self) -> list[int]:
        with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
            return [int(p) for p in f.read().split()]


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    t = Target()
    yield t
    kill_group(t.proc)


def lsns(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Debian's lsns; it exits 1 without a word when a process goes away while it reads (on this
    shared host, other tests' processes do): tried again then."""
    for _attempt in range(5):
        result = subprocess.run(["lsns", *args], capture_output=True, text=True, timeout=60)
        if result.returncode == 0 or result.stderr or not check:
            break
    assert not check or result.returncode == 0, result.stderr
    return result


def nsfs(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_nsfs("ls", args, check)


def raw_rows(text: str, own: dict[int, str] | None = None) -> list[list[str]]:
    """Raw output as rows of cells (the header too); with own, only the rows of those namespaces."""
    table = [line.split(" ") for line in text.splitlines() if line]
    if own is None:
        return table
    return [r for r in table if r[0].isdigit() and int(r[0]) in own]


def flat(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """lsns -J's rows with the children of a tree lifted out."""
    out = []
    for item in items:
        out.append({k: v for k, v in item.items() if k != "children"})
        out += flat(item.get("children", []))
    return out


def on_a_terminal(argv: list[str], columns: int) -> list[str]:
    """The lines argv prints to a pty of this width ($COLUMNS, as libsmartcols reads it)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(argv, stdout=follower, stderr=subprocess.DEVNULL, env={**ENV, "COLUMNS": str(columns)})
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    proc.wait(timeout=60)
    return b"".join(chunks).decode().replace("\r\n", "\n").splitlines()


# --- one check per table row -------------------------------------------------------------------


def check_json(t: Target) -> None:
    ours = {d["inode"]: d for d in json.loads(nsfs("-J", "-p", str(t.pid)).stdout)["namespaces"]}
    theirs = {d["ns"]: d for d in flat(json.loads(lsns("-J", "-p", str(t.pid)).stdout)["namespaces"])}
    assert set(theirs) <= set(ours)
    for inode, d in theirs.items():
        mine = ours[inode]
        assert set(d) <= set(mine), set(d) - set(mine)  # every lsns key is there
        for key, value in d.items():
            assert type(mine[key]) is type(value) or value is None or mine[key] is None, (key, mine[key], value)
            if inode in t.own or key in ("ns", "type"):
                assert mine[key] == value, (key, mine[key], value)
        for key in ("type", "inode", "id", "owner", "name", "path", "holders", "processes"):  # the contract's
            assert key in mine
    own_net = next(i for i, ty in t.own.items() if ty == "net")
    assert ours[own_net]["netnsid"] == "unassigned" and ours[own_net]["pns"] == 0


def check_output(t: Target) -> None:
    cols = "NS,TYPE,PATH,NPROCS,PID,PPID,COMMAND,UID,USER,NETNSID,PNS,ONS"
    args = ("-l", "-r", "-o", cols, "-p", str(t.pid))
    assert raw_rows(nsfs(*args).stdout)[0] == raw_rows(lsns(*args).stdout)[0]  # the header
    assert raw_rows(nsfs(*args).stdout, t.own) == raw_rows(lsns(*args).stdout, t.own) != []
    # -J -o: exactly lsns's shape
    ours = json.loads(nsfs("-J", "-l", "-o", cols, "-p", str(t.pid)).stdout)
    theirs = json.loads(lsns("-J", "-l", "-o", cols, "-p", str(t.pid)).stdout)
    assert list(ours) == ["namespaces"]
    assert [list(d) for d in ours["namespaces"]] == [list(d) for d in theirs["namespaces"]]
    assert [d for d in ours["namespaces"] if d["ns"] in t.own] == [d for d in theirs["namespaces"] if d["ns"] in t.own]
    # the tree needs its column (COMMAND for the default process tree): without it, flat rows
    for tool in (nsfs, lsns):
        assert not any("children" in d for d in json.loads(tool("-J", "-o", "NS,TYPE").stdout)["namespaces"])
    nested = json.loads(nsfs("-J", "-o", "NS,TYPE,COMMAND", "-p", str(t.pid)).stdout)["namespaces"]
    listed = json.loads(nsfs("-J", "-l", "-o", "NS,TYPE,COMMAND", "-p", str(t.pid)).stdout)["namespaces"]
    assert sorted(d["ns"] for d in flat(nested)) == sorted(d["ns"] for d in listed)
    # +LIST adds to the default
    assert raw_rows(nsfs("-r", "-o", "+PPID", "-p", str(t.pid)).stdout)[0][-1] == "PPID"


def check_output_all(t: Target) -> None:
    ours = raw_rows(nsfs("--output-all", "-r", "-p", str(t.pid)).stdout)[0]
    assert tuple(raw_rows(lsns("--output-all", "-r", "-p", str(t.pid)).stdout)[0]) == LSNS_COLUMNS
    assert tuple(ours[:len(LSNS_COLUMNS)]) == LSNS_COLUMNS


def check_list(t: Target) -> None:
    args = ("-l", "-n", "-r", "-o", "NS,TYPE,NPROCS,PID,COMMAND", "-p", str(t.pid))
    assert raw_rows(nsfs(*args).stdout, t.own) == raw_rows(lsns(*args).stdout, t.own) != []
    assert "─" not in nsfs("-l", "-o", "NS,COMMAND").stdout


def check_noheadings(t: Target) -> None:
    args = ("-n", "-l", "-r", "-o", "NS,TYPE", "-p", str(t.pid))
    assert raw_rows(nsfs(*args).stdout) == raw_rows(lsns(*args).stdout)
    assert "NS" not in nsfs(*args).stdout


def check_raw(t: Target) -> None:
    args = ("-r", "-l", "-o", "NS,TYPE,PID,PPID,COMMAND,PNS,ONS", "-p", str(t.pid))
    assert raw_rows(nsfs(*args).stdout, t.own) == raw_rows(lsns(*args).stdout, t.own) != []


def check_task(t: Target) -> None:
    args = ("-r", "-n", "-l", "-o", "NS,TYPE", "-p", str(t.pid))
    assert sorted(raw_rows(nsfs(*args).stdout)) == sorted(raw_rows(lsns(*args).stdout))
    assert len(raw_rows(nsfs(*args).stdout)) == 8


def check_persistent(t: Target) -> None:
    assert not debian_has("lsns", ["-P"])
    name = f"nsfs-compat-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        inode = os.stat(f"/run/netns/{name}").st_ino
        out = raw_rows(nsfs("-P", "-r", "-n", "-o", "NS,TYPE,NPROCS,NSFS").stdout)
        assert [str(inode), "net", "0", f"/run/netns/{name}"] in out  # 2.42: namespaces without processes
        assert all(r[2] == "0" for r in out)
        assert str(t.pid) not in nsfs("-P", "-r", "-o", "PID").stdout.split()
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


def check_filter(t: Target) -> None:
    assert not debian_has("lsns", ["-Q", "TYPE"])
    data = json.loads(nsfs("-J", "-l", "-o", "NS,TYPE,NPROCS,NAME,PID", "-p", str(t.pid)).stdout)["namespaces"]

    def filtered(expr: str) -> list[int]:
        return [d["ns"] for d in json.loads(nsfs("-J", "-l", "-o", "NS,TYPE,NPROCS,NAME,PID", "-p", str(t.pid),
                                                 "-Q", expr).stdout)["namespaces"]]

    def where(test: Callable[[dict[str, Any]], bool]) -> list[int]:
        return [d["ns"] for d in data if test(d)]

    net = where(lambda d: d["type"] == "net")
    assert filtered('TYPE == "net"') == filtered("TYPE eq 'net'") == net and len(net) == 1
    assert filtered('TYPE == "net" && NPROCS == 2') == [i for i in net if i in t.own]
    assert filtered('TYPE != "net"') == filtered('!(TYPE == "net")') == filtered("not (TYPE eq 'net')") \
        == where(lambda d: d["type"] != "net")
    assert filtered('NAME =~ "^(uts|ipc)-"') == where(lambda d: d["name"].startswith(("uts-", "ipc-")))
    assert filtered('NAME !~ "^net"') == where(lambda d: not d["name"].startswith("net"))
    assert filtered('NPROCS < 3 || TYPE == "mnt"') == where(lambda d: d["nprocs"] < 3 or d["type"] == "mnt")
    # and/or bind equally, from the left (libsmartcols: %left T_OR T_AND)
    assert filtered('TYPE == "mnt" || TYPE == "uts" && NPROCS == 2') == [i for i, ty in t.own.items() if ty == "uts"]
    assert filtered("NPROCS le 2 and NPROCS gt 1") == where(lambda d: 1 < d["nprocs"] <= 2) == sorted(t.own)
    assert filtered("NS > 0") == [d["ns"] for d in data]  # numbers compare as numbers
    assert filtered("PNS") == []  # a bare column: true when not empty and not 0 (no parent here)
    for bad in ('TYPE ==', 'NOPE == 1', '(TYPE == "net"', 'NAME =~ 3', 'TYPE == "x" &&'):
        result = nsfs("-Q", bad, check=False)
        assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.startswith("nsfs ls: failed to parse")
    table = nsfs("-Q", 'TYPE == "uts" && NPROCS == 2', "-p", str(t.pid), "-n", "-r", "-o", "NS").stdout.split()
    assert table == [str(i) for i, ty in t.own.items() if ty == "uts"]


def check_type(t: Target) -> None:
    args = ("-t", "net", "-t", "uts", "-r", "-n", "-l", "-o", "NS,TYPE", "-p", str(t.pid))
    assert sorted(raw_rows(nsfs(*args).stdout)) == sorted(raw_rows(lsns(*args).stdout))
    assert {r[1] for r in raw_rows(nsfs(*args).stdout)} == {"net", "uts"}
    header = raw_rows(nsfs("-t", "net", "-r", "-p", str(t.pid)).stdout)[0]
    theirs = raw_rows(lsns("-t", "net", "-r", "-p", str(t.pid)).stdout)[0]
    assert [c for c in header if c != "NAME"] == theirs  # -t net: NETNSID and NSFS as lsns adds them


def check_tree(t: Target) -> None:
    uts = next(i for i, ty in t.own.items() if ty == "uts")
    # -T 4026531837: -T and a namespace argument (getopt); the namespace's processes
    assert raw_rows(nsfs("-T", str(uts), "-r").stdout) == raw_rows(lsns("-T", str(uts), "-r").stdout)
    for rel in ("owner", "parent", "process"):
        same = ("-p", str(t.pid), "-n", "-o", "NS,TYPE,COMMAND")
        ours = nsfs(f"--tree={rel}", *same).stdout
        assert ours == lsns(f"--tree={rel}", *same).stdout  # the same tree, drawn the same
        assert ours == nsfs(f"-T{rel}", *same).stdout == nsfs(f"-T={rel}", *same).stdout
        if rel == "owner":  # everything of the target is owned by the initial user namespace
            lines = ours.splitlines()
            assert lines[0].startswith("4026531837") and all(line.startswith(("├─", "└─")) for line in lines[1:])
    result = nsfs("-Tsideways", check=False)
    assert result.returncode == 1 and "sideways" in result.stderr


def check_notruncate(t: Target) -> None:
    long = subprocess.Popen(["unshare", "-u", "sh", "-c", "sleep 600; : " + " ".join(["x" * 40] * 3)],
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{long.pid}/exe").endswith("unshare"):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        base = [sys.executable, "-m", "namespacefs", "ls", "-o", "NS,TYPE,COMMAND", "-p", str(long.pid)]
        cut = on_a_terminal(base, 60)
        assert cut and all(len(line) <= 60 for line in cut), cut
        whole = on_a_terminal([*base, "-u"], 60)
        assert any("x" * 40 + " " + "x" * 40 in line for line in whole)
        theirs = on_a_terminal(["lsns", "-o", "NS,TYPE,COMMAND", "-p", str(long.pid), "-u"], 60)
        assert any("x" * 40 + " " + "x" * 40 in line for line in theirs)  # lsns -u does the same
    finally:
        kill_group(long)


def check_nowrap(t: Target) -> None:
    name = f"nsfs-compat-w{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    second = f"/run/netns/{name}-again"
    open(second, "w").close()
    subprocess.run(["mount", "--bind", f"/run/netns/{name}", second], check=True)
    try:
        inode = os.stat(f"/run/netns/{name}").st_ino
        args = ("-W", "-t", "net", "-n", "-o", "NS,NSFS")
        mine = [line.split() for line in nsfs(*args).stdout.splitlines() if line.split()[:1] == [str(inode)]]
        theirs = [line.split() for line in lsns(*args).stdout.splitlines() if line.split()[:1] == [str(inode)]]
        assert mine == [[str(inode), f"/run/netns/{name},{second}"]]
        assert set(theirs[0][1].split(",")) == set(mine[0][1].split(",")) if theirs else True  # lsns: a ghost
        wrapped = nsfs("-t", "net", "-o", "NS,NSFS").stdout.splitlines()
        at = next(k for k, line in enumerate(wrapped) if line.split()[:1] == [str(inode)])
        assert wrapped[at].split()[1] == f"/run/netns/{name}" and wrapped[at + 1].split() == [second]  # multi-line
    finally:
        subprocess.run(["umount", second], check=False)
        os.unlink(second)
        subprocess.run(["ip", "netns", "del", name], check=True)


def check_list_columns(t: Target) -> None:
    assert not debian_has("lsns", ["-H"])
    names = [line.split()[0] for line in nsfs("-H").stdout.splitlines()]
    assert tuple(names[:len(LSNS_COLUMNS)]) == LSNS_COLUMNS


def check_help(t: Target) -> None:
    assert lsns("-h").returncode == 0
    out = nsfs("-h").stdout
    for flag in ("--json", "--filter", "--nowrap", "--notruncate", "--tree", "--persistent", "--version"):
        assert flag in out


def check_version(t: Target) -> None:
    assert lsns("-V").stdout.startswith("lsns from util-linux")
    out = nsfs("-V").stdout.strip()
    assert out.startswith("nsfs from namespacefs ") and out == nsfs("--version").stdout.strip()


def check_namespace(t: Target) -> None:
    uts = next(i for i, ty in t.own.items() if ty == "uts")
    ours, theirs = nsfs(str(uts)).stdout.splitlines(), lsns(str(uts)).stdout.splitlines()
    assert ours == theirs and len(ours) == 3  # header, the target and its child (a process tree)
    assert ours[2].rstrip().endswith("└─sleep 600") and str(t.child) in ours[2]
    assert raw_rows(nsfs(str(uts), "-l", "-r", "-n").stdout) == raw_rows(lsns(str(uts), "-l", "-r", "-n").stdout)
    assert json.loads(nsfs(str(uts), "-J", "-o", "PID,PPID,USER,COMMAND").stdout) \
        == json.loads(lsns(str(uts), "-J", "-o", "PID,PPID,USER,COMMAND").stdout)
    # our forms of a namespace mean the same
    assert nsfs(f"uts:[{uts}]").stdout == nsfs(f"{t.pid}:uts").stdout == nsfs(str(uts)).stdout


CHECKS: dict[str, Callable[[Target], None]] = {
    "-J": check_json, "-o": check_output, "--output-all": check_output_all, "-l": check_list,
    "-n": check_noheadings, "-r": check_raw, "-p": check_task, "-P": check_persistent, "-Q": check_filter,
    "-t": check_type, "-T": check_tree, "-u": check_notruncate, "-W": check_nowrap, "-H": check_list_columns,
    "-h": check_help, "-V": check_version, "NS": check_namespace,
}


def test_every_row_of_the_table_has_a_test_and_every_test_a_row() -> None:
    assert sorted(r.flag for r in rows("lsns")) == sorted(CHECKS)


@pytest.mark.parametrize("row", rows("lsns"), ids=lambda r: r.flag)
def test_lsns_flag(row: Row, target: Target) -> None:
    if row.flag != "NS":
        assert debian_has("lsns", [row.flag, *(["x"] if row.flag in ("-o", "-p", "-t", "-Q") else [])]) == row.in_debian
    assert row.nsfs.startswith("nsfs ls")
    CHECKS[row.flag](target)

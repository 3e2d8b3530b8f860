"""Tables on narrow terminals (one renderer for ls, containers and accounting), the -Q filter
language, and naming what could not be read (-v)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import kill_group
from namespacefs.cli.filter import FilterError, compile_filter, tokenize
from namespacefs.cli.output import Column, fit

LONG = " ".join(["x" * 30] * 4)  # a command line far wider than the rest of a row


def on_a_terminal(argv: list[str], columns: int, env: dict[str, str] | None = None) -> list[str]:
    leader, follower = pty.openpty()
    proc = subprocess.Popen(argv, stdout=follower, stderr=subprocess.DEVNULL,
                            env={**os.environ, **(env or {}), "COLUMNS": str(columns), "NSFS_NO_DAEMON": "1"})
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(timeout=120) == 0
    return b"".join(chunks).decode().replace("\r\n", "\n").splitlines()


def table_lines(lines: list[str]) -> list[str]:
    """The table: the lines before the first empty one (accounting prints notes below it)."""
    return lines[:lines.index("")] if "" in lines else lines


@pytest.fixture
def wide(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process in new user, uts and net namespaces with a long command line (a container with a
    long COMMAND, a user namespace with a long name)."""
    proc = subprocess.Popen(["unshare", "-U", "-r", "-u", "-n", "sh", "-c", f"sleep 600; : {LONG}"],
                            start_new_session=True)
    deadline = time.monotonic() + 10
    while os.readlink(f"/proc/{proc.pid}/exe").endswith("unshare"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    yield proc
    kill_group(proc)


def nsfs_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "namespacefs", *args]


def test_containers_and_accounting_rows_fit_80_columns_and_u_keeps_them_whole(
        wide: subprocess.Popen[bytes], tmp_path: Path) -> None:
    env = {"NSFS_DB": str(tmp_path / "names.db")}
    subprocess.run(nsfs_argv("rename", f"{wide.pid}:user", "u" * 70), check=True, env={**os.environ, **env},
                   capture_output=True)
    for command in (["containers"], ["accounting"], ["ls"]):
        lines = table_lines(on_a_terminal(nsfs_argv(*command), 80, env))
        assert len(lines) > 1 and all(len(line) <= 80 for line in lines), (command, [len(x) for x in lines])
        whole = table_lines(on_a_terminal(nsfs_argv(*command, "-u"), 80, env))
        assert any(len(line) > 80 for line in whole), command
    assert any(LONG in line for line in on_a_terminal(nsfs_argv("containers", "-u"), 80, env))
    assert any("u" * 70 in line for line in on_a_terminal(nsfs_argv("accounting", "-u"), 80, env))
    # not a terminal: nothing is cut (as libsmartcols)
    piped = subprocess.run(nsfs_argv("containers"), capture_output=True, text=True, env={**os.environ, **env})
    assert LONG in piped.stdout


def test_only_truncatable_columns_shrink_and_never_below_their_header() -> None:
    cols = [Column("NS", "", str, right=True), Column("NAME", "", str, trunc=True),
            Column("COMMAND", "", str, trunc=True)]
    assert fit([10, 30, 50], cols, 80) == [10, 30, 38]  # the widest truncatable column first
    assert fit([10, 30, 50], cols, 40) == [10, 13, 15]  # then the one furthest above its header's width
    assert fit([10, 30, 50], cols, 10) == [10, 4, 7]  # it cannot fit: headers stay whole, the row overflows
    assert fit([10, 3, 5], cols, 80) == [10, 3, 5]


# --- the filter language (scols-filter(5)) -------------------------------------------------------


ROW = {"TYPE": "net", "NPROCS": 3, "NAME": "web-1", "PID": None, "NETNSID": "unassigned", "SIZE": 2048}
NUMBER = {"NPROCS", "PID", "SIZE"}


def matches(expr: str, row: dict[str, Any] = ROW) -> bool:
    def column(name: str) -> tuple[Any, bool] | None:
        return ((lambda r, n=name: r[n]), name in NUMBER) if name in row else None

    return compile_filter(expr, column)(row)


@pytest.mark.parametrize(("expr", "expected"), [
    ('TYPE == "net"', True), ("TYPE eq 'net'", True), ('TYPE != "net"', False), ('TYPE ne "net"', False),
    ("NPROCS > 1", True), ("NPROCS gt 3", False), ("NPROCS >= 3", True), ("NPROCS ge 4", False),
    ("NPROCS < 4", True), ("NPROCS lt 3", False), ("NPROCS <= 3", True), ("NPROCS le 2", False),
    ('TYPE == "net" && NPROCS > 1', True), ('TYPE == "net" and NPROCS > 5', False),
    ('TYPE == "uts" || NPROCS > 1', True), ('TYPE == "uts" or NPROCS > 5', False),
    ('!(TYPE == "net")', False), ('not (TYPE == "uts")', True), ("NOT NPROCS", False),
    ('NAME =~ "^web"', True), ('NAME =~ "^db"', False), ('NAME !~ "^db"', True), ('NAME !~ "-[0-9]$"', False),
    ('(TYPE == "uts" || TYPE == "net") && NAME =~ "web"', True),
    ('TYPE == "net" || TYPE == "uts" && NPROCS > 5', False),  # and/or bind equally, from the left
    ("NPROCS", True), ("PID", False), ("NAME", True),  # a bare column: not empty, not zero
    ("SIZE == 2K", True), ("SIZE == 2KiB", True), ("SIZE > 1.5", True), ("NPROCS == 3.0", True),
    ("NETNSID > 0", False),  # a value that is not a number: that comparison is false
    ("PID == 0", True),  # an empty number cell compares as 0 (libsmartcols casts "" to 0)
    ("true", True), ("FALSE", False), ("type == 'net'", True),  # column names in any case
])
def test_filter_expressions_mean_what_libsmartcols_makes_of_them(expr: str, expected: bool) -> None:
    assert matches(expr) is expected


@pytest.mark.parametrize("bad", ["", "TYPE ==", '(TYPE == "net"', 'TYPE == "net")', 'NAME =~ 3', "NPROCS > > 1",
                                 'NAME =~ "("', "TYPE $ 1", "NOPE == 1", "'unterminated"])
def test_bad_filter_expressions_are_one_error_each(bad: str) -> None:
    with pytest.raises(FilterError) as err:
        matches(bad)
    assert "\n" not in str(err.value)


def test_the_tokenizer_reads_longest_first() -> None:
    kinds = [t.kind for t in tokenize('A!=1&&B<=2||!C!~"x"')]
    assert kinds == ["HOLDER", "NE", "NUMBER", "AND", "HOLDER", "LE", "NUMBER", "OR", "NOT", "HOLDER", "NREG", "STRING"]
    assert [t.kind for t in tokenize("andy and and_x")] == ["HOLDER", "AND", "HOLDER"]


# --- what could not be read ---------------------------------------------------------------------


def test_verbose_names_each_unreadable_entry_and_protected_is_counted_apart() -> None:
    env = {**os.environ, "NSFS_NO_DAEMON": "1"}
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    quiet = subprocess.run([*as_nobody, *nsfs_argv("ls", "-J")], capture_output=True, text=True, env=env)
    errors = json.loads(quiet.stdout)["errors"]
    assert errors.get("denied", 0) > 0 and "protected" not in errors  # a user is denied, not protected
    assert "-v names each" in quiet.stderr
    loud = subprocess.run([*as_nobody, *nsfs_argv("ls", "-v", "-n", "-o", "NS")], capture_output=True, text=True,
                          env=env)
    named = [line for line in loud.stderr.splitlines() if line.startswith("nsfs: denied: pid ")]
    assert named, loud.stderr
    pid = int(named[0].split()[3])
    assert f"/proc/{pid}/" in named[0] and ("denied" in named[0] or "Permission" in named[0])
    as_root = subprocess.run(nsfs_argv("ls", "-J"), capture_output=True, text=True, env=env)
    root_errors = json.loads(as_root.stdout)["errors"]
    assert "denied" not in root_errors  # root is never merely denied
    if not root_errors.get("protected"):
        pytest.skip("nothing on this host is protected from root (in the sandbox pid 1 is)")
    loud_root = subprocess.run(nsfs_argv("ls", "-v", "-n", "-o", "NS"), capture_output=True, text=True, env=env)
    assert any(line.startswith("nsfs: protected: pid ") for line in loud_root.stderr.splitlines()), loud_root.stderr
    assert "even as root" in loud_root.stderr

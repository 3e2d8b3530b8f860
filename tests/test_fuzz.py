"""Fuzzing every subcommand and the selector grammar with generated garbage (Hypothesis): Unicode
digits, control bytes, lone surrogates, huge and deeply nested inputs, real option names in random
order. Each invocation must end with status 0, or non-zero with every line on stderr an `nsfs...`
line and no traceback or internal error; and nothing on the host may change.

The bulk calls cli.main(argv) in-process, behind its real error boundary; a smaller sample runs
`nsfs` as real subprocesses. The fuzz can never act on anything real:
  * read-only commands (ls, tree, show, names list, accounting) get anything, against a snapshot of
    the host taken once;
  * commands that write names (rename, names import/export/--prune, containers --rename/--forget)
    write only into a private database in a private working directory; no argument may hold a '/'
    (every path is relative to that directory);
  * commands that act (kill, enter, pin, checkpoint) see an EMPTY snapshot, so no selector can
    resolve to a process, a namespace or a container; and guards turn any signal, fork, exec,
    mount, unmount or subprocess into a test failure (a BaseException no error boundary catches);
  * the rest (unpin, shift, unshift, mount, umount, serve, watch, restore) are fuzzed at the
    argument level only: a poison option no parser knows makes argparse refuse every one of them
    before the command runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from namespacefs import cli, core, forking, kernel, names, targets
from namespacefs.model import Snapshot

READ_ONLY = ("ls", "tree", "show", "names", "accounting")
WRITING = ("rename", "containers")
ACTING = ("kill", "enter", "pin", "checkpoint")
POISONED = ("unpin", "shift", "unshift", "mount", "umount", "serve", "watch", "restore")
POISON = "--nsfs-fuzz-poison"
assert set(READ_ONLY + WRITING + ACTING + POISONED) == set(cli.COMMANDS)

COUNT = {"in_process": 0, "subprocess": 0, "seconds": 0.0}


class FuzzReachedTheHost(BaseException):
    """A guarded call (signal, fork, exec, mount, subprocess) was reached: the fuzz must never act."""


# --- the garbage ------------------------------------------------------------------------------

SPECIAL = ["²", "٣", "١٢", "1_000", "0x10", "-1", "+1", " 7", "7\n", "\x85", "\u202e", "\u2028", "\udcff", "\ud800",
           "\x00", "\x1b[2J", "", " ", "-", "--", ".", "..", "9" * 5000, "[" * 5000, "{" * 3000, "é" * 200,
           "4026531840", "net:[4026531840]", "1:net", "id:1", "uts", "user-abc123", "host", "0:100000:65536",
           "127.0.0.1:0", "KILL", "USR1", "RTMIN+99", "nan", "inf", "1e999"]
TEXT = st.text(st.characters(codec=None, categories=("L", "M", "N", "P", "S", "Z", "Cc", "Cf", "Cs", "Co")),
               max_size=40)


def _options(command: str) -> list[str]:
    """The real option strings of a command's parser (garbage in the right places finds more)."""
    module = __import__(f"namespacefs.cli.{cli.COMMANDS[command][0]}", fromlist=["add_arguments"])
    parser = cli.Parser(prog=f"nsfs {command}")
    module.add_arguments(parser, command)
    return sorted({o for a in parser._actions for o in a.option_strings if o not in ("-h", "--help")})


OPTIONS = {c: _options(c) for c in cli.COMMANDS}
EXTRA = {"names": ["list", "export", "import", "-"], "containers": ["--rename", "--forget"]}


def as_argv(text: str) -> str:
    """What a real command line can hand Python: bytes without NUL, decoded as Python decodes argv
    (UTF-8 with surrogateescape: a lone surrogate arrives as the \\udcXX of each of its bytes)."""
    return text.encode("utf-8", "surrogatepass").replace(b"\0", b"").decode("utf-8", "surrogateescape")


def argv_for(command: str, slash: bool) -> st.SearchStrategy[list[str]]:
    token = st.one_of(st.sampled_from(OPTIONS[command] + EXTRA.get(command, [])), st.sampled_from(SPECIAL), TEXT,
                      st.integers(-2**70, 2**70).map(str)).map(as_argv)
    if not slash:
        token = token.filter(lambda t: "/" not in t)
    return st.lists(token, max_size=8).map(lambda rest: [command, *rest])


# --- running one invocation -------------------------------------------------------------------


@contextlib.contextmanager
def patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def _refuse(what: str) -> Callable[..., Any]:
    def guard(*args: Any, **kwargs: Any) -> Any:
        raise FuzzReachedTheHost(f"the fuzz reached {what}{args!r:.200}")
    return guard


@contextlib.contextmanager
def guards() -> Iterator[None]:
    """Every way to act on the host, refused for the duration."""
    from namespacefs.ops import enter as ops_enter

    with contextlib.ExitStack() as stack:
        for obj, name in ((kernel, "pidfd_send_signal"), (os, "kill"), (os, "killpg"), (os, "fork"),
                          (os, "execvp"), (os, "execv"), (forking, "fork_and_act"), (ops_enter, "fork_and_act"),
                          (kernel, "mount"), (kernel, "umount"), (kernel, "move_mount"), (kernel, "move_mount_onto"),
                          (kernel, "clone_tree"), (kernel, "fsmount"), (kernel, "setns"),
                          (subprocess.Popen, "__init__")):
            stack.enter_context(patched(obj, name, _refuse(f"{getattr(obj, '__name__', obj)}.{name}")))
        yield


def run_in_process(argv: list[str], snapshot: Snapshot) -> tuple[int, str, str]:
    """cli.main(argv) with captured stdout/stderr (and an empty stdin), against `snapshot`."""
    # like the real ones: text over bytes (JSON is written to .buffer), stdout strict, stderr backslashreplace
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors=sys.__stdout__.errors if sys.__stdout__ else "strict")
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="backslashreplace")
    stdin = io.TextIOWrapper(io.BytesIO(b""))

    def snap(sources: Any = None, fresh: bool = False, db: str | None = None, alongside: Any = None,
             strict: bool = False, provider: Any = None) -> Snapshot:
        return names.apply(snapshot, db, strict=strict)

    acting = argv[0] in ACTING
    with contextlib.ExitStack() as stack:
        stack.enter_context(patched(core, "snapshot", snap))
        stack.enter_context(patched(sys, "stdin", stdin))
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        if acting:
            stack.enter_context(guards())
        status = cli.main(argv)
    COUNT["in_process"] += 1
    out.flush()
    err.flush()
    return status, out.buffer.getvalue().decode(errors="replace"), err.buffer.getvalue().decode(errors="replace")


def check(argv: list[str], status: int, stderr: str) -> None:
    """The property every invocation must have."""
    assert isinstance(status, int), (argv, status)
    assert "Traceback" not in stderr, (argv, stderr)
    assert "internal error" not in stderr and status != cli.INTERNAL_ERROR, (argv, stderr)
    if status != 0:
        lines = stderr.splitlines()
        assert lines, (argv, status, "no message")
        assert all(line.startswith("nsfs") for line in lines), (argv, stderr)


# --- fixtures: a private place, the host's state before and after ----------------------------------


def _digest(path: str) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def _children() -> set[int]:
    with open(f"/proc/self/task/{os.getpid()}/children") as f:
        return {int(p) for p in f.read().split()}


def _mounts() -> list[str]:
    """Our mount namespace's mounts outside the places other tests and helpers use on a shared host."""
    with open("/proc/self/mountinfo") as f:
        lines = [line.split() for line in f]
    busy = ("/tmp/", "/run/netns/", "/run/namespacefs", "/work/")
    return sorted(" ".join(f[3:5]) for f in lines if not f[4].startswith(busy))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A private working directory (with a file in it, so that no fuzzed path is an empty
    directory), a private names database, a snapshot of the host taken once, an empty one; and
    checks that the host is as it was when the module is done."""
    place = tmp_path_factory.mktemp("fuzz")
    (place / "not-empty").write_text("")
    shared_db = os.environ["NSFS_DB"]
    before = {"mounts": _mounts(), "children": _children(), "db": _digest(shared_db),
              "host_db": _digest(names.DEFAULT_DB), "files": sorted(os.listdir(place))}
    env = {"NSFS_DB": str(place / "names.db"), "NSFS_NO_DAEMON": "1", "NSFS_OCI_ROOTS": str(place / "no-oci")}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    cwd = os.getcwd()
    os.chdir(place)
    started = time.monotonic()
    try:
        real = core.snapshot(fresh=True)
        empty = Snapshot(real.boot_id, real.kernel, real.taken_at, 0.0, {}, {}, {}, real.sources)
        yield {"place": place, "real": real, "empty": empty, "env": env}
    finally:
        COUNT["seconds"] += time.monotonic() - started
        os.chdir(cwd)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert _mounts() == before["mounts"]
    assert _children() <= before["children"]  # nothing of ours left running
    assert _digest(shared_db) == before["db"] and _digest(names.DEFAULT_DB) == before["host_db"]
    if os.environ.get("NSFS_FUZZ_REPORT"):  # (bench/RESULTS-fuzz.md records one run's numbers)
        Path(os.environ["NSFS_FUZZ_REPORT"]).write_text(json.dumps(COUNT) + "\n")


FUZZ = settings(max_examples=1500, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.filter_too_much, HealthCheck.data_too_large])


@FUZZ
@given(st.sampled_from(READ_ONLY).flatmap(lambda c: argv_for(c, slash=True)))
def test_read_only_commands_take_any_garbage(world: dict[str, Any], argv: list[str]) -> None:
    status, _out, err = run_in_process(argv, world["real"])
    check(argv, status, err)


@FUZZ
@given(st.sampled_from((*WRITING, "names")).flatmap(lambda c: argv_for(c, slash=False)))
def test_commands_that_write_names_write_only_their_private_database(world: dict[str, Any], argv: list[str]) -> None:
    status, _out, err = run_in_process(argv, world["real"])
    check(argv, status, err)


@FUZZ
@given(st.sampled_from(ACTING).flatmap(lambda c: argv_for(c, slash=False)))
def test_commands_that_act_resolve_nothing_and_act_on_nothing(world: dict[str, Any], argv: list[str]) -> None:
    status, _out, err = run_in_process(argv, world["empty"])
    check(argv, status, err)
    # (-V/--version only prints the version, as nsenter -V does)
    assert status != 0 or {"--help", "-h", "--dry-run", "--version", "-V"} & set(argv), (argv, err)


@settings(FUZZ, max_examples=600)
@given(st.sampled_from(POISONED).flatmap(lambda c: argv_for(c, slash=True)))
def test_the_other_commands_refuse_garbage_before_running(world: dict[str, Any], argv: list[str]) -> None:
    argv = [argv[0], POISON, *argv[1:]]
    with guards():
        status, _out, err = run_in_process(argv, world["empty"])
    check(argv, status, err)
    # -h/--help and -V/--version act as they are parsed (argparse, like lsns's getopt), before the rest is checked
    assert status == 2 or (status == 0 and {"-h", "--help", "-V", "--version"} & set(argv)), (argv, err)


@settings(FUZZ, max_examples=1000)
@given(st.one_of(TEXT, st.sampled_from(SPECIAL), st.integers(-2**70, 2**70).map(str),
                 st.tuples(st.sampled_from(["", "id:", "net:[", "1:", "/proc/self/ns/"]), TEXT).map("".join)),
       st.sampled_from([None, "net", "uts", "user"]))
def test_the_selector_grammar_answers_or_says_not_found(world: dict[str, Any], spec: str, nstype: str | None) -> None:
    for files in (True, False):
        try:
            ns = targets.resolve(world["real"], spec, nstype, files=files)
        except targets.NotFound as e:  # (anything else escaping is a failure)
            assert str(e) and "\n" not in cli.one_line(e)
        else:
            assert ns.inode in world["real"].namespaces
    COUNT["in_process"] += 1


@settings(FUZZ, max_examples=60)
@given(st.sampled_from(READ_ONLY + POISONED).flatmap(lambda c: argv_for(c, slash=False)))
def test_a_sample_as_real_processes(world: dict[str, Any], argv: list[str]) -> None:
    if argv[0] in POISONED:
        argv = [argv[0], POISON, *argv[1:]]
    result = subprocess.run([sys.executable, "-m", "namespacefs", *argv],
                            capture_output=True, timeout=120, cwd=world["place"], env={**os.environ, **world["env"]})
    COUNT["subprocess"] += 1
    check(argv, result.returncode, result.stderr.decode(errors="replace"))


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | TEXT,
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4), max_leaves=20)
ENTRY = st.fixed_dictionaries({"name": st.one_of(TEXT, JSON), "type": st.one_of(st.sampled_from(["net", "uts"]), JSON)},
                              optional={"id": JSON, "container": JSON, "netns": JSON, "processes": JSON, "inode": JSON})
EXPORT = st.one_of(JSON, st.fixed_dictionaries({"format": st.just("namespacefs-names"), "version": st.just(1),
                                                "names": st.one_of(st.lists(ENTRY, max_size=4), JSON)},
                                               optional={"boot_id": JSON}))


@settings(FUZZ, max_examples=500)
@given(EXPORT)
def test_a_names_import_of_any_json_renames_or_says_why(world: dict[str, Any], data: Any) -> None:
    from namespacefs.names import migrate

    for dry_run in (True, False):  # (into the private database)
        try:
            result = migrate.import_names(data, world["real"], os.environ["NSFS_DB"], {}, dry_run=dry_run)
        except names.NamingError as e:
            assert str(e)
        else:
            assert all(isinstance(why, str) for _, why in result.unmatched)
    COUNT["in_process"] += 1


def test_zz_the_fuzz_ran_at_least_5000_invocations() -> None:
    """(Runs after the fuzz tests of this module: their count, not a promise.)"""
    assert COUNT["in_process"] + COUNT["subprocess"] >= 5000, COUNT

"""Per-phase wall and CPU times of one in-process `nsfs ls --json` (issue 16), to compare source
trees on the same host: runs alternate between the trees, and CPU time (time.process_time, every
thread of the process) is what to compare on a loaded machine.

    .venv/bin/python bench/cold_phases.py host 1000 dense 5 TREE...   # build a synthetic host, compare, tear down
    .venv/bin/python bench/cold_phases.py here 5 TREE...              # on the host as it is
    .venv/bin/python bench/cold_phases.py whole 15 TREE...            # whole `nsfs ls` processes: CPU and wall
    .venv/bin/python bench/cold_phases.py one [NSFS ARGS...]          # (internal) one timed run, as JSON

A TREE is a checkout whose src/ goes first on PYTHONPATH (with its _walk extension built in place,
or copied from this tree's: `git archive COMMIT | tar -x -C DIR; cp src/namespacefs/_walk*.so
DIR/src/namespacefs/`). The names database is one that does not exist, so every run names alike.
NSFS_ARGS (default `ls --json`) is the command timed. discover()'s CPU is also split into user and
system time (getrusage, every thread): the walk is mostly the kernel's work.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
#: the phases, in the order of the table ("import": the modules the phases are in, names and the
#: CLI included; containers are imported inside core.engine_names)
ORDER = ["import", "discover()", "  user (all threads)", "  system (all threads)", "  processes.scan", "  mounts.scan",
         "  hierarchy.resolve", "  read_user_maps", "  freeze", "core.name", "  core.engine_names (containers)",
         "  names.apply", "ls._contract", "  Snapshot.to_dict", "json_bytes", "command (after the imports)"]


def one(argv: list[str]) -> None:
    """One nsfs command in this process with its phases timed; prints {phase: [wall, cpu]}."""
    w0, c0 = time.perf_counter(), time.process_time()
    from namespacefs import cli, core, discover, model, names
    from namespacefs.cli import ls, output
    from namespacefs.discover import hierarchy, mounts, processes

    spent: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    spent["import"] = [time.perf_counter() - w0, time.process_time() - c0]

    def timed(label: str, owner: Any, attr: str) -> None:
        func: Callable[..., Any] = getattr(owner, attr)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            w, c = time.perf_counter(), time.process_time()
            try:
                return func(*args, **kwargs)
            finally:
                spent[label][0] += time.perf_counter() - w
                spent[label][1] += time.process_time() - c
        setattr(owner, attr, wrapper)

    def in_kernel(func: Callable[..., Any]) -> Callable[..., Any]:
        """discover()'s user and system CPU time (getrusage: every thread of the process)."""
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            before = resource.getrusage(resource.RUSAGE_SELF)
            try:
                return func(*args, **kwargs)
            finally:
                after = resource.getrusage(resource.RUSAGE_SELF)
                spent["  user (all threads)"][1] += after.ru_utime - before.ru_utime
                spent["  system (all threads)"][1] += after.ru_stime - before.ru_stime
        return wrapper

    discover.discover = in_kernel(discover.discover)
    for label, owner, attr in (
            ("discover()", discover, "discover"), ("  processes.scan", processes, "scan"),
            ("  mounts.scan", mounts, "scan"), ("  hierarchy.resolve", hierarchy, "resolve"),
            ("  read_user_maps", discover, "read_user_maps"), ("  freeze", discover, "freeze"),
            ("core.name", core, "name"), ("  core.engine_names (containers)", core, "engine_names"),
            ("  names.apply", names, "apply"), ("ls._contract", ls, "_contract"),
            ("  Snapshot.to_dict", model.Snapshot, "to_dict"), ("json_bytes", output, "json_bytes")):
        timed(label, owner, attr)
    core.discover = discover.discover  # (core holds its own reference)
    w, c = time.perf_counter(), time.process_time()
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        cli.main(argv or ["ls", "--json"])
    spent["command (after the imports)"] = [time.perf_counter() - w, time.process_time() - c]
    print(json.dumps(spent))


def compare(runs: int, trees: list[str]) -> str:
    """A table of the median wall and CPU ms of each phase, per tree."""
    samples: dict[str, dict[str, list[list[float]]]] = {t: collections.defaultdict(list) for t in trees}
    procs = sum(name.isdigit() for name in os.listdir("/proc"))
    before = _load()
    for _ in range(runs):
        for tree in trees:
            env = dict(os.environ, PYTHONPATH=os.path.join(tree, "src"), NSFS_NO_DAEMON="1",
                       NSFS_DB="/nonexistent/namespacefs-bench/names.db")
            out = subprocess.run([sys.executable, __file__, "one", *os.environ.get("NSFS_ARGS", "ls --json").split()],
                                 env=env, capture_output=True, text=True, check=True).stdout
            for label, value in json.loads(out.strip().splitlines()[-1]).items():
                samples[tree][label].append(value)
    after = _load()
    lines = [f"{procs} processes; load average {' '.join(before)} before, {' '.join(after)} after; median of {runs}",
             "", "| phase | " + " | ".join(f"{os.path.basename(t.rstrip('/'))} wall | cpu" for t in trees) + " |",
             "|---|" + "---:|---:|" * len(trees)]
    for label in sorted(samples[trees[0]], key=ORDER.index):
        cells = []
        for t in trees:
            values = samples[t].get(label, [[0.0, 0.0]])
            cells += [f"{statistics.median(v[0] for v in values) * 1e3:.1f}",
                      f"{statistics.median(v[1] for v in values) * 1e3:.1f}"]
        lines.append(f"| {label.replace(' ', '&nbsp;', 2) if label.startswith(' ') else label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def whole(runs: int, trees: list[str]) -> str:
    """The CPU (user + sys, getrusage of the child) and wall time of whole `nsfs ls` processes
    (NSFS_ARGS; the daemon asked for as usual), median and minimum per tree."""
    found: dict[str, list[tuple[float, float]]] = {t: [] for t in trees}
    before = _load()
    for _ in range(runs):
        for tree in trees:
            env = dict(os.environ, PYTHONPATH=os.path.join(tree, "src"), NSFS_DB="/nonexistent/namespacefs-bench/names.db")
            used = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "namespacefs", *os.environ.get("NSFS_ARGS", "ls").split()], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            wall = time.perf_counter() - start
            now = resource.getrusage(resource.RUSAGE_CHILDREN)
            found[tree].append((wall, now.ru_utime - used.ru_utime + now.ru_stime - used.ru_stime))
    procs = sum(name.isdigit() for name in os.listdir("/proc"))
    lines = [f"{procs} processes; load average {' '.join(before)} before, {' '.join(_load())} after; {runs} runs each",
             "", "| tree | wall median | wall min | cpu median | cpu min |", "|---|---:|---:|---:|---:|"]
    for tree, values in found.items():
        walls, cpus = [v[0] * 1e3 for v in values], [v[1] * 1e3 for v in values]
        lines.append(f"| {os.path.basename(tree.rstrip('/'))} | {statistics.median(walls):.1f} | {min(walls):.1f} | "
                     f"{statistics.median(cpus):.1f} | {min(cpus):.1f} |")
    return "\n".join(lines)


def _load() -> list[str]:
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


def main() -> None:
    mode, rest = sys.argv[1], sys.argv[2:]
    if mode == "one":
        one(rest)
    elif mode == "whole":
        print(whole(int(rest[0]), rest[1:]))
    elif mode == "here":
        print(compare(int(rest[0]), rest[1:]))
    elif mode == "host":
        sys.path.insert(0, HERE)
        from synthetic import SyntheticHost

        with SyntheticHost(int(rest[0]), rest[1]):
            print(compare(int(rest[2]), rest[3:]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()

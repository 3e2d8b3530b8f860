"""What an engine module looks at to recognise a container: its init process, the process that
started it, the processes' cgroups (read once, on demand) and the snapshot."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

from namespacefs import procfs
from namespacefs.containers.model import Identity
from namespacefs.discover.processes import read_at
from namespacefs.model import Process, Snapshot


def read_cgroups(pid: int, proc: str = "/proc") -> dict[str, str]:
    """controllers -> cgroup path of a process ({} if it vanished)."""
    try:
        return procfs.parse_cgroup(read_at(f"{proc}/{pid}/cgroup"))
    except (OSError, ValueError):
        return {}


@dataclass
class Candidate:
    snapshot: Snapshot
    init: Process
    pids: tuple[int, ...]
    starter: Process | None  # the nearest ancestor outside the container (bwrap, nspawn, runc ...)
    proc: str = "/proc"
    _cgroups: dict[str, str] | None = field(default=None, repr=False)
    _paths: tuple[str, ...] | None = field(default=None, repr=False)

    @property
    def cgroups(self) -> dict[str, str]:
        if self._cgroups is None:  # as the scan read it, else (a daemon's snapshot) read now
            cgroup = self.init.cgroup
            self._cgroups = procfs.parse_cgroup(cgroup) if cgroup is not None else read_cgroups(self.init.pid, self.proc)
        return self._cgroups

    def cgroup_paths(self) -> tuple[str, ...]:
        """The distinct cgroup paths of the init, cgroup2 first, then name=systemd, then the rest
        (worked out once: each engine module asks)."""
        if self._paths is None:
            cgroup = self.init.cgroup
            self._paths = distinct_paths(cgroup) if cgroup is not None and self._cgroups is None else (
                _ordered(self.cgroups))
        return self._paths


@functools.lru_cache(maxsize=1024)
def distinct_paths(cgroup: bytes) -> tuple[str, ...]:
    """cgroup_paths of a cgroup file's text: worked out once per distinct text (the processes of a
    host share a few; an engine module's verdict on them is cached the same way)."""
    return _ordered(procfs.parse_cgroup(cgroup))


def unit_identity(engine: str, pattern: re.Pattern[str], c: Candidate) -> Identity | None:
    """The engine's container named by the systemd unit (scope, service) that pattern's group 1
    finds in the first of the init's cgroup paths it matches, its `\\x2d` escapes undone."""
    found = _unit_in(pattern, c.cgroup_paths())
    if found is None:
        return None
    name, path = found
    return Identity(engine, name, name, {"cgroup": path})


@functools.lru_cache(maxsize=1024)
def _unit_in(pattern: re.Pattern[str], paths: tuple[str, ...]) -> tuple[str, str] | None:
    """(unit, the path it is in), once per pattern and distinct set of paths."""
    for path in paths:
        if m := pattern.search(path):
            return m.group(1).replace("\\x2d", "-"), path
    return None


def _ordered(cgroups: dict[str, str]) -> tuple[str, ...]:
    paths: list[str] = []
    for key in ("", "name=systemd", *sorted(cgroups)):
        path = cgroups.get(key)
        if path and path not in paths:
            paths.append(path)
    return tuple(paths)


def option(argv: tuple[str, ...], *names: str) -> str | None:
    """The value of a command-line option given as `--name VALUE`, `--name=VALUE` or `-n VALUE`."""
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if name.startswith("--") and arg.startswith(name + "="):
                return arg[len(name) + 1:]
    return None

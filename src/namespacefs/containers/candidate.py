"""What an engine module looks at to recognise a container: its init process, the process that
started it, the processes' cgroups (read once, on demand) and the snapshot."""

from __future__ import annotations

from dataclasses import dataclass, field

from namespacefs import procfs
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
    _paths: list[str] | None = field(default=None, repr=False)

    @property
    def cgroups(self) -> dict[str, str]:
        if self._cgroups is None:  # as the scan read it, else (a daemon's snapshot) read now
            cgroup = self.init.cgroup
            self._cgroups = procfs.parse_cgroup(cgroup) if cgroup is not None else read_cgroups(self.init.pid, self.proc)
        return self._cgroups

    def cgroup_paths(self) -> list[str]:
        """The distinct cgroup paths of the init, cgroup2 first, then name=systemd, then the rest
        (worked out once: each engine module asks)."""
        if self._paths is None:
            cgroups = self.cgroups
            self._paths = []
            for key in ("", "name=systemd", *sorted(cgroups)):
                path = cgroups.get(key)
                if path and path not in self._paths:
                    self._paths.append(path)
        return self._paths


def option(argv: tuple[str, ...], *names: str) -> str | None:
    """The value of a command-line option given as `--name VALUE`, `--name=VALUE` or `-n VALUE`."""
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if name.startswith("--") and arg.startswith(name + "="):
                return arg[len(name) + 1:]
    return None

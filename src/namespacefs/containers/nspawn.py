"""systemd-nspawn: the machine name from the nspawn command line (`--machine`, `-M`, else the
basename of `-D`/`--directory` or `-i`/`--image`), or from a `machine-NAME.scope` cgroup."""

from __future__ import annotations

import os
import re

from namespacefs.containers.candidate import Candidate, option
from namespacefs.containers.model import Identity

SCOPE = re.compile(r"machine-([^/]+)\.scope")


def identify(c: Candidate) -> Identity | None:
    starter = c.starter
    if starter is not None and starter.comm == "systemd-nspawn":
        argv = starter.cmdline
        name = option(argv, "--machine", "-M")
        if not name:
            where = option(argv, "--directory", "-D") or option(argv, "--image", "-i")
            name = os.path.basename(where.rstrip("/")) if where else None
        return Identity("systemd-nspawn", name or f"nspawn-{c.init.pid}", name, {"nspawn.pid": str(starter.pid)})
    for path in c.cgroup_paths():
        if m := SCOPE.search(path):
            name = m.group(1).replace("\\x2d", "-")
            return Identity("systemd-nspawn", name, name, {"cgroup": path})
    return None

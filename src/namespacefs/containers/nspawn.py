"""systemd-nspawn: the machine name from the nspawn command line (`--machine`, `-M`, else the
basename of `-D`/`--directory` or `-i`/`--image`), or from a `machine-NAME.scope` cgroup."""

from __future__ import annotations

import os
import re

from namespacefs.containers.candidate import Candidate, option, unit_identity
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
    return unit_identity("systemd-nspawn", SCOPE, c)

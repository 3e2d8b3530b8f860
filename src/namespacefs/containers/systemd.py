"""systemd services with private namespaces (PrivateTmp=, PrivateNetwork=, ProtectHostname= …):
the unit from the init's cgroup path (`…/NAME.service`)."""

from __future__ import annotations

import re

from namespacefs.containers.candidate import Candidate
from namespacefs.containers.model import Identity

UNIT = re.compile(r"/([^/]+\.service)(?:/|$)")


def identify(c: Candidate) -> Identity | None:
    for path in c.cgroup_paths():
        if m := UNIT.search(path):
            unit = m.group(1).replace("\\x2d", "-")
            return Identity("systemd", unit, unit, {"cgroup": path})
    return None

"""systemd services with private namespaces (PrivateTmp=, PrivateNetwork=, ProtectHostname= …):
the unit from the init's cgroup path (`…/NAME.service`), when systemd (pid 1 or a user manager)
started the init; a container that a process of the unit started is not the unit itself."""

from __future__ import annotations

import re

from namespacefs.containers.candidate import Candidate, unit_identity
from namespacefs.containers.model import Identity

UNIT = re.compile(r"/([^/]+\.service)(?:/|$)")


def identify(c: Candidate) -> Identity | None:
    if c.starter is not None and c.starter.pid != 1 and c.starter.comm != "systemd":
        return None  # started by a process of the unit (a script's `unshare`): not the unit's own namespaces
    return unit_identity("systemd", UNIT, c)

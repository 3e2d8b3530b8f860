"""bubblewrap sandboxes and the Flatpak apps that run in them: bwrap's `--hostname`, a Flatpak
app id from the sandbox's `/.flatpak-info`, else `bwrap-PID`."""

from __future__ import annotations

from namespacefs.containers.candidate import Candidate, option
from namespacefs.containers.model import Identity


def _flatpak_app(c: Candidate) -> str | None:
    import configparser  # (only where a Flatpak sandbox is seen: every `nsfs ls` imports this module)

    info = configparser.ConfigParser(interpolation=None)
    try:
        with open(f"{c.proc}/{c.init.pid}/root/.flatpak-info") as f:
            info.read_file(f)
    except (OSError, configparser.Error, UnicodeDecodeError):
        return None
    return info.get("Application", "name", fallback=None)


def identify(c: Candidate) -> Identity | None:
    bwrap = c.init if c.init.comm == "bwrap" else c.starter if c.starter and c.starter.comm == "bwrap" else None
    if bwrap is None:
        return None
    if app := _flatpak_app(c):
        return Identity("flatpak", app, app, {"bwrap.pid": str(bwrap.pid)})
    hostname = option(bwrap.cmdline, "--hostname")
    return Identity("bwrap", hostname or f"bwrap-{bwrap.pid}", None, {"bwrap.pid": str(bwrap.pid)})

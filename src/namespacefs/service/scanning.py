"""The full scan the live service runs: discovery in a child interpreter (the result comes back
pickled), so seconds of scanning on a big host do not hold the daemon's GIL; and the naming pass
the daemon applies to every model it serves (core.name)."""

from __future__ import annotations

import pickle
import subprocess
import sys

from namespacefs.model import Snapshot

__all__ = ["ScanFailed", "core_name", "fresh_snapshot", "scan_in_child"]


def fresh_snapshot() -> Snapshot:
    """A full scan, never through a daemon (the daemon names it itself)."""
    from namespacefs.discover import discover

    return discover()


def core_name(snap: Snapshot) -> Snapshot:
    """core.name: containers recognised, names and name paths applied (a names database that
    cannot be read gives default names, and says so in the log); the database is kept open for
    the next pass of the same thread, and read again only after a commit."""
    from namespacefs import core

    return core.name(snap, None, False, keep=True)


_SCAN_CHILD = ("import pickle, sys\n"
               "from namespacefs.service.scanning import fresh_snapshot\n"
               "sys.stdout.buffer.write(pickle.dumps(fresh_snapshot(), protocol=5))\n")


class ScanFailed(OSError):
    """The scanning child process failed (its last line of stderr says why)."""


def scan_in_child() -> Snapshot:
    """fresh_snapshot() in a child interpreter: a full scan of a big host takes seconds of CPU,
    and in a thread of the daemon it would hold the GIL that requests and partial updates need."""
    done = subprocess.run([sys.executable, "-c", _SCAN_CHILD], capture_output=True, timeout=900, check=False)
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        raise ScanFailed(f"scanning process failed ({lines[-1] if lines else f'status {done.returncode}'})")
    snap = pickle.loads(done.stdout)
    if not isinstance(snap, Snapshot):
        raise ScanFailed("scanning process answered with something else than a snapshot")
    return snap

"""The bindmount source: nsfs files bind-mounted (as `ip netns add` does) in any mount namespace.

One process per mount namespace is enough: its /proc/PID/mountinfo lists that namespace's mounts,
and the bind-mounted file opens through /proc/PID/root/<mountpoint> without entering anything.
The same read gives each mount namespace's mount count for free.
"""

from __future__ import annotations

import errno

from namespacefs import procfs
from namespacefs.discover.processes import read_at
from namespacefs.discover.state import MOUNTS, Scan
from namespacefs.model import Holder


def scan(state: Scan) -> None:
    """Read the mount table of each mount namespace in state.mount_readers not read yet (and not
    claimed by the other reader)."""
    for mntns, readers in state.mount_readers.items():
        if mntns in state.mounts_read or not state.claim(mntns, MOUNTS):
            continue
        read = _first_readable(state, readers)
        if read is None:
            continue  # every reader gone: left for after the merge, when the other's may be alive
        state.mounts_read.add(mntns)
        pid, data = read
        if mntns in state.found:
            state.found[mntns].mounts = data.count(b"\n")
        for nstype, inode, mountpoint in procfs.nsfs_mounts(data):
            holder = Holder("bindmount", pid=pid, mntns=mntns, path=mountpoint)
            state.add(nstype, inode, holder)



def _first_readable(state: Scan, readers: list[int]) -> tuple[int, bytes] | None:
    """The mountinfo of the first reader still alive: a process that exits between the process
    scan and here answers ENOENT, or EINVAL while it is tearing down its mount namespace."""
    for pid in readers:
        try:
            return pid, read_at(f"{state.proc}/{pid}/mountinfo", records=True)  # pages, not one read
        except OSError as e:
            if e.errno == errno.EINVAL:
                state.errors["vanished"] += 1
            else:
                state.failed(e)
    return None

"""The bindmount source: nsfs files bind-mounted (as `ip netns add` does) in any mount namespace.

One process per mount namespace is enough: its /proc/PID/mountinfo lists that namespace's mounts,
and the bind-mounted file opens through /proc/PID/root/<mountpoint> without entering anything.
The same read gives each mount namespace's mount count for free.
"""

from __future__ import annotations

from namespacefs import procfs
from namespacefs.discover.processes import read_at
from namespacefs.discover.state import Scan
from namespacefs.model import Holder


def scan(state: Scan) -> None:
    for mntns, pid in state.mount_readers.items():
        try:
            data = read_at(f"{state.proc}/{pid}/mountinfo")
        except OSError as e:
            state.failed(e)
            continue
        if mntns in state.found:
            state.found[mntns].mounts = data.count(b"\n")
        for nstype, inode, mountpoint in procfs.nsfs_mounts(data):
            holder = Holder("bindmount", pid=pid, mntns=mntns, path=mountpoint)
            state.add(nstype, inode, holder, f"{state.proc}/{pid}/root{mountpoint}")


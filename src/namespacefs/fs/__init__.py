"""The FUSE front end: every namespace as a directory (see layout.py for what is shown).

    from namespacefs.fs import serve, unmount
    serve("/run/namespacefs", allow_other=True)   # blocks until unmounted or signalled
"""

from namespacefs.fs.mounting import DEFAULT_MOUNTPOINT, FSTYPE, MountError, serve, unmount

__all__ = ["DEFAULT_MOUNTPOINT", "FSTYPE", "MountError", "serve", "unmount"]

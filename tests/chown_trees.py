"""Trees for the --chown tests (test_chown_shift.py, and the memory checks that run it in a bare
interpreter): one with every kind of entry the shift treats specially, its full listing, and the
listing the shift must leave. Only the standard library: it is imported under valgrind too."""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

ID_XATTRS = ("system.posix_acl_access", "system.posix_acl_default", "security.capability")
ACL_USER, ACL_GROUP = 0x02, 0x08
#: a POSIX ACL (include/uapi/linux/posix_acl_xattr.h) with a named user 1003 and group 1004
USER_ACL = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in (
    (0x01, 7, 0xFFFFFFFF), (ACL_USER, 5, 1003), (0x04, 5, 0xFFFFFFFF), (ACL_GROUP, 5, 1004),
    (0x10, 7, 0xFFFFFFFF), (0x20, 5, 0xFFFFFFFF)))
CAP_V3 = struct.pack("<IIIIII", 0x03000000 | 1, 1 << 10, 0, 0, 0, 1001)  # for root uid 1001
CAP_V2 = struct.pack("<IIIII", 0x02000000 | 1, 1 << 12, 0, 0, 0)


def odd_dir(d: int) -> bytes:
    return b"d%d" % d if d % 7 else b"d\n%d\xff" % d


def odd_file(i: int) -> bytes:
    return b"f%d" % i if i % 13 else b"n\n%d\xfe\xff" % i


def make_rich(root: Path, dirs: int, files: int) -> None:
    """dirs directories of files entries: owners 1000-1004 (and 7, outside the map), set-user and
    set-group-ID files and directories, ACLs (access and default), v3 and v2 file capabilities,
    symlinks, hard links across directories, names with a newline and with non-UTF-8 bytes."""
    root.mkdir()
    os.chown(root, 1000, 1000)
    first = None
    for d in range(dirs):
        dp = os.path.join(os.fsencode(root), odd_dir(d))
        os.mkdir(dp)
        os.chown(dp, 1000 + d % 5, 1000 + d % 4)
        os.chmod(dp, 0o2775 if d % 3 == 0 else 0o755)
        if d % 11 == 0:
            os.setxattr(dp, "system.posix_acl_default", USER_ACL)
        for i in range(files):
            name = os.path.join(dp, odd_file(i))
            if i % 40 == 39:
                os.symlink(b"f0", name)
                os.lchown(name, 1002, 7)
            elif i % 60 == 59 and first is not None:
                os.link(first, name)
            else:
                _make_file(name, i)
                first = first or name


def _make_file(name: bytes, i: int) -> None:
    fd = os.open(name, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.fchown(fd, 1000 + i % 5 if i % 17 else 7, 1000 + i % 3)
        os.fchmod(fd, (0o4755, 0o2755, 0o6711, 0o644)[i // 9 % 4] if i % 9 == 0 else 0o644)
        if i % 23 == 0:
            os.setxattr(fd, "system.posix_acl_access", USER_ACL)
        if i % 29 == 0:
            os.setxattr(fd, "security.capability", CAP_V3 if i % 2 else CAP_V2)
    finally:
        os.close(fd)


Listing = dict[bytes, tuple[int, int, int, tuple[tuple[str, bytes], ...], bytes | None, int]]


def listing(root: Path) -> Listing:
    """Every entry below root (b"." itself): (type and mode, uid, gid, id-carrying xattrs,
    symlink target, link count)."""
    found: Listing = {}
    top = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [*dirnames, *filenames, *([b"."] if dirpath == top else [])]:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            link = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
            names = os.listxattr(path, follow_symlinks=False) if link is None else []
            xattrs = tuple((x, os.getxattr(path, x, follow_symlinks=False)) for x in ID_XATTRS if x in names)
            found[os.path.relpath(path, top)] = (st.st_mode, st.st_uid, st.st_gid, xattrs, link, st.st_nlink)
    return found


def _move(i: int) -> int:
    return i + 1000 if 1000 <= i < 11000 else i


def _moved_xattr(name: str, value: bytes) -> tuple[str, bytes]:
    if name == "security.capability":
        if len(value) != 24:
            return name, value
        return name, value[:20] + struct.pack("<I", _move(struct.unpack_from("<I", value, 20)[0]))
    entries = [struct.unpack_from("<HHI", value, o) for o in range(4, len(value), 8)]
    return name, value[:4] + b"".join(struct.pack("<HHI", t, p, _move(i) if t in (ACL_USER, ACL_GROUP) else i)
                                      for t, p, i in entries)


def shifted(before: Listing) -> Listing:
    """What listing() must show after a shift by MAP (1000:2000:10000): ids in 1000..10999 moved
    by 1000, in the ACLs and in a v3 capability too; everything else as it was."""
    return {p: (mode, _move(u), _move(g), tuple(_moved_xattr(*x) for x in xs), link, n)
            for p, (mode, u, g, xs, link, n) in before.items()}

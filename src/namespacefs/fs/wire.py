"""The FUSE protocol as the kernel speaks it on /dev/fuse (include/uapi/linux/fuse.h, protocol 7.38):
the request and reply records this filesystem uses, packed and unpacked, and nothing else. No I/O
(fs.session reads and writes the device); the operations (fs.operations) see only the types here.

Why our own and not libfuse (through pyfuse3): pyfuse3's opendir cannot return FOPEN_CACHE_DIR and
its readdir is not told which directory it lists, so the kernel's readdir cache, which lets a
second `ls -R` of a tree that did not change be answered without a single request, is out of its
reach. The protocol itself is small and stable: a header, a fixed record per opcode, replies the
same way.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

#: The protocol version we speak (fuse.h FUSE_KERNEL_VERSION / FUSE_KERNEL_MINOR_VERSION): the
#: kernel speaks the lower of its own and ours.
MAJOR, MINOR = 7, 38
ROOT_INODE = 1  # FUSE_ROOT_ID
#: The largest reply to a read and the read buffer (fuse.h: at least FUSE_MIN_READ_BUFFER, 8 KiB;
#: a request is at most max_write plus its header).
MAX_WRITE = 128 * 1024
BUFFER_SIZE = MAX_WRITE + 4096
MAX_PAGES = MAX_WRITE // 4096


class Op(enum.IntEnum):
    """enum fuse_opcode (only those this filesystem answers other than with ENOSYS)."""

    LOOKUP = 1
    FORGET = 2  # (no reply)
    GETATTR = 3
    SETATTR = 4
    READLINK = 5
    SYMLINK = 6
    MKNOD = 8
    MKDIR = 9
    UNLINK = 10
    RMDIR = 11
    RENAME = 12
    LINK = 13
    OPEN = 14
    READ = 15
    STATFS = 17
    RELEASE = 18
    INIT = 26
    OPENDIR = 27
    READDIR = 28
    RELEASEDIR = 29
    ACCESS = 34
    CREATE = 35
    INTERRUPT = 36  # (no reply)
    DESTROY = 38
    BATCH_FORGET = 42  # (no reply)
    READDIRPLUS = 44
    RENAME2 = 45


#: Requests the kernel expects no reply to.
NO_REPLY = frozenset({Op.FORGET, Op.BATCH_FORGET, Op.INTERRUPT})

# FUSE_INIT flags (fuse.h): what we ask for, when the kernel offers it.
ASYNC_READ = 1 << 0
BIG_WRITES = 1 << 5
DO_READDIRPLUS = 1 << 13
PARALLEL_DIROPS = 1 << 18
MAX_PAGES_FLAG = 1 << 22
NO_OPENDIR_SUPPORT = 1 << 24  # the kernel accepts ENOSYS to OPENDIR: it then caches listings itself
WANTED = ASYNC_READ | BIG_WRITES | DO_READDIRPLUS | PARALLEL_DIROPS | MAX_PAGES_FLAG

# fuse_open_out.open_flags
FOPEN_DIRECT_IO = 1 << 0

# renameat2(2) flags, as FUSE_RENAME2 carries them (linux/fs.h)
RENAME_NOREPLACE = 1 << 0
RENAME_EXCHANGE = 1 << 1

# enum fuse_notify_code
NOTIFY_INVAL_INODE = 2
NOTIFY_INVAL_ENTRY = 3

IN_HEADER = struct.Struct("<IIQQIIIHH")  # fuse_in_header: len opcode unique nodeid uid gid pid extlen pad
OUT_HEADER = struct.Struct("<IiQ")  # fuse_out_header: len error unique
_INIT_IN = struct.Struct("<IIII")  # fuse_init_in: major minor max_readahead flags (then flags2, unused)
_INIT_OUT = struct.Struct("<IIIIHHIIHHI28x")  # fuse_init_out (64 bytes)
_ATTR = struct.Struct("<QQQQQQIIIIIIIIII")  # struct fuse_attr (88 bytes)
_ENTRY_HEAD = struct.Struct("<QQQQII")  # fuse_entry_out before its fuse_attr
_ATTR_HEAD = struct.Struct("<QII")  # fuse_attr_out before its fuse_attr
_OPEN_OUT = struct.Struct("<QII")
_STATFS_OUT = struct.Struct("<QQQQQIIII24x")  # struct fuse_kstatfs (80 bytes)
_DIRENT = struct.Struct("<QQII")  # struct fuse_dirent before its name
_INVAL_ENTRY = struct.Struct("<QII")
_INVAL_INODE = struct.Struct("<Qqq")
_U32x2 = struct.Struct("<II")
_U64 = struct.Struct("<Q")
_READ_IN = struct.Struct("<QQI")  # fuse_read_in: fh offset size (then read_flags, lock_owner, ...)
_RENAME2_IN = struct.Struct("<QI4x")


class FUSEError(Exception):
    """The one error a request handler raises: the request fails with this errno."""

    def __init__(self, errno: int) -> None:
        super().__init__(errno)
        self.errno = errno


@dataclass(frozen=True, slots=True)
class Context:
    """Who makes a request (fuse_in_header): the caller's uid, gid and thread id."""

    uid: int
    gid: int
    pid: int


@dataclass(slots=True)
class Attributes:
    """What a lookup or getattr answers: struct fuse_attr and how long the kernel may keep it."""

    st_ino: int = 0
    st_mode: int = 0
    st_nlink: int = 1
    st_uid: int = 0
    st_gid: int = 0
    st_size: int = 0
    st_blksize: int = 4096
    st_atime_ns: int = 0
    st_mtime_ns: int = 0
    st_ctime_ns: int = 0
    entry_timeout: float = 0.0
    attr_timeout: float = 0.0

    def packed(self) -> bytes:
        def split(ns: int) -> tuple[int, int]:
            return ns // 1_000_000_000, ns % 1_000_000_000
        (a, an), (m, mn), (c, cn) = split(self.st_atime_ns), split(self.st_mtime_ns), split(self.st_ctime_ns)
        blocks = (self.st_size + 511) // 512
        return _ATTR.pack(self.st_ino, self.st_size, blocks, a, m, c, an, mn, cn, self.st_mode, self.st_nlink,
                          self.st_uid, self.st_gid, 0, self.st_blksize, 0)


@dataclass(frozen=True, slots=True)
class FileInfo:
    """What an open answers: our handle and whether the kernel bypasses its page cache."""

    fh: int
    direct_io: bool = True


@dataclass(frozen=True, slots=True)
class Statfs:
    files: int
    bsize: int = 4096
    namemax: int = 255


@dataclass(frozen=True, slots=True)
class Request:
    """One request read from the device: its header and the record after it."""

    opcode: int
    unique: int
    nodeid: int
    context: Context
    body: bytes

    @classmethod
    def parse(cls, data: bytes) -> Request:
        length, opcode, unique, nodeid, uid, gid, pid, _extlen, _pad = IN_HEADER.unpack_from(data)
        return cls(opcode, unique, nodeid, Context(uid, gid, pid), data[IN_HEADER.size:length])

    def names(self, skip: int = 0) -> list[bytes]:
        """The NUL-terminated names of the body after `skip` bytes (lookup, rename, symlink...)."""
        return self.body[skip:].split(b"\0")[:-1]

    def u32(self) -> int:
        """The first u32 of the body (the flags of open, the mask of access, ...)."""
        return int(_U32x2.unpack_from(self.body)[0])

    def u64(self) -> int:
        """The first u64 of the body (the fh of release and releasedir, the newdir of rename)."""
        return int(_U64.unpack_from(self.body)[0])

    def read_in(self) -> tuple[int, int, int]:
        """(fh, offset, size) of a read or readdir."""
        fh, offset, size = _READ_IN.unpack_from(self.body)
        return fh, offset, size

    def rename2_in(self) -> tuple[int, int]:
        newdir, flags = _RENAME2_IN.unpack_from(self.body)
        return newdir, flags

    def init_in(self) -> tuple[int, int, int, int]:
        """(major, minor, max_readahead, flags) the kernel offers."""
        major, minor, readahead, flags = _INIT_IN.unpack_from(self.body)
        return major, minor, readahead, flags


def reply(unique: int, payload: bytes = b"", error: int = 0) -> bytes:
    """A whole reply: the header (error negative, as the kernel wants it) and the record."""
    return OUT_HEADER.pack(OUT_HEADER.size + len(payload), -error, unique) + payload


def init_out(minor: int, max_readahead: int, flags: int) -> bytes:
    """fuse_init_out: our version, limits, and the flags both sides have."""
    return _INIT_OUT.pack(MAJOR, minor, max_readahead, flags, 16, 12, MAX_WRITE, 1, MAX_PAGES, 0, 0)


def _seconds(timeout: float) -> tuple[int, int]:
    whole = int(timeout)
    return whole, int((timeout - whole) * 1e9)


def entry_out(a: Attributes) -> bytes:
    """fuse_entry_out: the node, its attributes, and how long its name and attributes stay valid."""
    entry_s, entry_ns = _seconds(a.entry_timeout)
    attr_s, attr_ns = _seconds(a.attr_timeout)
    return _ENTRY_HEAD.pack(a.st_ino, 0, entry_s, attr_s, entry_ns, attr_ns) + a.packed()


def attr_out(a: Attributes) -> bytes:
    attr_s, attr_ns = _seconds(a.attr_timeout)
    return _ATTR_HEAD.pack(attr_s, attr_ns, 0) + a.packed()


def open_out(fh: int, open_flags: int = 0) -> bytes:
    """fuse_open_out: our handle, and FOPEN_* flags (none: the kernel caches nothing of it)."""
    return _OPEN_OUT.pack(fh, open_flags, 0)


def statfs_out(s: Statfs) -> bytes:
    return _STATFS_OUT.pack(0, 0, 0, s.files, 0, s.bsize, s.namemax, s.bsize, 0)


class Listing:
    """The reply to one readdir(plus): the entries from an offset on that fit in `size` bytes. Each
    entry's offset is the one of the entry after it, as the kernel asks again from there."""

    def __init__(self, size: int, plus: bool) -> None:
        self.size, self.plus = size, plus
        self.parts: list[bytes] = []
        self.used = 0

    def add(self, name: bytes, attrs: Attributes, next_offset: int) -> bool:
        """Add one entry; False (and nothing added) when it does not fit: the listing is full."""
        dirent = _DIRENT.pack(attrs.st_ino, next_offset, len(name), (attrs.st_mode >> 12) & 0o17) + name
        record = (entry_out(attrs) if self.plus else b"") + dirent
        record += b"\0" * (-len(record) % 8)  # FUSE_DIRENT_ALIGN: records are 64-bit aligned
        if self.used + len(record) > self.size:
            return False
        self.parts.append(record)
        self.used += len(record)
        return True

    def packed(self) -> bytes:
        return b"".join(self.parts)


def inval_entry(parent: int, name: bytes) -> bytes:
    """FUSE_NOTIFY_INVAL_ENTRY: the kernel forgets its cached name `name` in directory `parent`."""
    record = _INVAL_ENTRY.pack(parent, len(name), 0) + name + b"\0"
    return OUT_HEADER.pack(OUT_HEADER.size + len(record), NOTIFY_INVAL_ENTRY, 0) + record


def inval_inode(ino: int) -> bytes:
    """FUSE_NOTIFY_INVAL_INODE over the whole node: its attributes and cached pages, which for a
    directory are the kernel's cached listing of it."""
    record = _INVAL_INODE.pack(ino, 0, 0)
    return OUT_HEADER.pack(OUT_HEADER.size + len(record), NOTIFY_INVAL_INODE, 0) + record

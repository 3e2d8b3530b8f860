"""Id arithmetic of a shift: ids through a map, and the ids inside the xattrs that carry them.

    system.posix_acl_access/default   include/uapi/linux/posix_acl_xattr.h: a u32 version, then
                                      {u16 tag, u16 perm, u32 id} entries (little endian); the
                                      ACL_USER and ACL_GROUP entries carry an id
    security.capability               include/uapi/linux/capability.h: struct vfs_ns_cap_data,
                                      a v3 capability (24 bytes) carries the root uid it is for
"""

from __future__ import annotations

import struct
from typing import Final

from namespacefs.ops.shift import IdMap, apply_map

ACL_XATTRS: Final = ("system.posix_acl_access", "system.posix_acl_default")
CAP_XATTR: Final = "security.capability"
ACL_USER, ACL_GROUP = 0x02, 0x08  # include/uapi/linux/posix_acl.h tags that carry an id
VFS_CAP_REVISION_3: Final = 0x03000000
_ACL_ENTRY: Final = struct.Struct("<HHI")


def shift_id(idmap: IdMap, ident: int) -> int:
    """The id the map gives ident; ident itself where the map does not cover it (left alone)."""
    new = apply_map(idmap, ident)
    return ident if new is None else new


def shift_acl(value: bytes, uid_map: IdMap, gid_map: IdMap) -> bytes:
    """A posix_acl xattr with its user and group ids mapped (anything malformed is left as it is)."""
    if len(value) < 4 or (len(value) - 4) % 8:
        return value
    out = bytearray(value[:4])
    for tag, perm, ident in _ACL_ENTRY.iter_unpack(value[4:]):
        if tag == ACL_USER:
            ident = shift_id(uid_map, ident)
        elif tag == ACL_GROUP:
            ident = shift_id(gid_map, ident)
        out += _ACL_ENTRY.pack(tag, perm, ident)
    return bytes(out)


def shift_cap(value: bytes, uid_map: IdMap) -> bytes:
    """security.capability with the root uid of a v3 capability mapped (v2 carries none)."""
    if len(value) == 24 and struct.unpack_from("<I", value)[0] & 0xFF000000 == VFS_CAP_REVISION_3:
        rootid = struct.unpack_from("<I", value, 20)[0]
        return value[:20] + struct.pack("<I", shift_id(uid_map, rootid))
    return value


def shift_xattr(name: str, value: bytes, uid_map: IdMap, gid_map: IdMap) -> bytes:
    """The value an id-carrying xattr gets."""
    return shift_cap(value, uid_map) if name == CAP_XATTR else shift_acl(value, uid_map, gid_map)


ID_XATTRS: Final = (*ACL_XATTRS, CAP_XATTR)  # every xattr that carries ids


def dropped_by_chown(name: str) -> bool:
    """The kernel removes a file capability on chown (security_inode_killpriv): a missing one is
    the state to change, and one whose value the shift keeps is still recorded, to be put back."""
    return name == CAP_XATTR


def recorded_xattr(name: str, old: bytes, uid_map: IdMap, gid_map: IdMap) -> bytes | None:
    """The new value the plan records for an id-carrying xattr, or None when it needs nothing."""
    new = shift_xattr(name, old, uid_map, gid_map)
    return new if new != old or dropped_by_chown(name) else None

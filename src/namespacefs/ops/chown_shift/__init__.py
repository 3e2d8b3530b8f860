"""Id shifting by rewriting ownership, for filesystems that cannot be idmapped.

Every file of a tree whose uid or gid the map covers gets the mapped ids, and so do the uids and
gids in its POSIX ACLs (system.posix_acl_access/default) and the root id of a v3 file capability.
set-user/group-ID bits and file capabilities, which the kernel drops on chown, are put back.

A journal (SQLite, outside the tree) makes the run safe to interrupt:

1. plan   the tree is walked and, for every file that will change, its name with its old and new
          uid, gid, mode and id-carrying xattrs is committed (one row per directory), before
          anything is touched (planning);
2. apply  threads rewrite the files a chunk of directories at a time; each finished chunk is marked
          done (workers). The per-entry work of both phases is C (namespacefs._tree, via tree);
3. resume or roll back after a crash: every entry of a not-done directory is compared with its
          recorded old and new state, so a file changed just before the crash is recognised and
          never shifted twice. A file in neither state (changed by someone else since) is recorded
          as a conflict and left alone.

    ids       the id arithmetic (maps, ACL and capability xattr bytes)
    journal   the SQLite journal and every statement run on it; rows as named records
    tree      the compiled per-directory plan and apply (namespacefs._tree), typed
    planning  the walk that records the plan
    workers   applying (and undoing) the plan; Conflict
    runs      start, resume, roll back, report
"""

from namespacefs.ops.chown_shift.ids import ACL_XATTRS, CAP_XATTR, shift_acl, shift_cap, shift_id
from namespacefs.ops.chown_shift.journal import (
    DEFAULT_JOURNAL_DIR,
    Journal,
    Row,
    Status,
    default_journal,
    existing_journal,
    open_journal,
)
from namespacefs.ops.chown_shift.planning import plan
from namespacefs.ops.chown_shift.runs import Progress, chown_shift, conflicts, resume, rollback, status
from namespacefs.ops.chown_shift.workers import CHUNK, Conflict, apply_rows

__all__ = [
    "ACL_XATTRS",
    "CAP_XATTR",
    "CHUNK",
    "DEFAULT_JOURNAL_DIR",
    "Conflict",
    "Journal",
    "Progress",
    "Row",
    "Status",
    "apply_rows",
    "chown_shift",
    "conflicts",
    "default_journal",
    "existing_journal",
    "open_journal",
    "plan",
    "resume",
    "rollback",
    "shift_acl",
    "shift_cap",
    "shift_id",
    "status",
]

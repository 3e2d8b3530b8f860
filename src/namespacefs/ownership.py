"""Whose files namespacefs trusts: the one rule for the token file, the API socket's directory and
the names database (with its -wal and -shm), and the one way it creates them.

A file or directory is trusted when it is owned by root or by the user running namespacefs, and no
one else can write to it (neither group- nor world-writable) — for a directory, because anyone who
can write there can plant the file we are about to open (a token of their own, a socket that
answers for the daemon, a database whose -wal rewrites our names). A file must be a regular file,
not a symlink (a symlink in a trusted directory was put there by someone we trust, but it may point
anywhere: we open nothing through one). Anything else is refused with a message that says whose and
what mode it is; nothing is ever chmod-ed or chown-ed behind the user's back.

New files are created with O_CREAT | O_EXCL | O_NOFOLLOW (a file or link planted between a check
and the create makes the create fail, never write through it).
"""

from __future__ import annotations

import os
import stat


class Untrusted(Exception):
    """A file or directory namespacefs refuses to use; str() says why, for the user."""


def _owner(st: os.stat_result) -> str:
    return "root" if st.st_uid == 0 else f"uid {st.st_uid}"


def _problem(path: str, st: os.stat_result, what: str) -> str | None:
    if st.st_uid not in (0, os.geteuid()):
        return f"{what} {path} is owned by {_owner(st)}, not by root or by you"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return (f"{what} {path} is writable by others (mode {stat.S_IMODE(st.st_mode):04o}); "
                f"make it writable by its owner only (chmod go-w {path})")
    return None


def check_dir(path: str, what: str) -> None:
    """Raise Untrusted unless the directory is trusted (see the module's docstring); a missing one is fine."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise Untrusted(f"{what} {path}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise Untrusted(f"{what} {path} is not a directory")
    problem = _problem(path, st, what)
    if problem:
        raise Untrusted(problem)


def check_file(path: str, what: str) -> bool:
    """Raise Untrusted unless path is a trusted regular file in a trusted directory; False when it does not exist."""
    check_dir(os.path.dirname(os.path.abspath(path)) or "/", f"the directory of {what}")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise Untrusted(f"{what} {path}: {e.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise Untrusted(f"{what} {path} is a symbolic link; give the file itself")
    if stat.S_ISDIR(st.st_mode):
        raise Untrusted(f"{what} {path}: Is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise Untrusted(f"{what} {path} is not a regular file")
    problem = _problem(path, st, what)
    if problem:
        raise Untrusted(problem)
    return True


def create_file(path: str, mode: int = 0o600) -> int:
    """A new file (O_EXCL | O_NOFOLLOW), open for writing; FileExistsError when anything is there."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)


def make_dir(path: str, what: str, mode: int = 0o700) -> None:
    """Create the directory (and its parents) if missing, then check it is trusted."""
    try:
        os.makedirs(path, mode=mode, exist_ok=True)
    except OSError as e:
        raise Untrusted(f"cannot create {what} {path}: {e.strerror}") from None
    check_dir(path, what)

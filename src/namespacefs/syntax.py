"""What a user types, checked in one place: the number parser and the name validator.

Python's own `int()` and `str.isdigit()` accept far more than a number on a command line should
be: `int("1_000")`, `int(" 7\\n")`, `int("٣")` (ARABIC-INDIC DIGIT THREE) all succeed, and
`"²".isdigit()` is true although `int("²")` fails. A pid, an inode, an id, a port or a map entry
here is plain ASCII decimal digits and nothing else; every parser of the project calls
`number()` (or `is_number()` to tell a number from a name), never `int()` on user text.

A name (`nsfs rename`, `mv` in the filesystem, `containers --rename`, an import) is one path
component of valid UTF-8 text that prints as itself: `name_problem()` says what is wrong with
one, and every place that accepts a name calls it.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

ASCII_DIGITS: Final = frozenset("0123456789")
#: A number longer than this is no pid, inode, id or port (2**64 has 20 digits): refused before
#: int() ever sees it (CPython refuses over 4,300 digits with its own error).
MAX_DIGITS: Final = 20
MAX_NAME_BYTES: Final = 255  # a path component (NAME_MAX)
#: Unicode categories a name may not contain: controls (C0, DEL and C1), format characters
#: (bidi overrides that make a name print as another), surrogates (bytes that are not UTF-8),
#: private use, unassigned code points, and line/paragraph separators.
_REFUSED_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
#: What a container's name may not contain, beyond name_problem: a container's path joins names
#: with '/', and its names are shown in columns (white space); each run of these shows as '_'.
CONTAINER_UNSAFE: Final = re.compile(r"[/\s\x00-\x1f]+")
MAX_CONTAINER_NAME: Final = 80


def is_number(text: str) -> bool:
    """Plain ASCII decimal digits, at least one (no sign, no '_', no white space, no other script's digits)."""
    return bool(text) and len(text) <= MAX_DIGITS and all(c in ASCII_DIGITS for c in text)


def number(text: str, what: str = "a number", minimum: int = 0, maximum: int | None = None) -> int:
    """The value of a decimal number typed by a user; ValueError (with a message) for anything
    that is not ASCII digits or lies outside [minimum, maximum]."""
    if not isinstance(text, str) or not is_number(text):
        raise ValueError(f"{what} must be a decimal number (digits 0-9 only), not {printable(text)}")
    value = int(text, 10)
    if value < minimum or (maximum is not None and value > maximum):
        span = f"at least {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ValueError(f"{what} must be {span}, not {text}")
    return value


def printable(text: object, limit: int = 80) -> str:
    """A value quoted for an error message: control characters escaped, surrogates shown as
    \\udcXX, cut to `limit` characters, so a message is always one printable line."""
    shown = repr(text) if isinstance(text, str) and text.isprintable() else ascii(text)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"


def name_problem(name: object) -> str | None:
    """What makes `name` unfit to name a namespace or a container, or None when it is fine."""
    if not isinstance(name, str) or name == "":
        return "a name cannot be empty"
    if name in (".", ".."):
        return f"'{name}' cannot be a name (it means a directory in a path)"
    if "/" in name:
        return f"a name cannot contain '/' (names are path components): {printable(name)}"
    if "\0" in name:
        return f"a name cannot contain a NUL character: {printable(name)}"
    for c in name:
        category = unicodedata.category(c)
        if category in _REFUSED_CATEGORIES:
            if category == "Cs":
                return f"a name must be valid UTF-8 text: {printable(name)}"
            if category == "Cc":
                return f"a name cannot contain control characters: {printable(name)}"
            return f"a name cannot contain {unicodedata.name(c, f'U+{ord(c):04X}')} ({category}): {printable(name)}"
    size = len(name.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        return f"a name can be at most {MAX_NAME_BYTES} bytes long (this one is {size})"
    if name != name.strip():
        return f"a name cannot start or end with white space: {printable(name)}"
    if all(c.isdigit() for c in name):  # also ² or ٣: never a name that passes for a number
        return f"a name cannot be a number ({printable(name)} would be read as a pid, an inode or an id)"
    return None


def container_name_problem(name: str) -> str | None:
    """What makes `name` unfit to name a container (name_problem, then the rule every container
    name is shown by: see safe_container_name), or None when it is fine."""
    problem = name_problem(name)
    if problem is not None:
        return f"{printable(name)} cannot be a container name: {problem}"
    if name != name.strip("._") or CONTAINER_UNSAFE.search(name) or len(name) > MAX_CONTAINER_NAME:
        return (f"'{name}' cannot be a container name (no '/', whitespace or control characters, not empty, "
                f"no leading or trailing '.' or '_', at most {MAX_CONTAINER_NAME} characters)")
    return None


def safe_container_name(name: str) -> str:
    """A name as a container shows it: each run of CONTAINER_UNSAFE characters as '_', no leading
    or trailing '.' or '_', at most MAX_CONTAINER_NAME characters."""
    return (CONTAINER_UNSAFE.sub("_", name).strip("._") or "_")[:MAX_CONTAINER_NAME]

"""`nsfs enter`'s command line: nsenter's options (util-linux 2.42), read as nsenter's getopt reads
them (attached optional arguments: -nFILE, -w/tmp), and options given after TARGET."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from namespacefs.cli import Parser, UserError, whole
from namespacefs.cli.common import PrintVersion
from namespacefs.kernel import NS_TYPES
from namespacefs.syntax import is_number, printable

#: nsenter's letters for the namespace types
LETTERS = {"mnt": "m", "uts": "u", "ipc": "i", "net": "n", "pid": "p", "user": "U", "cgroup": "C", "time": "T"}
LONG = {"mnt": "mount", "uts": "uts", "ipc": "ipc", "net": "net", "pid": "pid", "user": "user",
        "cgroup": "cgroup", "time": "time"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.__class__ = _EnterParser  # nsenter's optional arguments (-nFILE, -w/tmp) need getopt's reading
    _enter_options(parser)
    parser.add_argument("-V", "--version", action=PrintVersion)
    parser.add_argument("-t", "--target", dest="target_spec", type=_target, metavar="PID[:INODE]",
                        help="the target process, as nsenter takes it (instead of TARGET)")
    parser.add_argument("target", nargs="?", help="a container (path, name or engine id), a pid, or a namespace")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, metavar="[OPTIONS] -- CMD",
                        help="the command, after -- (default: the target's shell or /bin/sh)")


def _enter_options(parser: argparse.ArgumentParser) -> None:
    """nsenter's options (util-linux 2.42 nsenter(1)); _nsenter_words turns its attached optional
    arguments (-nFILE, --net=FILE, -w/tmp, -r/srv) into the hidden options below first."""
    for t in NS_TYPES:
        parser.add_argument(f"-{LETTERS[t]}", f"--{LONG[t]}", dest=f"ns_{t}", action="store_true",
                            help=f"enter the {t} namespace (--{LONG[t]}=FILE: the namespace of that file; "
                                 f"--{LONG[t]}=:NSID: by its 64-bit id)")
        parser.add_argument(f"--{LONG[t]}-file", dest=f"file_{t}", metavar="FILE", help=argparse.SUPPRESS)
    parser.add_argument("-a", "--all", action="store_true", help="enter every namespace (the default for a pid or container)")
    parser.add_argument("-S", "--setuid", type=_id_or_follow("UID"), metavar="UID",
                        help="run as this uid ('follow': the target's)")
    parser.add_argument("-G", "--setgid", type=_id_or_follow("GID"), metavar="GID",
                        help="run as this gid ('follow': the target's)")
    parser.add_argument("--preserve-credentials", action="store_true",
                        help="do not become root of an entered user namespace (keep our uid, gid and groups)")
    parser.add_argument("--keep-caps", action="store_true",
                        help="with the user namespace: keep the capabilities it grants across exec")
    parser.add_argument("--user-parent", action="store_true",
                        help="enter the parent user namespace of the user namespace (or the owner of another)")
    parser.add_argument("-N", "--net-socket", type=whole("FD", 0, 2**31 - 1), metavar="FD",
                        help="enter the net namespace of the target's socket FD")
    parser.add_argument("--wd", metavar="DIR",
                        help="working directory, resolved inside (default: the target's; -w alone: the target's "
                             "even without its mount namespace)")
    parser.add_argument("-W", "--wdns", dest="wd", metavar="DIR", help="working directory, resolved inside (as --wd DIR)")
    parser.add_argument("--wd-target", dest="follow_wd", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("-r", "--root", dest="follow_root", action="store_true",
                        help="the target's root directory (the default with its mount namespace); -rDIR, --root=DIR: "
                             "this directory (opened before entering)")
    parser.add_argument("--root-dir", dest="root_dir", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--keep-root", action="store_true", help="keep our root directory in the mount namespace")
    parser.add_argument("-e", "--env", action="store_true", help="the target's environment instead of ours")
    parser.add_argument("-F", "--no-fork", action="store_true",
                        help="do not fork again before exec (a pid namespace then applies to the command's children only)")
    parser.add_argument("-c", "--join-cgroup", action="store_true", help="join the target's cgroup (v2)")
    parser.add_argument("-Z", "--follow-context", action="store_true",
                        help="run with the target's SELinux context (a no-op, said on stderr, where SELinux is off)")
    parser.add_argument("--no-netns-exec", action="store_true",
                        help="a net namespace entered by name: do not do what `ip netns exec NAME` does "
                             "(a private /sys and the /etc/netns/NAME/* bind mounts)")


def _id_or_follow(what: str) -> Callable[[str], int | str]:
    """An argparse type: a uid or gid (ASCII digits, as cli.whole) or 'follow' (nsenter 2.42)."""
    number = whole(what, 0, 2**32 - 2)

    def parse(text: str) -> int | str:
        return text if text == "follow" else number(text)

    parse.__name__ = "int"  # argparse's message: "invalid int value: 'TEXT'"
    return parse


def _target(text: str) -> tuple[int, int | None]:
    """-t PID or -t PID:INODE (nsenter 2.42: the inode of the process's pidfd)."""
    pid, sep, inode = text.partition(":")
    if not is_number(pid) or (sep and not is_number(inode)):
        raise argparse.ArgumentTypeError(f"invalid PID argument: {printable(text)}")
    return whole("PID", 1, 2**22)(pid), int(inode) if sep else None


#: nsenter's short options (getopt "+ahVt:m::u::i::n::N:p::C::U::T::S:G:r::w::W::ecFZ"): those whose
#: argument is optional (only ever attached) and those that need one
_OPTIONAL_ARG = {**{LETTERS[t]: f"--{LONG[t]}-file" for t in NS_TYPES}, "r": "--root-dir", "w": "--wd"}
_REQUIRED_ARG = frozenset("tSGNW")
_LONG_OPTIONAL = {**{f"--{LONG[t]}": f"--{LONG[t]}-file" for t in NS_TYPES}, "--root": "--root-dir", "--wd": "--wd"}
_LONG_REQUIRED = frozenset({"--target", "--setuid", "--setgid", "--net-socket", "--wdns", "--sources",
                            "--oci-root", "--db"})


def _nsenter_words(words: list[str]) -> list[str]:
    """The option words before TARGET (or nsenter's command) as getopt reads them, in the forms the
    parser takes: -nFILE and --net=FILE become --net-file FILE, -mu is -m with the file 'u' (as in
    nsenter), -w alone the target's working directory and -w/tmp that directory. `--wd DIR` (two
    words) keeps its older nsfs meaning. Words from the first non-option on are left alone."""
    out: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        if word == "--" or not word.startswith("-") or word == "-":
            return out + words[i:]
        read = _long_option if word.startswith("--") else _short_options
        taken, used = read(word, words[i + 1:i + 2])
        out += taken
        i += 1 + used
    return out


def _long_option(word: str, following: list[str]) -> tuple[list[str], int]:
    """One --option word (and the next word, if it takes it): (the words for argparse, 0 or 1 used)."""
    name, eq, value = word.partition("=")
    if name in _LONG_OPTIONAL:
        if eq:
            return [_LONG_OPTIONAL[name], value], 0
        if name == "--wd" and following and not following[0].startswith("-"):
            return ["--wd", following[0]], 1  # the older nsfs form
        return ["--wd-target" if name == "--wd" else name], 0
    if name in _LONG_REQUIRED and not eq and following:
        return [word, following[0]], 1
    return [word], 0


def _short_options(word: str, following: list[str]) -> tuple[list[str], int]:
    """One -abc word of short options, as getopt reads it (an option with an argument ends it)."""
    out: list[str] = []
    for k, letter in enumerate(word[1:], start=1):
        rest = word[k + 1:]
        if letter in _OPTIONAL_ARG:
            if rest:
                return [*out, _OPTIONAL_ARG[letter], rest.removeprefix("=")], 0
            return [*out, "--wd-target" if letter == "w" else f"-{letter}"], 0
        if letter in _REQUIRED_ARG:
            if rest:
                return [*out, f"-{letter}", rest], 0
            if following:
                return [*out, f"-{letter}", following[0]], 1
            return [*out, f"-{letter}"], 0
        out.append(f"-{letter}")
    return out, 0


class _EnterParser(Parser):
    """`nsfs enter`'s parser: reads the words as nsenter's getopt does first (_nsenter_words)."""

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        words = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(_nsenter_words(words), namespace)


class _OptionsAfterTarget(argparse.ArgumentParser):
    """Parses the options that follow TARGET; reports a mistake once, as a UserError, instead of
    printing a second usage text and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"bad options before --: {message}")


def split_enter(args: argparse.Namespace) -> list[str]:
    """Options may also follow TARGET (`nsfs enter web -u -- hostname`): those before `--` are
    parsed here; what follows `--` is the command."""
    words = list(args.cmd)
    if "--" not in words:
        return words
    cut = words.index("--")
    if cut:
        extra = _OptionsAfterTarget(prog="nsfs enter", add_help=False, exit_on_error=False)
        _enter_options(extra)
        try:
            more, unknown = extra.parse_known_args(_nsenter_words(words[:cut]))
        except argparse.ArgumentError as e:
            raise UserError(f"bad options before --: {e}") from None
        if unknown:
            raise UserError(f"unknown options before --: {' '.join(unknown)}")
        for key, value in vars(more).items():
            if value not in (None, False):
                setattr(args, key, value)
    return words[cut + 1:]



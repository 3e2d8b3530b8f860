"""Man pages and shell completion, made from the argument parsers themselves (so they cannot drift
from `nsfs COMMAND --help`): nsfs(1) and one nsfs-COMMAND(1) per command (argparse-manpage), and a
bash completion script (shtab). Both tools are the `docs` extra; bootstrap.sh runs

    python -m namespacefs.cli.manual --man-dir DIR --bash-completion FILE

Files are rewritten only when their content changes (the man page date is the package version's,
not today's), so running it again is a no-op."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from namespacefs.cli import COMMANDS, add_version, build_parser, command_parser

MANUAL = "namespacefs manual"
SEE_ALSO_SERVICE = "systemd.service(5), and the unit namespacefs.service shipped in the package (namespacefs/contrib)"


#: The FILES section of the pages whose command keeps files (roff: .TP tagged paragraphs).
_DB = ".TP\n.I /var/lib/namespacefs/names.db\nthe names database ($NSFS_DB, --db)"
FILES = {
    "serve": ".TP\n.I /run/namespacefs/api.sock\nthe API socket, root only ($NSFS_SOCKET, --socket)\n"
             ".TP\n.I /run/namespacefs-api.sock\nits second name, for when a filesystem is mounted on /run/namespacefs\n"
             ".TP\n.I /run/namespacefs/token\nthe bearer token for --listen (--token-file)\n"
             ".TP\n.I /var/lib/namespacefs/names.db\nthe names database it reads ($NSFS_DB)\n"
             ".TP\n.I /etc/systemd/system/namespacefs.service\nthe systemd unit, as bash bootstrap.sh install-system puts it",
    "rename": _DB, "names": _DB, "ls": _DB,
}


def full_parser() -> argparse.ArgumentParser:
    """`nsfs` with every command's own arguments under its subcommand (what completion needs)."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, (module_name, _help) in COMMANDS.items():
        command = sub.choices[name]
        importlib.import_module(f"namespacefs.cli.{module_name}").add_arguments(command, name)
        add_version(command)
    return parser


def page_name(command: str | None) -> str:
    return "nsfs" if command is None else f"nsfs-{command}"


def man_page(command: str | None) -> str:
    """The roff source of nsfs(1) (command None) or nsfs-COMMAND(1)."""
    from argparse_manpage.manpage import Manpage

    import namespacefs

    parser = build_parser() if command is None else command_parser(command)
    page = Manpage(parser)
    page.prog = page_name(command)  # the title and NAME: nsfs-ls, as man nsfs-ls finds it
    page.source = f"namespacefs {namespacefs.__version__}"
    page.manual = MANUAL
    page.date = namespacefs.__version__
    page.description = "see, name and act on every Linux namespace" if command is None else COMMANDS[command][1]
    others = [f"{page_name(c)}(1)" for c in COMMANDS if c != command]
    see_also = ", ".join(["nsfs(1)"] * (command is not None) + (others if command is None else []))
    extra = {"ls": "lsns(8)", "enter": "nsenter(1), ip-netns(8)", "serve": SEE_ALSO_SERVICE, "watch": "nsfs-serve(1)",
             "mount": "fusermount3(1)", "shift": "mount_setattr(2)"}.get(command or "", "")
    if command in FILES:
        page.add_section("files", ">", FILES[command])
    page.add_section("see also", ">", ", ".join(x for x in (see_also, extra, "namespaces(7)") if x))
    text = str(page)
    if command is None:  # the subcommands are argparse's "positional arguments": call them commands
        text = text.replace(".SH\nPOSITIONAL ARGUMENTS\n", ".SH\nCOMMANDS\n", 1)
    return text


def completion(shell: str = "bash") -> str:
    import shtab

    return shtab.complete(full_parser(), shell=shell)


def _write(path: str, text: str) -> bool:
    """Write if the content differs; True if it was written."""
    try:
        with open(path) as f:
            if f.read() == text:
                return False
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return True


def write_man_pages(directory: str) -> list[str]:
    """nsfs.1 and nsfs-COMMAND.1 in directory (a man1 directory); the paths written."""
    written = []
    for command in (None, *COMMANDS):
        path = os.path.join(directory, f"{page_name(command)}.1")
        if _write(path, man_page(command)):
            written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m namespacefs.cli.manual", description=__doc__.split("\n\n")[0])
    parser.add_argument("--man-dir", metavar="DIR", help="write nsfs.1 and nsfs-COMMAND.1 here (a man1 directory)")
    parser.add_argument("--bash-completion", metavar="FILE", help="write the bash completion script here")
    args = parser.parse_args(argv)
    if not (args.man_dir or args.bash_completion):
        parser.error("nothing to do: give --man-dir and/or --bash-completion")
    written = write_man_pages(args.man_dir) if args.man_dir else []
    if args.bash_completion and _write(args.bash_completion, completion("bash")):
        written.append(args.bash_completion)
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

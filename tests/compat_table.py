"""The lsns/nsenter compatibility table of README.md, read the way the compat tests use it: each row
is one test, keyed by (command, first flag)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

README = Path(__file__).parent.parent / "README.md"


class Row(NamedTuple):
    command: str  # lsns or nsenter
    flag: str  # the first flag of the util-linux cell: -J, --output-all, --TYPE=FILE, NS
    in_debian: bool  # the "in 2.38" column: Debian's util-linux has it
    nsfs: str  # the nsfs cell, without backticks


def rows(command: str) -> list[Row]:
    text = README.read_text()
    body = text[text.index("<!-- compat-table begin -->"):text.index("<!-- compat-table end -->")]
    found = []
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or cells[0] != command:
            continue
        flag = re.findall(r"`([^`]+)`", cells[1])[0].split()[0]
        found.append(Row(cells[0], flag, {"yes": True, "no": False}[cells[2]], cells[3].strip("`")))
    assert found, f"no {command} rows in the README's compatibility table"
    return found


def debian_has(tool: str, flag_words: list[str]) -> bool:
    """Does Debian's util-linux take this flag? (an unknown one: 'invalid option' or 'unrecognized option')"""
    result = subprocess.run([tool, *flag_words], capture_output=True, text=True, timeout=60)
    return not re.search(r"invalid option|unrecognized option", result.stderr)


#: nsfs as the compat tests run it: always its own scan, never a daemon's snapshot
NSFS_ENV = {**os.environ, "NSFS_NO_DAEMON": "1"}


def run_nsfs(command: str, args: tuple[str, ...], check: bool = True) -> subprocess.CompletedProcess[str]:
    """`nsfs COMMAND ARGS…`: never a traceback; with check, a zero exit."""
    result = subprocess.run([sys.executable, "-m", "namespacefs", command, *args], capture_output=True, text=True,
                            timeout=120, env=NSFS_ENV)
    assert "Traceback" not in result.stderr, result.stderr
    assert not check or result.returncode == 0, result.stderr
    return result

"""The package's floor plan holds (docs/architecture.md): every import runs down the layers, the
parts that must not know each other do not, no module grows past what a reader can hold, and the
code is ruff and `mypy --strict` clean."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "namespacefs"

#: The layers, lowest first; a part may import its own layer's modules only where SIBLINGS allows,
#: and any lower layer. Kept in step with the table in docs/architecture.md.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("syntax", "kinds", "kernel", "_walk", "_tree", "_digest", "_events"),  # no I/O policy: numbers, names, syscalls
    ("procfs", "model", "tables", "forking", "ownership"),  # pure parsers, plain data, the one fork
    ("handles", "inside", "tracing"),                     # race-checked handles; running code inside namespaces; tracepoints
    ("discover",),                                        # reading the host: one snapshot
    ("details", "access", "accounting"),                  # reading more about one namespace
    ("containers", "names"),                              # recognising and naming what was read
    ("targets",),                                         # the one selector grammar
    ("core",),                                            # the composition root
    ("mountpoints", "ops"),                               # the code that changes the system
    ("fs", "service"),                                    # front ends
    ("cli", "__main__"),                                  # the command line, over everything
)
#: Same-layer arrows that are allowed (importer -> imported).
SIBLINGS = {("ops", "mountpoints"), ("__main__", "cli"), ("access", "accounting")}
#: Modules that are a part of their own, apart from the package they sit in: ops.inside is the
#: fork-and-setns helper that reading code (accounting, details, access) uses too.
OWN_PART = {"namespacefs.ops.inside": "inside"}
#: Single modules another part may use across a layer: the daemon's client (the FUSE server asks a
#: running daemon for snapshots, as the command line does); the rendering of `nsfs ls` (the daemon
#: answers GET /api/ls with exactly what the command prints, by the command's own code).
SHARED = {("fs", "namespacefs.service.client"), ("service", "namespacefs.cli.rendering")}
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}


def part_of(module: str) -> str:
    """namespacefs.discover.mounts -> discover; namespacefs -> the package itself ("")."""
    if module in OWN_PART:
        return OWN_PART[module]
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else ""


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    pieces = list(rel.parts)
    if pieces[-1] == "__init__":
        pieces.pop()
    return ".".join(pieces)


def imports_of(path: Path) -> set[str]:
    """Every namespacefs module this file imports, at any depth (inside functions too: an import
    deferred to a function is still an arrow)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("namespacefs")}
        elif (isinstance(node, ast.ImportFrom) and node.module and node.level == 0
              and (node.module == "namespacefs" or node.module.startswith("namespacefs."))):
            # `from namespacefs.ops import inside` imports the module namespacefs.ops.inside
            found |= {f"{node.module}.{a.name}" if is_module(f"{node.module}.{a.name}") else node.module
                      for a in node.names}
    return found


def is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def upward_arrows() -> list[str]:
    wrong = []
    for path in modules():
        here = part_of(module_name(path))
        for target in imports_of(path):
            there = part_of(target)
            if there in ("", here) or (here, target) in SHARED:
                continue
            if here not in RANK or there not in RANK:
                wrong.append(f"{module_name(path)} -> {target}: a part missing from LAYERS")
            elif RANK[there] > RANK[here] or (RANK[there] == RANK[here] and (here, there) not in SIBLINGS):
                wrong.append(f"{module_name(path)} -> {target}")
    return wrong


def test_every_import_runs_down_the_layers() -> None:
    assert upward_arrows() == []


def test_the_check_sees_an_arrow_that_runs_up(tmp_path: Path) -> None:
    planted = tmp_path / "probe.py"
    planted.write_text("from namespacefs.cli import main\nimport namespacefs.service.client\n"
                       "def later() -> None:\n    from namespacefs import core\n    from namespacefs.ops import inside\n")
    assert imports_of(planted) == {"namespacefs.cli", "namespacefs.service.client", "namespacefs.core",
                                   "namespacefs.ops.inside"}
    assert RANK["cli"] > RANK["core"] > RANK["names"] > RANK["kernel"]


def test_every_part_of_the_package_has_a_layer() -> None:
    parts = {part_of(module_name(p)) for p in modules()} - {""}
    assert parts <= set(RANK), parts - set(RANK)
    assert set(OWN_PART) <= {module_name(p) for p in modules()}


def test_no_module_is_longer_than_400_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in modules() if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


def _tool(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name(name)
    if not exe.exists():
        pytest.fail(f"{exe} is missing: bootstrap.sh installs the test extra of pyproject.toml")
    return subprocess.run([str(exe), *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_is_clean_with_complexity_at_most_12() -> None:
    done = _tool("ruff", "check", "--output-format", "concise", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_strict_is_clean_on_the_package() -> None:
    done = _tool("mypy")  # files and strictness from [tool.mypy] in pyproject.toml
    assert done.returncode == 0, done.stdout + done.stderr

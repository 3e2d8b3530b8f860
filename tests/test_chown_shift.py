"""`nsfs shift --chown` on real trees (tmpfs and ext4 on a loop device, made here): a full listing
(owner, mode with set-id bits, ACLs, file capability, symlink target) compared before and after a
shift and its rollback; runs killed part way then resumed to the same end state as an uninterrupted
run, or rolled back; symlinks not followed, mount points not crossed, hard links, a directory of
more than 10,000 entries, names with newlines and non-UTF-8 bytes; a journal of the old schema
refused in one line; the compiled part (_tree.c) under valgrind and AddressSanitizer."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from chown_trees import Listing, listing, make_rich, odd_dir, odd_file, shifted
from compiled import asan_run, valgrind_errors
from conftest import kill_group, nsfs
from namespacefs import _tree, kernel
from namespacefs.ops import chown_shift
from test_shift import kill_mid_run, mounts  # noqa: F401 - the `mounts` fixture

TREE_SOURCE = Path(_tree.__file__).parent / "_tree.c"
MAP = "1000:2000:10000"  # its range overlaps its domain: shifting anything twice shows (2000 -> 3000)


# --- trees -------------------------------------------------------------------------------------


@pytest.fixture(params=["tmpfs", "ext4"])
def fs(request: pytest.FixtureRequest, tmp_path: Path, mounts: list[str]) -> Path:  # noqa: F811
    """An empty filesystem of each kind, mounted below tmp_path (ext4: on a loop device)."""
    path = tmp_path / request.param
    path.mkdir()
    if request.param == "tmpfs":
        kernel.mount("tmpfs", str(path), "tmpfs", 0, "size=512m")
    else:
        image = tmp_path / "ext4.img"
        with open(image, "wb") as f:
            f.truncate(512 << 20)
        subprocess.run(["mkfs.ext4", "-q", "-N", "200000", str(image)], check=True)
        subprocess.run(["mount", "-o", "loop", str(image), str(path)], check=True)
    mounts.append(str(path))
    return path


def rich_tree(fs: Path, tmp_path: Path, dirs: int, files: int) -> tuple[Path, Path, Listing]:
    """make_rich() on fs: the tree, a journal path beside it, and its listing."""
    make_rich(fs / "tree", dirs, files)
    return fs / "tree", tmp_path / "j.db", listing(fs / "tree")


def run(*args: str) -> dict[str, object]:
    out: dict[str, object] = json.loads(nsfs("shift", "--chown", *args, "-J").stdout)
    return out


# --- shift and rollback, whole and interrupted ----------------------------------------------------


def test_shift_then_rollback_restores_every_owner_mode_acl_and_capability(fs: Path, tmp_path: Path) -> None:
    root, journal, before = rich_tree(fs, tmp_path, 30, 120)
    shift_whole(root, journal, before)
    nsfs("unshift", "--chown", str(root), "--journal", str(journal))
    assert listing(root) == before


def shift_whole(root: Path, journal: Path, before: Listing) -> None:
    """A shift by MAP, uninterrupted, and every entry is as shifted() says."""
    status = run(str(root), "--map", MAP, "--journal", str(journal))
    assert status["state"] == "done" and status["conflicts"] == 0 and status["done"] == status["total"]
    assert listing(root) == shifted(before)


def test_a_killed_run_resumes_to_the_end_state_of_an_uninterrupted_run(tmp_path: Path, fs: Path) -> None:
    whole, cut = fs / "whole", fs / "cut"
    make_rich(whole, 200, 200)
    make_rich(cut, 200, 200)
    before = listing(cut)
    assert listing(whole) == before
    shift_whole(whole, tmp_path / "whole.db", before)
    done, total = kill_mid_run(cut, tmp_path / "cut.db", "--map", MAP)
    assert 0 < done < total
    assert listing(cut) != listing(whole)
    status = run(str(cut), "--resume", "--journal", str(tmp_path / "cut.db"))
    assert status["state"] == "done" and status["conflicts"] == 0 and status["done"] == total
    assert listing(cut) == listing(whole) == shifted(before)


def test_a_killed_run_rolls_back(tmp_path: Path, fs: Path) -> None:
    root, journal, before = rich_tree(fs, tmp_path, 200, 200)
    done, total = kill_mid_run(root, journal, "--map", MAP)
    assert 0 < done < total
    roll_back(root, journal, before)


def roll_back(root: Path, journal: Path, before: Listing) -> None:
    """--rollback, and root is as it was before the shift."""
    status = run(str(root), "--rollback", "--journal", str(journal))
    assert status["state"] == "rolled-back" and status["conflicts"] == 0
    assert listing(root) == before


def test_a_killed_rollback_is_finished_by_the_next(tmp_path: Path, fs: Path) -> None:
    root, journal, before = rich_tree(fs, tmp_path, 200, 200)
    status = run(str(root), "--map", MAP, "--journal", str(journal))
    proc = subprocess.Popen([sys.executable, "-m", "namespacefs", "unshift", "--chown", str(root), "--journal", str(journal),
                             "--jobs", "1", "--no-progress"], start_new_session=True, stdout=subprocess.DEVNULL)
    try:  # killed once some but not all directories are marked rolled back
        while (left := shifted_files(journal)) == status["total"]:
            assert proc.poll() is None, "the rollback finished before it could be interrupted"
            time.sleep(0.002)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        kill_group(proc)
    assert 0 < left < status["total"] and chown_shift.status(str(root), str(journal)).state == "rolling-back"
    roll_back(root, journal, before)


def shifted_files(journal: Path) -> int:
    """How many recorded files the journal marks shifted (read as the tests read it, with SQL)."""
    with contextlib.suppress(sqlite3.OperationalError):
        db = sqlite3.connect(journal, timeout=1)
        try:
            return int(db.execute("SELECT coalesce(sum(count * done), 0) FROM dirs").fetchone()[0])
        finally:
            db.close()
    return -1


def listing_owner(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid


# --- what is not followed, crossed or counted twice --------------------------------------------------


def test_symlinks_are_not_followed_and_mount_points_not_crossed(tmp_path: Path, fs: Path, mounts: list[str]) -> None:  # noqa: F811
    root, outside, journal = fs / "tree", fs / "outside", tmp_path / "j.db"
    make_rich(root, 3, 5)
    outside.mkdir()
    (outside / "secret").write_text("x")
    os.chown(outside, 1000, 1000)
    os.chown(outside / "secret", 1000, 1000)
    os.symlink(outside, root / "to-dir")
    os.symlink(outside / "secret", root / "to-file")
    os.symlink(outside, root / "d1" / "deeper")
    for link in (root / "to-dir", root / "to-file", root / "d1" / "deeper"):
        os.lchown(link, 1000, 1000)
    for sub in ("other-fs", "bound-dir"):
        (root / sub).mkdir()
        os.chown(root / sub, 1000, 1000)
    kernel.mount("tmpfs", str(root / "other-fs"), "tmpfs", 0, "size=1m")
    mounts.append(str(root / "other-fs"))
    (root / "other-fs" / "inner").write_text("x")
    os.chown(root / "other-fs" / "inner", 1000, 1000)
    kernel.mount(str(outside), str(root / "bound-dir"), None, kernel.MS_BIND, None)  # the same filesystem
    mounts.append(str(root / "bound-dir"))
    (root / "bound-file").write_text("y")
    kernel.mount(str(outside / "secret"), str(root / "bound-file"), None, kernel.MS_BIND, None)
    mounts.append(str(root / "bound-file"))

    run(str(root), "--map", MAP, "--journal", str(journal))
    assert listing_owner(outside) == listing_owner(outside / "secret") == (1000, 1000)
    assert listing_owner(root / "other-fs" / "inner") == (1000, 1000)
    assert listing_owner(root / "to-dir") == listing_owner(root / "d1" / "deeper") == (2000, 2000)  # lchown'ed
    assert os.readlink(root / "to-dir") == str(outside)
    assert listing_owner(root / "d1") == (2001, 2001)


def test_hard_links_are_shifted_once(tmp_path: Path, fs: Path) -> None:
    root, journal = fs / "tree", tmp_path / "j.db"
    for d in ("a", "b", "c"):
        (root / d).mkdir(parents=True)
    first = root / "a" / "f"
    first.write_text("x")
    os.chown(first, 1005, 1006)
    for other in (root / "a" / "g", root / "b" / "f", root / "c" / "f"):
        os.link(first, other)
    status = run(str(root), "--map", MAP, "--journal", str(journal))
    assert status["total"] == 1 and status["done"] == 1  # (the directories are root's, outside the map)
    assert {listing_owner(p) for p in root.rglob("f")} == {(2005, 2006)}
    nsfs("shift", "--chown", str(root), "--rollback", "--journal", str(journal))
    assert {listing_owner(p) for p in root.rglob("*") if p.is_file()} == {(1005, 1006)}


def test_a_directory_of_more_than_10000_entries(tmp_path: Path, fs: Path) -> None:
    root, journal = fs / "tree", tmp_path / "j.db"
    root.mkdir()
    os.chown(root, 1000, 1000)
    for i in range(12_000):
        fd = os.open(root / f"entry-with-a-longer-name-{i:06d}", os.O_CREAT | os.O_WRONLY, 0o644)
        os.fchown(fd, 1000 + i % 3, 1000)
        os.close(fd)
    before = listing(root)
    status = run(str(root), "--map", MAP, "--journal", str(journal))
    assert status["total"] == status["done"] == 12_001
    assert listing(root) == shifted(before)
    nsfs("shift", "--chown", str(root), "--rollback", "--journal", str(journal))
    assert listing(root) == before


def test_conflicts_on_odd_names_are_one_line_each(tmp_path: Path) -> None:
    root, journal = tmp_path / "tree", tmp_path / "j.db"
    make_rich(root, 8, 14)
    db = chown_shift.open_journal(str(journal))
    chown_shift.plan(db, str(root), ((1000, 2000, 10000),), ((1000, 2000, 10000),))
    db.close()
    odd = os.path.join(os.fsencode(root), odd_dir(0), odd_file(0))  # (a set-user-ID file, owned by 7:1000)
    os.chown(odd, 4242, 4242)
    result = nsfs("shift", "--chown", str(root), "--resume", "--journal", str(journal), "-J", check=False)
    info = json.loads(result.stdout)
    assert result.returncode == 1 and info["conflicts"] == 1
    (path, why), = info["conflict_examples"]
    assert "\n" not in path and path == "d\\n0\\xff/n\\n0\\xfe\\xff" and why == "owned by 4242:4242, expected 7:1000"
    shown = nsfs("shift", "--chown", str(root), "--status", "--journal", str(journal), check=False).stderr
    assert shown == "  conflict: d\\n0\\xff/n\\n0\\xfe\\xff: owned by 4242:4242, expected 7:1000\n"
    assert listing_owner(Path(os.fsdecode(odd))) == (4242, 4242)


# --- the journal ---------------------------------------------------------------------------------

OLD_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE entries (id INTEGER PRIMARY KEY, path BLOB NOT NULL, old_uid INTEGER, old_gid INTEGER, new_uid INTEGER,
                      new_gid INTEGER, mode INTEGER, xattrs TEXT, done INTEGER NOT NULL DEFAULT 0, note TEXT);
INSERT INTO meta VALUES ('state', 'running');
"""


def test_a_journal_of_the_old_schema_is_refused_in_one_line(tmp_path: Path) -> None:
    root, journal = tmp_path / "tree", tmp_path / "old.db"
    root.mkdir()
    db = sqlite3.connect(journal)
    db.executescript(OLD_SCHEMA)
    db.close()
    for args in (["--resume"], ["--rollback"], ["--status"], ["--map", "0:1:1"]):
        result = nsfs("shift", "--chown", str(root), *args, "--journal", str(journal), check=False)
        assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
        assert "older namespacefs (schema 1" in result.stderr
    with sqlite3.connect(journal) as db:  # and it is left as it was
        assert db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").fetchall() == [
            ("entries",), ("meta",)]


# --- the compiled part's memory ---------------------------------------------------------------------

RUN_TREE = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, sys.argv[1])
    import _tree
    sys.modules["namespacefs._tree"] = _tree  # the build under test, under the package's code
    sys.path.insert(0, sys.argv[2])
    from chown_trees import make_rich
    from pathlib import Path
    from namespacefs.ops.chown_shift import journal, planning, workers
    root = Path(sys.argv[3]) / "tree"
    make_rich(root, 4, 30)
    db = journal.open_journal(sys.argv[3] + "/j.db")
    planning.plan(db, str(root), ((1000, 2000, 10000),), ((1000, 2000, 10000),), 2)
    os.chown(root / "d1" / "f2", 4242, 4242)                    # a conflict
    os.rename(root / "d2", root.parent / "gone")                # a directory gone
    forward, back = workers.run(db, os.fsencode(root), True, 2), workers.run(db, os.fsencode(root), False, 2)
    print("conflicts", forward[1], _tree.__file__)
""")


def test_the_tree_code_runs_clean_under_valgrind(tmp_path: Path) -> None:
    """No invalid read or write, no use of uninitialised memory and no definite leak with a stack in
    _tree.c, over a plan, a shift with a conflict and a vanished directory, and a rollback."""
    out, errors = valgrind_errors(TREE_SOURCE, tmp_path, RUN_TREE, str(Path(__file__).parent), str(tmp_path))
    assert str(tmp_path) in out  # the build under test
    assert int(out.split()[1]) > 1  # ran it all: the conflict and the directory gone
    assert not errors, errors


def test_the_tree_code_runs_clean_under_address_sanitizer(tmp_path: Path) -> None:
    assert str(tmp_path) in asan_run(TREE_SOURCE, tmp_path, RUN_TREE, str(Path(__file__).parent), str(tmp_path))



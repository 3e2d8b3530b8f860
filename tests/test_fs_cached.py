"""The filesystem where the kernel caches (no --allow-other): listings stay in the kernel's page
cache and names for a minute, and a rescan that changes something invalidates exactly that. So a
walk of an unchanged tree asks the server nothing, and a change still shows within the bound.
And the FUSE records of fs.wire against the kernel's own header."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import nsfs
from namespacefs.fs import wire
from runtimes import wait_for
from test_fs import live_bound, mounted_for_a_module, ns_inode, read, server_log


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """namespacefs mounted for root only, every request logged (--debug)."""
    yield from mounted_for_a_module(tmp_path_factory, "cached", "--debug")


def requests(mountpoint: Path) -> int:
    return len(re.findall(r"^.*request \w+ node", server_log(mountpoint), re.M))


def walk(mountpoint: Path) -> tuple[list[str], int]:
    """`ls -R` of the mount, and how many directories it listed."""
    out = subprocess.run(["ls", "-R", str(mountpoint)], capture_output=True, text=True, check=False).stdout
    return out.splitlines(), out.count(":\n")


def read_or_none(path: Path) -> str | None:
    """(a name listed a moment before may be gone when it is looked up)"""
    try:
        return read(path)
    except FileNotFoundError:
        return None


def test_a_walk_of_an_unchanged_tree_asks_the_server_next_to_nothing(cached: Path, spawn: Callable[..., Any]) -> None:
    procs = [spawn(["unshare", "--uts", "--ipc", "--net", "sleep", "1000"], stdin=subprocess.DEVNULL) for _ in range(20)]
    wait_for(lambda: all(ns_inode(p.pid, "net") != ns_inode(os.getpid(), "net") for p in procs))
    theirs = {str(ns_inode(p.pid, "uts")) for p in procs}
    assert wait_for(lambda: theirs <= set(os.listdir(cached / "uts")), timeout=live_bound())
    first, dirs = walk(cached)
    assert dirs > 60 and theirs <= set(first)
    for _ in range(3):  # (another test's namespaces may come and go meanwhile: the least of three)
        before = requests(cached)
        second, _ = walk(cached)
        asked = requests(cached) - before
        if asked <= dirs // 20:
            break
    # without the kernel's caches each directory costs at least an opendir, two readdirs and a
    # releasedir (4 requests), and its entry a lookup once the 1 s entry timeout has passed
    assert asked <= dirs // 20, f"{asked} requests for {dirs} directories"
    # and one opendir in all, the first, answered ENOSYS: the kernel opens directories itself since
    assert server_log(cached).count(" request opendir ") == 1
    assert len(second) > dirs


def test_a_cached_listing_shows_a_new_namespace_and_drops_a_dead_one_within_the_bound(
        cached: Path, spawn: Callable[..., Any]) -> None:
    os.listdir(cached / "uts")  # the kernel caches this listing now
    bound = live_bound()
    proc = spawn(["unshare", "--uts", "sleep", "1000"], stdin=subprocess.DEVNULL)
    uts = wait_for(lambda: ns_inode(proc.pid, "uts") != ns_inode(os.getpid(), "uts") and ns_inode(proc.pid, "uts"))
    assert uts
    started = time.monotonic()
    # (the kernel reuses inode numbers at once: the cached listing, and the cached entry of that
    # number, may still be a namespace that died a moment ago, until the rescan that sees both)
    assert wait_for(lambda: str(uts) in os.listdir(cached / "uts")
                    and read_or_none(cached / "uts" / str(uts) / "tasks") == f"{proc.pid}\n", timeout=bound)
    assert time.monotonic() - started < bound
    os.listdir(cached / "uts" / str(uts))  # (and its own listing)

    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    started = time.monotonic()
    assert wait_for(lambda: str(uts) not in os.listdir(cached / "uts") and not (cached / "uts" / str(uts)).exists(),
                    timeout=bound)
    assert time.monotonic() - started < bound


def test_a_rename_shows_in_the_cached_tree_within_the_bound(cached: Path, spawn: Callable[..., Any]) -> None:
    proc = spawn(["unshare", "--net", "sleep", "1000"], stdin=subprocess.DEVNULL)
    net = wait_for(lambda: ns_inode(proc.pid, "net") != ns_inode(os.getpid(), "net") and ns_inode(proc.pid, "net"))
    assert net
    name_file = cached / "net" / str(net) / "name"
    assert wait_for(lambda: name_file.exists(), timeout=live_bound())
    old = read(name_file).strip()
    host_dir = cached / "tree" / read(cached / "user" / str(ns_inode(os.getpid(), "user")) / "name").strip()
    assert wait_for(lambda: old in os.listdir(host_dir), timeout=live_bound())  # cached now, and its entry too
    assert (host_dir / old).resolve() == cached / "net" / str(net)

    nsfs("rename", "--db", str(cached.parent / "names.db"), f"{proc.pid}:net", "cached-web")
    bound = live_bound()
    started = time.monotonic()
    assert wait_for(lambda: "cached-web" in os.listdir(host_dir) and old not in os.listdir(host_dir)
                    and not os.path.lexists(host_dir / old), timeout=bound)
    assert time.monotonic() - started < bound
    assert (host_dir / "cached-web").resolve() == cached / "net" / str(net)


def test_the_records_are_the_sizes_of_the_kernels_header() -> None:
    """fuse.h: fuse_entry_out 128 bytes, fuse_attr_out 104, fuse_init_out 64, fuse_kstatfs 80,
    fuse_in_header 40, fuse_out_header 16; dirents 64-bit aligned."""
    attrs = wire.Attributes(st_ino=7, st_mode=0o40555, st_size=3, st_mtime_ns=1_500_000_000,
                            entry_timeout=1.5, attr_timeout=60.0)
    assert len(wire.entry_out(attrs)) == 128 and len(wire.attr_out(attrs)) == 104
    assert len(wire.init_out(38, 4096, 0)) == 64 and len(wire.statfs_out(wire.Statfs(files=1))) == 80
    assert wire.IN_HEADER.size == 40 and wire.OUT_HEADER.size == 16
    # entry_valid 1 s + 500,000,000 ns, attr_valid 60 s; the mtime 1 s + 500,000,000 ns
    nodeid, _gen, entry_s, attr_s, entry_ns, attr_ns = wire._ENTRY_HEAD.unpack_from(wire.entry_out(attrs))
    assert (nodeid, entry_s, entry_ns, attr_s, attr_ns) == (7, 1, 500_000_000, 60, 0)
    listing = wire.Listing(200, plus=True)
    assert listing.add(b"abc", attrs, 1) and len(listing.packed()) == 128 + 24 + 8
    assert not listing.add(b"too-much", attrs, 2) and len(listing.packed()) == 160  # full: nothing added
    plain = wire.Listing(4096, plus=False)
    assert plain.add(b"abcdefghi", attrs, 1) and len(plain.packed()) == 24 + 16


def test_a_request_is_parsed_as_the_kernel_lays_it_out() -> None:
    body = b"old\0new\0"
    data = wire.IN_HEADER.pack(wire.IN_HEADER.size + 8 + len(body), wire.Op.RENAME, 42, 9, 1000, 100, 4321, 0, 0)
    request = wire.Request.parse(data + (5).to_bytes(8, "little") + body + b"junk after the request")
    assert (request.opcode, request.unique, request.nodeid) == (wire.Op.RENAME, 42, 9)
    assert request.context == wire.Context(1000, 100, 4321)
    assert request.u64() == 5 and request.names(8) == [b"old", b"new"]
    reply = wire.reply(42, error=2)
    assert wire.OUT_HEADER.unpack(reply) == (16, -2, 42)

"""The /proc parsers, on text recorded from a 6.18 kernel: pure functions, no kernel needed."""

from __future__ import annotations

from namespacefs import procfs

STATUS = b"""Name:\tsleep
Umask:\t0022
State:\tZ (zombie)
Tgid:\t812
Ngid:\t0
Pid:\t812
PPid:\t1
TracerPid:\t0
Uid:\t1000\t1001\t1000\t1000
Gid:\t100\t100\t100\t100
Threads:\t1
NSpid:\t812\t1
"""


def test_status_gives_the_fields_discovery_needs():
    s = procfs.parse_status(STATUS)
    got = (s.name, s.ppid, s.uid, s.euid, s.gid, s.threads, s.nspid, s.zombie)
    assert got == ("sleep", 1, 1000, 1001, 100, 1, (812, 1), True)
    assert not procfs.parse_status(STATUS.replace(b"Z (zombie)", b"S (sleeping)")).zombie


def test_status_keys_are_found_only_at_line_starts():
    """A comm can hold what looks like a key: the kernel escapes its newline, so it is never one."""
    evil = STATUS.replace(b"Name:\tsleep", b"Name:\tx\\nPPid:\t99")
    s = procfs.parse_status(evil)
    assert s.ppid == 1 and s.name == "x\\nPPid:\t99"
    bare = procfs.parse_status(b"Name:\tkworker/0:1\nPPid:\t2\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0")
    assert (bare.name, bare.ppid, bare.threads, bare.nspid, bare.zombie) == ("kworker/0:1", 2, 1, (), False)


def test_namespace_links_and_other_fd_targets():
    assert procfs.parse_ns_link("net:[4026531840]") == ("net", 4026531840)
    assert procfs.parse_ns_link("pid_for_children:[4026531836]") is None  # not a type name
    for other in ("socket:[1234]"[:6], "/dev/null", "anon_inode:[eventfd]", "pipe:[99]x", "net:[x]"):
        assert procfs.parse_ns_link(other) is None, other

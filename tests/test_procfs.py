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


def test_namespace_links_and_other_fd_targets():
    assert procfs.parse_ns_link("net:[4026531840]") == ("net", 4026531840)
    assert procfs.parse_ns_link("pid_for_children:[4026531836]") is None  # not a type name
    for other in ("socket:[1234]"[:6], "/dev/null", "anon_inode:[eventfd]", "pipe:[99]x", "net:[x]"):
        assert procfs.parse_ns_link(other) is None, other

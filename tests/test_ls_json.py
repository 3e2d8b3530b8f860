"""`nsfs ls --json` byte for byte: over a snapshot made here (every holder kind the contract spells
out, a user namespace with maps, a namespace no process is in, a bind mount, a thread), the
command's own rendering (cli.rendering.ls_printed: what `nsfs ls` prints, and what the daemon
serves for it) gives exactly the bytes pinned below; and lsns's keys of each namespace are each
column's own JSON cell, on that snapshot and on this host's."""

from __future__ import annotations

import json
import pwd
from pathlib import Path

import pytest

from namespacefs.cli import command_parser, ls
from namespacefs.cli.lsns_keys import LsnsKeys
from namespacefs.cli.rendering import ls_printed
from namespacefs.discover import discover
from namespacefs.model import Holder, HolderKind, Namespace, Process, Snapshot

#: pids and a uid no host has (pid_max is at most 2**22): nothing of the host's shows through
INIT, SLEEP, THREAD = 4200001, 4200002, 4200003
NOBODY = 4000123
USER0, USER1, MNT, NET, UTS, PID0, PID1, IPC = (4026531837, 4026532500, 4026531840, 4026532600, 4026532601,
                                                4026531836, 4026532700, 4026532602)
LOST_NET, LOST_MNT, LOST_USER = 4026532650, 4026532651, 4026532800


def made() -> Snapshot:
    """A small host: init (in the initial user, mnt, pid and ipc namespaces) and a sleep in a user
    namespace of its own, with a net namespace held by two bind mounts and an fd, a uts namespace
    held by a thread only and a pid namespace for its children; and a net namespace no process
    shows, bind-mounted in a mount namespace no process is in, owned by a user namespace that only
    owns it."""
    init = Process(INIT, 1, "systemd", ("/sbin/init", "splash"), 0, 0, (INIT,), 1,
                   {"mnt": MNT, "user": USER0, "pid": PID0, "ipc": IPC, "pid_for_children": PID0})
    sleep = Process(SLEEP, INIT, "sleep", (), NOBODY, NOBODY, (SLEEP, 1), 2,
                    {"mnt": MNT, "user": USER1, "pid": PID0, "ipc": IPC, "pid_for_children": PID1})
    namespaces = [
        Namespace("user", USER0, 1, 4, None, None, (Holder(HolderKind.PROCESS, pid=INIT),), (INIT,), owner_uid=0,
                  uid_map=((0, 0, 4294967295),), gid_map=((0, 0, 4294967295),), setgroups="allow",
                  name="user-init", path="/user-init"),
        Namespace("user", USER1, 9001, 4, USER0, USER0,
                  (Holder(HolderKind.PROCESS, pid=SLEEP), Holder(HolderKind.OWNER, via=NET)), (SLEEP,),
                  owner_uid=NOBODY, uid_map=((0, NOBODY, 1),), gid_map=((0, NOBODY, 1),), setgroups="deny", level=1,
                  name="user-sleep", path="/user-init/user-sleep"),
        Namespace("mnt", MNT, 2, 4, USER0, None, (Holder(HolderKind.PROCESS, pid=INIT), Holder(HolderKind.PROCESS, pid=SLEEP)),
                  (INIT, SLEEP), mounts=31, name="mnt-host", path="/user-init/mnt-host"),
        Namespace("net", NET, 9002, 4, USER1, None,
                  (Holder(HolderKind.BINDMOUNT, pid=INIT, mntns=MNT, path="/run/netns/web"),
                   Holder(HolderKind.BINDMOUNT, pid=INIT, mntns=MNT, path="/srv/\u00e9t\u00e9 web"),
                   Holder(HolderKind.FD, pid=SLEEP, fd=7)), (), name="web", path="/user-init/user-sleep/web"),
        Namespace("uts", UTS, None, 4, USER1, None, (Holder(HolderKind.TASK, pid=SLEEP, tid=THREAD),), (),
                  name="uts-thread", path="/user-init/user-sleep/uts-thread"),
        Namespace("pid", PID0, 3, 4, USER0, None, (Holder(HolderKind.PROCESS, pid=INIT),), (INIT, SLEEP),
                  name="pid-host", path="/user-init/pid-host"),
        Namespace("pid", PID1, 9003, 4, USER1, PID0,
                  (Holder(HolderKind.PID_FOR_CHILDREN, pid=SLEEP), Holder(HolderKind.SOCKET, pid=SLEEP, fd=3, socket=99)),
                  (), level=1, name="pid-kids", path="/user-init/user-sleep/pid-kids"),
        Namespace("ipc", IPC, 4, 4, USER0, None, (Holder(HolderKind.PROCESS, pid=INIT),), (INIT, SLEEP),
                  name=None, path=None),
        Namespace("net", LOST_NET, 9004, 4, LOST_USER, None,
                  (Holder(HolderKind.BINDMOUNT, mntns=LOST_MNT, path="/run/netns/lost"),), (), name="lost",
                  path="/user-init/user-lost/lost"),
        Namespace("user", LOST_USER, 9005, 4, USER0, USER0, (Holder(HolderKind.OWNER, via=LOST_NET),), (),
                  owner_uid=NOBODY, level=1, name="user-lost", path="/user-init/user-lost"),
    ]
    return Snapshot("0f1e2d3c-aaaa-bbbb-cccc-000000000001", "6.18.44", 1795574327.52, 0.175,
                    {ns.inode: ns for ns in namespaces}, {INIT: init, SLEEP: sleep}, {"vanished": 1, "denied": 0},
                    ("process", "task", "for_children", "fd", "socket", "bindmount", "listns"))


#: What `nsfs ls --json` prints over made(): lsns's order (by inode), each item on one line
#: (written by the implementation before the rendering was made linear, and never since)
PINNED = (Path(__file__).parent / "pinned" / "ls_json.out").read_bytes()


def rendered(*argv: str) -> bytes:
    """What `nsfs ls ARGV` prints over made() (the command's rendering, which the daemon serves too)."""
    status, out, err = ls_printed(made(), command_parser("ls").parse_args(list(argv)))
    assert (status, err) == (0, "")
    return out


def test_the_bytes_of_ls_json_are_pinned() -> None:
    with pytest.raises(KeyError):
        pwd.getpwuid(NOBODY)  # (the USER cell of its processes is the number)
    assert rendered("--json") == PINNED
    assert [ns["inode"] for ns in json.loads(PINNED)["namespaces"]] == sorted(made().namespaces)
    # -W: only the one multi-line cell (NSFS of the net namespace with two bind mounts) changes
    two_lines = '"nsfs":"/run/netns/web\\n/srv/\u00e9t\u00e9 web"'.encode()
    assert PINNED.count(two_lines) == 1
    assert rendered("--json", "-W") == PINNED.replace(two_lines, two_lines.replace(b"\\n", b","))


def test_lsns_keys_are_each_columns_json_cell() -> None:
    """LsnsKeys.add, the fast way, gives what each column's json_cell gives, key for key and in
    lsns's order: on made() and on this host."""
    for snap in (made(), discover()):
        netnsids = ls._netnsids(snap)
        for nowrap in (False, True):
            keys = LsnsKeys(nowrap)
            for ns in sorted(snap, key=lambda n: n.inode):
                row = ls.NamespaceRow(ns, snap, None, netnsids)
                item: dict[str, object] = {}
                keys.add(item, row)
                assert list(item.items()) == list(keys.generic(row).items()), ns

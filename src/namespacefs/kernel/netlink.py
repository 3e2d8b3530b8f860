"""The kernel layer, netlink: the proc connector (process events) and rtnetlink RTM_GETNSID.

    include/uapi/linux/netlink.h, connector.h, cn_proc.h   struct nlmsghdr, cn_msg, proc_event
    include/uapi/linux/rtnetlink.h, net_namespace.h         RTM_GETNSID, NETNSA_NSID, NETNSA_FD
"""

from __future__ import annotations

import itertools
import os
import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import socket

# --- the proc connector (issue 7: the live service) --------------------------------------------
# include/uapi/linux/netlink.h (struct nlmsghdr), include/uapi/linux/connector.h (struct cn_msg,
# CN_IDX_PROC, CN_VAL_PROC), include/uapi/linux/cn_proc.h (enum proc_cn_mcast_op). The events
# themselves (struct proc_event) are read and parsed in C: namespacefs._events.proc_events.

NETLINK_CONNECTOR: Final = 11
CN_IDX_PROC: Final = 1
CN_VAL_PROC: Final = 1
NLMSG_DONE: Final = 3
NLMSG_ERROR: Final = 2
NLMSG_OVERRUN: Final = 4
PROC_CN_MCAST_LISTEN: Final = 1
PROC_CN_MCAST_IGNORE: Final = 2
SO_RCVBUFFORCE: Final = 33
NLMSGHDR: Final = struct.Struct("=IHHII")  # len, type, flags, seq, pid
CN_MSG: Final = struct.Struct("=IIIIHH")  # id.idx, id.val, seq, ack, len, flags


def proc_connector_open(rcvbuf: int = 8 << 20) -> socket.socket:
    """A netlink socket subscribed to the kernel's process events (needs CAP_NET_ADMIN, init netns).
    Raises OSError when the kernel has no proc connector (CONFIG_PROC_EVENTS=n) or access is denied."""
    import socket  # (the service alone needs it; kernel is imported by every command)

    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((0, CN_IDX_PROC))
        op = struct.pack("=I", PROC_CN_MCAST_LISTEN)
        cn = CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(op), 0) + op
        sock.send(NLMSGHDR.pack(NLMSGHDR.size + len(cn), NLMSG_DONE, 0, 0, 0) + cn)
    except OSError:
        sock.close()
        raise
    return sock


def netlink_messages(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(type, sequence number, the whole message) of each netlink message in one datagram."""
    offset = 0
    while offset + NLMSGHDR.size <= len(data):
        length, kind, _flags, seq, _pid = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size:
            return
        yield kind, seq, data[offset:offset + length]
        offset += (length + 3) & ~3


# --- rtnetlink RTM_GETNSID: the id our net namespace's netlink uses for another one ---------------

RTM_GETNSID: Final = 90  # rtnetlink.h
NLM_F_REQUEST: Final = 0x1  # netlink.h
NETNSA_NSID, NETNSA_FD = 1, 3  # net_namespace.h
RTGENMSG: Final = struct.Struct("=Bxxx")  # struct rtgenmsg, padded to 4
NLATTR: Final = struct.Struct("=HH")  # struct nlattr: len, type


NLM_F_DUMP: Final = 0x300  # netlink.h: NLM_F_ROOT | NLM_F_MATCH


def route_socket() -> socket.socket:
    """A NETLINK_ROUTE socket to ask RTM_GETNSID over (one for many questions)."""
    import socket  # (as for the proc connector: only some commands need it)

    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)


def netnsid(netns_fd: int, sock: socket.socket | None = None) -> int | None:
    """The netnsid our net namespace assigned to the net namespace behind netns_fd, or None where
    none is assigned (or rtnetlink refuses), asked over sock (a route_socket(); else one made for
    this question). Raises OSError if no netlink socket can be made."""
    if sock is None:
        with route_socket() as own:
            return netnsid(netns_fd, own)
    body = RTGENMSG.pack(0) + NLATTR.pack(8, NETNSA_FD) + struct.pack("=I", netns_fd)  # family AF_UNSPEC
    seq = _next_seq()
    sock.send(NLMSGHDR.pack(NLMSGHDR.size + len(body), RTM_GETNSID, NLM_F_REQUEST, seq, 0) + body)
    while True:  # exactly one answer per request (RTM_NEWNSID, or NLMSG_ERROR): ours is the one with our seq
        reply = sock.recv(4096)
        if len(reply) < NLMSGHDR.size or NLMSGHDR.unpack_from(reply)[3] == seq:
            return parse_netnsid(reply)


def assigned_netnsids(sock: socket.socket) -> set[int]:
    """Every netnsid our net namespace has assigned (an RTM_GETNSID dump: what `ip netns list-id`
    shows), over a route_socket(). Raises OSError where rtnetlink refuses the dump."""
    seq = _next_seq()
    sock.send(NLMSGHDR.pack(NLMSGHDR.size + RTGENMSG.size, RTM_GETNSID, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
              + RTGENMSG.pack(0))
    found: set[int] = set()
    while True:
        for kind, got, message in netlink_messages(sock.recv(65536)):
            if got != seq:
                continue
            if kind == NLMSG_DONE:
                return found
            if kind == NLMSG_ERROR:
                (error,) = struct.unpack_from("=i", message, NLMSGHDR.size)
                if error == 0:  # (an acknowledgement: the end)
                    return found
                raise OSError(-error, os.strerror(-error))
            if (nsid := parse_netnsid(message)) is not None:
                found.add(nsid)


_SEQUENCE = itertools.count(1)


def _next_seq() -> int:
    """A sequence number for the next request (what tells its answer from a stale one)."""
    return next(_SEQUENCE) & 0xFFFFFFFF


def parse_netnsid(reply: bytes) -> int | None:
    """NETNSA_NSID of an RTM_NEWNSID reply (None for an error reply or a negative id: none assigned)."""
    if len(reply) < NLMSGHDR.size:
        return None
    _, msg_type, _, _, _ = NLMSGHDR.unpack_from(reply)
    if msg_type == NLMSG_ERROR:
        return None
    offset = NLMSGHDR.size + RTGENMSG.size
    while offset + NLATTR.size <= len(reply):
        length, kind = NLATTR.unpack_from(reply, offset)
        if length < NLATTR.size:
            break
        if kind == NETNSA_NSID and offset + 8 <= len(reply):
            value: int = struct.unpack_from("=i", reply, offset + NLATTR.size)[0]
            return None if value < 0 else value
        offset += (length + 3) & ~3
    return None

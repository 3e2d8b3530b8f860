"""The HTTP API's response shapes as pydantic models: the OpenAPI document (/openapi.json) is made
from them. They describe the JSON contract of the model's to_dict() methods (README); every object
allows more keys (the contract adds keys, never renames them), which pass through unchanged.
Small answers (status, one namespace, hostnames, login) go through their model on the way out;
the big ones (snapshot, namespaces, containers, accounting) are served as to_dict() makes them —
validating 5,000 namespaces with their holders takes seconds — and the tests check that what is
served fits these models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, RootModel


class Open(BaseModel):
    """An object of the contract: these keys, maybe more."""

    model_config = ConfigDict(extra="allow")


class Holder(Open):
    kind: str = Field(description="why the namespace is alive: process, zombie, task, pid_for_children, "
                                  "time_for_children, fd, bindmount, socket, parent, owner, listns")
    pid: int | None = None
    tid: int | None = None
    fd: int | None = None
    mntns: int | None = Field(None, description="bind mounts: the mount namespace it lives in")
    path: str | None = Field(None, description="bind mounts: the mountpoint")
    socket: int | None = Field(None, description="sockets: the socket inode")
    via: int | None = Field(None, description="parent/owner: the namespace it is parent or owner of")


class Namespace(Open):
    type: str
    inode: int
    id: int | None = Field(description="the kernel's 64-bit namespace id (NS_GET_ID), never reused")
    dev: int
    owner: int | None = Field(description="inode of the owning user namespace")
    parent: int | None = Field(description="pid and user namespaces: the parent's inode")
    level: int
    name: str | None
    path: str | None = Field(description="the name path through the owning user namespaces")
    holders: list[Holder]
    processes: list[int] = Field(description="host pids of the processes in it")
    owner_uid: int | None
    uid_map: list[list[int]] | None
    gid_map: list[list[int]] | None
    setgroups: str | None
    mounts: int | None


class Process(Open):
    pid: int
    ppid: int
    comm: str
    cmdline: list[str]
    uid: int
    gid: int
    nspid: list[int] = Field(description="its pid in each pid namespace, outermost first")
    threads: int
    namespaces: dict[str, int] = Field(description="type -> inode")


class Snapshot(Open):
    boot_id: str
    kernel: str
    taken_at: float
    duration: float
    errors: dict[str, int] = Field(description="what could not be read, counted by reason")
    sources: list[str]
    namespaces: list[Namespace]
    processes: list[Process]


class NamespaceDetails(Namespace):
    children: list[int] = Field(description="inodes of its child pid/user namespaces")
    owns: list[int] = Field(description="user namespaces: inodes of the namespaces it owns")
    process_details: list[Process]


class Container(Open):
    path: str
    name: str
    engine: str
    engine_id: str | None
    init: int
    pids: list[int]
    namespaces: dict[str, int] = Field(description="type -> inode")
    labels: dict[str, str]
    key: str


class ContainerDetails(Container):
    """One container (nsfs show CONTAINER -J): its pod, children, processes and namespaces."""

    parent: str | None = None
    pod: dict[str, Any] | None = None
    children: list[str] = []
    processes: list[dict[str, Any]] = []
    namespaces: dict[str, dict[str, Any]] = {}  # type: ignore[assignment]  # (a container's: type -> details, not inode)


class ContainerNode(Container):
    children: list[ContainerNode]


class Containers(Open):
    available: bool
    root: ContainerNode
    containers: list[Container] = Field(description="every container, flat")


class UidCount(Open):
    uid: int | None
    host_uid: int
    processes: int
    threads: int
    nproc_limit: int | None
    nproc_unknown: int
    host_threads: int
    charged: int
    at_limit: bool


class UsernsAccount(Open):
    inode: int
    id: int | None
    name: str | None
    path: str | None
    level: int
    parent: int | None
    owner_uid: int | None
    uid_map: list[list[int]]
    gid_map: list[list[int]]
    processes: int
    threads: int
    uids: list[UidCount]
    limits: dict[str, int] | None
    limits_error: str | None
    host_root: list[str]


class Overlap(Open):
    a: int
    b: int
    kind: str
    ranges: list[list[int]]
    meaning: str


class Accounting(Open):
    kernel: str
    user_namespaces: list[UsernsAccount]
    overlaps: list[Overlap]
    warnings: list[str]


class Status(Open):
    boot_id: str
    kernel: str
    taken_at: float
    duration: float
    namespaces: int
    processes: int
    started_at: float
    full_taken_at: float
    full_duration: float
    scans: dict[str, int]
    scan_errors: int
    netlink: bool
    netlink_error: str | None
    overruns: int
    proc_events: dict[str, int]
    subscribers: int
    interval: float
    changed_at: float | None = Field(None, description="when the model last changed (taken_at: every event up to then applied)")
    sweep: float | None = Field(None, description="seconds in which every process is re-read (silent holders)")
    tracepoints: bool | None = Field(None, description="the syscall tracepoints (unshare, setns, clone) are read")
    mechanisms: dict[str, dict[str, Any]] | None = Field(
        None, description="proc_connector, tracepoints, mountinfo_poll, sweep, full_scan: each `running` and `error`")
    last_update: dict[str, float] | None = Field(None, description="seconds the last update took, and of them naming")
    listings: dict[str, int] | None = Field(
        None, description="GET /api/ls: `rendered` (made by the command's code), `served` (answers given)")


class Event(Open):
    """One lifecycle event (the data of one server-sent event)."""

    event: str = Field(description="created, renamed, joined, left, destroyed")
    seq: int
    time: float
    type: str
    inode: int
    id: int | None
    name: str | None
    pid: int | None = None
    comm: str | None = None
    command: str | None = None
    old_name: str | None = None


class Hostnames(RootModel[dict[str, str]]):
    """uts namespace inode -> its hostname."""


class Login(BaseModel):
    token: str = Field(description="the bearer token (the daemon's token file)")


class LoggedIn(BaseModel):
    ok: bool


class Error(BaseModel):
    detail: str

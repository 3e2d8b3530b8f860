/* namespacefs._walk: the /proc walk of discovery, in C (the way psutil's _psutil_linux.c is).
 *
 * It only makes syscalls in a loop and returns plain tuples, lists and ints; what they mean (which
 * holder a link gives, what an errno counts as, what is a changed namespace) is decided in Python,
 * in namespacefs.discover. Errors that end the whole call are OSError with errno set; errors that
 * end one process's read come back in its record as an errno, so the Python side counts them at
 * its one error boundary (Scan.failed).
 *
 * The syscalls run without the GIL, so the live service's other threads keep answering while it
 * scans, in as few blocks as there are points where Python objects must be looked at (each block
 * ends in a GIL hand-over: a futex call when the other walk thread holds it): a process's files,
 * links and fd directory; the namespaces new to the walk that its links name (opened, fstat'ed and
 * asked their ioctls together); its mount table; its threads; each socket probe. Python objects
 * are made between the blocks. Memory used without the GIL is PyMem_Raw*.
 *
 * Kernel interfaces used, with their headers:
 *   openat, read, close, fstat, readlinkat     man 2; proc(5) for the files under /proc/PID
 *   getrlimit (RLIMIT_NOFILE)                  man 2
 *   getdents64                                 include/uapi/linux/dirent.h (struct linux_dirent64)
 *   NS_GET_NSTYPE, NS_GET_USERNS, NS_GET_PARENT, NS_GET_OWNER_UID, NS_GET_ID (6.18),
 *   NS_GET_MNTNS_ID (6.8)                      include/uapi/linux/nsfs.h
 *   SIOCGSKNS                                  include/uapi/linux/sockios.h (4.9)
 *   pidfd_open (5.3), pidfd_getfd (5.6)        include/uapi/asm-generic/unistd.h
 *   CLONE_NEW*                                 include/uapi/linux/sched.h
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/nsfs.h>
#include <pthread.h>
#include <linux/sockios.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef NS_GET_MNTNS_ID
#define NS_GET_MNTNS_ID _IOR(NSIO, 0x5, uint64_t) /* linux/nsfs.h, Linux 6.8 */
#endif
#ifndef NS_GET_ID
#define NS_GET_ID _IOR(NSIO, 13, uint64_t) /* linux/nsfs.h, Linux 6.18 */
#endif
#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080 /* linux/sched.h, Linux 5.6 */
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434 /* asm-generic/unistd.h */
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif

/* walk() flags: which parts of each process to read (the Python side maps sources onto them). */
#define WANT_TASKS 1   /* task/TID/ns/ links of every other thread */
#define WANT_FDS 2     /* fd/ links that name a kind in fd_kinds */
#define WANT_SOCKETS 4 /* the net namespace of each socket fd (pidfd_getfd + SIOCGSKNS) */
#define WANT_CGROUP 8  /* the cgroup file */
#define WANT_MOUNTS 16 /* the mountinfo of the first process seen in each mount namespace */

#define MAX_LINKS 16       /* ns/ links per process (10 on Linux 6.18) */
#define MAX_HELD 32        /* namespaces a walk keeps open (see Held) */
#define MAX_DEPTH 64       /* owner/parent chains: user and pid namespaces nest at most 32 deep */
#define DIRENT_BUF 32768

/* A growing buffer, reused for one file of every process (freed at the end of the call). */
typedef struct {
    char *data;
    size_t size;
} Buffer;

/* The namespaces a walk keeps open, one fd each, the MAX_HELD it wanted last. nsfs frees a
 * namespace's dentry and inode at the last close of it, so with nothing holding it each open of
 * it makes both again: NS_GET_USERNS for every namespace an owner is asked of (~3 us each: the
 * initial user namespace owns nearly every namespace of a host), SIOCGSKNS for every socket of a
 * process in the net namespace the walk read a moment ago. These fds are the scanner's own
 * files, never a holder it reports: a walk reading this very process skips every fd some walk of
 * this process holds (held_by_a_walk: one registry for all threads, since any of them may be
 * walking). */
typedef struct {
    int fds[MAX_HELD];
    unsigned long long inodes[MAX_HELD];
    unsigned long used[MAX_HELD]; /* when each was last wanted (clock): the least recent goes first */
    unsigned long clock;
    int count;
    int below; /* only fds numbered below this are kept (a quarter of RLIMIT_NOFILE: the files the
                * walk keeps must not be the ones that make a later open fail with EMFILE) */
} Held;

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static int registry[4 * MAX_HELD]; /* the fds every walk in this process holds (-1: a free slot) */
static int registry_used;          /* slots in use at the front of registry (free ones are -1) */

/* Take fd (of the namespace inode) into held, in place of the one wanted least recently when held
 * is full, and into the registry if it has room: 1 if taken (the walk now owns it until it is
 * replaced or release_held), else 0. No GIL needed. */
static int hold(Held *held, int fd, unsigned long long inode)
{
    if (fd >= held->below)
        return 0;
    int slot = held->count, old = -1;
    if (slot == MAX_HELD) {
        slot = 0;
        for (int i = 1; i < MAX_HELD; i++)
            if (held->used[i] < held->used[slot])
                slot = i;
        old = held->fds[slot];
    }
    int taken = 0;
    pthread_mutex_lock(&registry_lock);
    for (int i = 0; i < registry_used && !taken; i++)
        if (registry[i] == old) /* (-1: the first free slot) */
            registry[i] = fd, taken = 1;
    if (!taken && old == -1 && registry_used < (int)(sizeof registry / sizeof registry[0]))
        registry[registry_used++] = fd, taken = 1;
    pthread_mutex_unlock(&registry_lock);
    if (!taken)
        return 0;
    if (old >= 0)
        close(old); /* (out of the registry first, so no walk skips the fd once it is reused) */
    held->count += slot == held->count;
    held->fds[slot] = fd;
    held->inodes[slot] = inode;
    held->used[slot] = ++held->clock;
    return 1;
}

/* Is the namespace inode held (and so wanted now)? */
static int is_held(Held *held, unsigned long long inode)
{
    for (int i = 0; i < held->count; i++)
        if (held->inodes[i] == inode) {
            held->used[i] = ++held->clock;
            return 1;
        }
    return 0;
}

/* Is fd one that some walk of this process holds? */
static int held_by_a_walk(long fd)
{
    int found = 0;
    pthread_mutex_lock(&registry_lock);
    for (int i = 0; i < registry_used && !found; i++)
        found = registry[i] == fd;
    pthread_mutex_unlock(&registry_lock);
    return found;
}

/* Close what a walk held (out of the registry first, so no walk skips the fd once it is reused). */
static void release_held(Held *held)
{
    pthread_mutex_lock(&registry_lock);
    for (int k = 0; k < held->count; k++)
        for (int i = 0; i < registry_used; i++)
            if (registry[i] == held->fds[k])
                registry[i] = -1;
    while (registry_used > 0 && registry[registry_used - 1] == -1)
        registry_used--;
    pthread_mutex_unlock(&registry_lock);
    for (int k = 0; k < held->count; k++)
        close(held->fds[k]);
    held->count = 0;
}

/* What one walk() call carries around. */
typedef struct {
    PyObject *known;       /* inode -> (type, dev, id, owner, parent, owner_uid): see resolve() */
    PyObject *tables;      /* mount namespace inode -> (pid, mount count, its nsfs lines), or NULL */
    PyObject *sockets;     /* socket inode -> net namespace inode: each socket probed once */
    const char *links[MAX_LINKS];
    int link_types[MAX_LINKS]; /* the CLONE_NEW* type each link's path fixes (0: ask the kernel) */
    Py_ssize_t nlinks;
    const char *kinds[MAX_LINKS]; /* fd link kinds to report ("socket", "net", ...) */
    size_t kind_len[MAX_LINKS];
    Py_ssize_t nkinds;
    Py_ssize_t socket_kind; /* the index of "socket" in kinds, or -1 */
    Py_ssize_t mnt_link;    /* the index of "mnt" in links, or -1 */
    int flags;
    long self;     /* this process's pid in the proc directory walked (-1: not known, so nothing held) */
    int reading_self; /* the process being read is this one: held fds are not among its fds */
    Held held;
    Buffer status, cmdline, cgroup; /* one per file of a process: all three are read in one block */
    Buffer mountinfo;
} Walk;

/* What this walk may hold: nothing while it cannot tell this process among those it reads. */
static Held *held_of(Walk *w)
{
    return w->self > 0 ? &w->held : NULL;
}

/* --- small helpers ------------------------------------------------------------------------- */

/* The whole of a file (/proc's seq_files answer about a page per read(): read until it says 0).
 * Returns its length, or -1 with errno set. */
static ssize_t read_file(Buffer *buf, int dir_fd, const char *name)
{
    int fd = openat(dir_fd, name, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return -1;
    size_t len = 0;
    for (;;) {
        if (buf->size - len < 4096) {
            size_t size = buf->size ? buf->size * 2 : 65536;
            char *grown = PyMem_RawRealloc(buf->data, size);
            if (grown == NULL) {
                close(fd);
                errno = ENOMEM;
                return -1;
            }
            buf->data = grown;
            buf->size = size;
        }
        ssize_t n = read(fd, buf->data + len, buf->size - len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            int saved = errno;
            close(fd);
            errno = saved;
            return -1;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    return (ssize_t)len;
}

/* The inode in a link target such as "net:[4026531840]": ASCII digits only (as syntax.py's rule
 * is), 0 if it has none or it does not fit. */
static unsigned long long bracket_inode(const char *target)
{
    const char *p = strchr(target, '[');
    if (p == NULL || p[1] == ']')
        return 0;
    unsigned long long inode = 0;
    for (p++; *p >= '0' && *p <= '9'; p++) {
        if (inode > (ULLONG_MAX - 9) / 10)
            return 0;
        inode = inode * 10 + (unsigned long long)(*p - '0');
    }
    return p[0] == ']' && p[1] == '\0' ? inode : 0;
}

/* readlinkat into target (NUL-terminated); -1 with errno set. */
static int read_link(int dir_fd, const char *path, char *target, size_t size)
{
    ssize_t n = readlinkat(dir_fd, path, target, size - 1);
    if (n < 0)
        return -1;
    target[n] = '\0';
    return 0;
}

static int all_digits(const char *s)
{
    if (*s == '\0')
        return 0;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return 0;
    return 1;
}

/* The decimal names in a directory (pids, tids, fds), with getdents64 (linux/dirent.h). Returns
 * a malloc'ed array (caller frees) and its length in *count, or NULL with errno set. */
static long *list_numbers(int dir_fd, const char *path, size_t *count)
{
    int fd = openat(dir_fd, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    char *dents = PyMem_RawMalloc(DIRENT_BUF);
    size_t n = 0, cap = 64;
    long *numbers = PyMem_RawMalloc(cap * sizeof(long));
    if (dents == NULL || numbers == NULL)
        goto nomem;
    for (;;) {
        ssize_t got = getdents64(fd, dents, DIRENT_BUF);
        if (got < 0) {
            int saved = errno;
            PyMem_RawFree(dents);
            PyMem_RawFree(numbers);
            close(fd);
            errno = saved;
            return NULL;
        }
        if (got == 0)
            break;
        for (ssize_t off = 0; off < got;) {
            struct dirent64 *d = (struct dirent64 *)(dents + off);
            off += d->d_reclen;
            if (!all_digits(d->d_name))
                continue;
            if (n == cap) {
                long *grown = PyMem_RawRealloc(numbers, 2 * cap * sizeof(long));
                if (grown == NULL)
                    goto nomem;
                numbers = grown;
                cap *= 2;
            }
            numbers[n++] = strtol(d->d_name, NULL, 10);
        }
    }
    PyMem_RawFree(dents);
    close(fd);
    *count = n;
    return numbers;
nomem:
    PyMem_RawFree(dents);
    PyMem_RawFree(numbers);
    close(fd);
    errno = ENOMEM;
    return NULL;
}

/* --- namespaces: type, id, owner, parent (linux/nsfs.h) -------------------------------------- */

/* The type a /proc/PID/ns/NAME link always leads to (linux/sched.h), 0 for a name not known here. */
static int link_type(const char *name)
{
    static const struct {
        const char *name;
        int type;
    } types[] = {
        {"mnt", CLONE_NEWNS},      {"uts", CLONE_NEWUTS}, {"ipc", CLONE_NEWIPC},
        {"user", CLONE_NEWUSER},   {"pid", CLONE_NEWPID}, {"net", CLONE_NEWNET},
        {"cgroup", CLONE_NEWCGROUP}, {"time", CLONE_NEWTIME}, {"pid_for_children", CLONE_NEWPID},
        {"time_for_children", CLONE_NEWTIME},
    };
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (strcmp(name, types[i].name) == 0)
            return types[i].type;
    return 0;
}

static PyObject *optional_u64(int known, unsigned long long value)
{
    if (!known)
        Py_RETURN_NONE;
    return PyLong_FromUnsignedLongLong(value);
}

/* Done with fd, an nsfs file of the namespace inode of this type (<= 0: not an nsfs file): kept
 * open unless that namespace is held already (see Held; held NULL: nothing is), else closed. No
 * GIL needed. */
static void done_with(Held *held, int fd, int type, unsigned long long inode)
{
    if (held == NULL || type <= 0 || is_held(held, inode) || !hold(held, fd, inode))
        close(fd);
}

/* What the syscalls read of one namespace (read_ns), before it goes into known. */
typedef struct {
    struct stat st;         /* of the namespace's own fd */
    int type;               /* its CLONE_NEW* type, <= 0 when the fd is no nsfs file */
    int has_id, has_uid;
    uint64_t id;
    uid_t uid;
    int owner_fd, parent_fd;                  /* from NS_GET_USERNS / NS_GET_PARENT, or -1 */
    unsigned long long owner_ino, parent_ino; /* their inodes (0: fstat failed) */
} NsRead;

/* The ioctls of the namespace behind fd, r->st already its fstat (type: what the way fd was
 * opened fixes, an ns/TYPE link, NS_GET_USERNS, SIOCGSKNS; else 0 and NS_GET_NSTYPE asks), and
 * the fstat of the relatives they give; fd is then done with. Syscalls only: runs without the
 * GIL, all in one block (each block costs a GIL hand-over, a futex call when the other walk
 * thread wants it). */
static void read_ns(Held *held, int fd, int type, NsRead *r)
{
    r->type = type ? type : ioctl(fd, NS_GET_NSTYPE); /* a CLONE_NEW* flag; fails on anything not nsfs */
    r->has_id = r->has_uid = 0;
    r->id = 0;
    r->uid = 0; /* (NS_GET_OWNER_UID is an _IO ioctl: a checker cannot tell that it writes uid) */
    r->owner_fd = r->parent_fd = -1;
    r->owner_ino = r->parent_ino = 0;
    if (r->type > 0) {
        r->has_id = ioctl(fd, NS_GET_ID, &r->id) == 0;
        if (!r->has_id && r->type == CLONE_NEWNS && (errno == ENOTTY || errno == EINVAL))
            r->has_id = ioctl(fd, NS_GET_MNTNS_ID, &r->id) == 0; /* 6.8–6.17: the same number */
        r->owner_fd = ioctl(fd, NS_GET_USERNS);                  /* EPERM: outside what we may see */
        if (r->type == CLONE_NEWPID)
            r->parent_fd = ioctl(fd, NS_GET_PARENT); /* EPERM at the top */
        r->has_uid = r->type == CLONE_NEWUSER && ioctl(fd, NS_GET_OWNER_UID, &r->uid) == 0;
        struct stat rel;
        if (r->owner_fd >= 0 && fstat(r->owner_fd, &rel) == 0)
            r->owner_ino = rel.st_ino;
        if (r->parent_fd >= 0 && fstat(r->parent_fd, &rel) == 0)
            r->parent_ino = rel.st_ino;
    }
    done_with(held, fd, r->type, r->st.st_ino);
}

static long long resolve(PyObject *known, Held *held, int fd, int type, int depth);

/* A relative's fd (owner, parent, a socket's namespace) whose fstat gave ino: read into known
 * unless it is there already, then done with. Its inode, 0 when there is none (no fd, or no
 * file behind it), -1 on a Python error. */
static long long relative(PyObject *known, Held *held, int fd, unsigned long long ino, int type, int depth)
{
    if (fd < 0)
        return 0;
    if (ino == 0) {
        close(fd);
        return 0;
    }
    PyObject *key = PyLong_FromUnsignedLongLong(ino);
    int seen = key == NULL ? -1 : PyDict_Contains(known, key);
    Py_XDECREF(key);
    if (seen == 0 && depth <= MAX_DEPTH)
        return resolve(known, held, fd, type, depth);
    done_with(held, fd, type, ino);
    return seen < 0 ? -1 : (long long)ino;
}

/* What read_ns read, into known: (CLONE_NEW* type, st_dev, id or None, owner inode or None, parent
 * inode or None, owner uid or None), relatives not known yet read in their turn. Returns the
 * inode (also when the namespace itself could not be read: it is then left out of known, for the
 * Python side), -1 on a Python error (exception set). */
static long long store(PyObject *known, Held *held, NsRead *r, int depth)
{
    if (r->type <= 0)
        return (long long)r->st.st_ino;
    long long owner = relative(known, held, r->owner_fd, r->owner_ino, CLONE_NEWUSER, depth + 1);
    long long parent = 0;
    if (owner >= 0)
        parent = relative(known, held, r->parent_fd, r->parent_ino, CLONE_NEWPID, depth + 1);
    else if (r->parent_fd >= 0)
        close(r->parent_fd);
    if (owner < 0 || parent < 0)
        return -1;
    if (r->type == CLONE_NEWUSER)
        parent = owner; /* a user namespace's owner is its parent */
    PyObject *key = PyLong_FromUnsignedLongLong(r->st.st_ino);
    PyObject *info = key == NULL ? NULL : Py_BuildValue("(iKNNNN)", r->type, (unsigned long long)r->st.st_dev,
                                                         optional_u64(r->has_id, r->id),
                                                         optional_u64(owner > 0, (unsigned long long)owner),
                                                         optional_u64(parent > 0, (unsigned long long)parent),
                                                         optional_u64(r->has_uid, r->uid));
    int stored = info != NULL && PyDict_SetItem(known, key, info) == 0;
    Py_XDECREF(info);
    Py_XDECREF(key);
    return stored ? (long long)r->st.st_ino : -1;
}

/* Read the namespace behind fd (which this closes, or holds: done_with) into known (see store),
 * following NS_GET_USERNS and NS_GET_PARENT to relatives not known yet. Returns its inode, 0
 * when fd is no file at all, -1 on a Python error (exception set). */
static long long resolve(PyObject *known, Held *held, int fd, int type, int depth)
{
    NsRead r;
    int failed;
    Py_BEGIN_ALLOW_THREADS
    failed = fstat(fd, &r.st) < 0;
    Py_END_ALLOW_THREADS
    if (failed) {
        int saved = errno;
        close(fd);
        errno = saved;
        return 0;
    }
    PyObject *key = PyLong_FromUnsignedLongLong(r.st.st_ino);
    if (key == NULL) {
        close(fd);
        return -1;
    }
    int seen = PyDict_Contains(known, key);
    Py_DECREF(key);
    if (seen != 0 || depth > MAX_DEPTH) {
        done_with(held, fd, type, r.st.st_ino);
        return seen < 0 ? -1 : (long long)r.st.st_ino;
    }
    Py_BEGIN_ALLOW_THREADS
    read_ns(held, fd, type, &r);
    Py_END_ALLOW_THREADS
    return store(known, held, &r, depth);
}

/* One namespace to open by its path and read (resolve_paths). */
typedef struct {
    char path[96];            /* relative to the directory given */
    unsigned long long inode; /* what its link named */
    int type;                 /* what the path fixes (0: ask) */
    int fd;                   /* the opened file, or -1 */
    int same;                 /* it was still that inode: read (r), its fd done with */
    NsRead r;
} NsOpen;

/* Open the paths (relative to dir_fd) of the namespaces in ns not known yet and resolve each:
 * open, fstat and (when it is still the inode its link named) the ioctls of all of them in one
 * block without the GIL. ns is reused for the work. -1 on a Python error; otherwise 0 (whatever
 * the kernel answered: what is not read stays for the Python side). */
static int resolve_paths(PyObject *known, Held *held, int dir_fd, NsOpen *ns, int n)
{
    int todo = 0;
    for (int i = 0; i < n; i++) {
        int again = 0; /* (pid and pid_for_children: one namespace, opened once) */
        for (int k = 0; k < todo && !again; k++)
            again = ns[k].inode == ns[i].inode;
        PyObject *key = again ? NULL : PyLong_FromUnsignedLongLong(ns[i].inode);
        int seen = again ? 1 : key == NULL ? -1 : PyDict_Contains(known, key);
        Py_XDECREF(key);
        if (seen < 0)
            return -1;
        if (!seen && todo != i)
            ns[todo] = ns[i];
        todo += !seen;
    }
    if (todo == 0)
        return 0;
    Py_BEGIN_ALLOW_THREADS
    for (int i = 0; i < todo; i++) {
        NsOpen *o = &ns[i];
        o->fd = openat(dir_fd, o->path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        o->same = o->fd >= 0 && fstat(o->fd, &o->r.st) == 0 && o->r.st.st_ino == o->inode;
        if (o->same)
            read_ns(held, o->fd, o->type, &o->r);
    }
    Py_END_ALLOW_THREADS
    int failed = 0;
    for (int i = 0; i < todo; i++) {
        NsOpen *o = &ns[i];
        if (failed) { /* what is still open is closed (a read one's own fd is done with already) */
            if (o->same && o->r.owner_fd >= 0)
                close(o->r.owner_fd);
            if (o->same && o->r.parent_fd >= 0)
                close(o->r.parent_fd);
            if (!o->same && o->fd >= 0)
                close(o->fd);
        } else if (o->fd >= 0) { /* (not the same: another namespace by now, the long way) */
            failed = (o->same ? store(known, held, &o->r, 0) : resolve(known, held, o->fd, o->type, 0)) < 0;
        }
    }
    return failed ? -1 : 0;
}

/* --- one process --------------------------------------------------------------------------- */

/* The namespace links under prefix ("ns/" or "task/TID/ns/"), per link name its inode or -errno.
 * Syscalls only: runs without the GIL. */
static void read_links(const Walk *w, int dir_fd, const char *prefix, long long *values)
{
    for (Py_ssize_t i = 0; i < w->nlinks; i++) {
        char path[96], target[64];
        snprintf(path, sizeof path, "%s%s", prefix, w->links[i]);
        if (read_link(dir_fd, path, target, sizeof target) < 0) {
            values[i] = -errno;
        } else {
            unsigned long long inode = bracket_inode(target);
            values[i] = inode ? (long long)inode : -EINVAL;
        }
    }
}

/* Those links as a tuple; the namespaces not known yet are opened and resolved. */
static PyObject *links_tuple(Walk *w, int dir_fd, const char *prefix, const long long *values)
{
    NsOpen ns[MAX_LINKS];
    int n = 0;
    for (Py_ssize_t i = 0; i < w->nlinks; i++) {
        if (values[i] <= 0)
            continue;
        snprintf(ns[n].path, sizeof ns[n].path, "%s%s", prefix, w->links[i]);
        ns[n].inode = (unsigned long long)values[i];
        ns[n++].type = w->link_types[i];
    }
    if (resolve_paths(w->known, held_of(w), dir_fd, ns, n) < 0)
        return NULL;
    PyObject *links = PyTuple_New(w->nlinks);
    for (Py_ssize_t i = 0; links != NULL && i < w->nlinks; i++) {
        PyObject *item = PyLong_FromLongLong(values[i]);
        if (item == NULL)
            Py_CLEAR(links);
        else
            PyTuple_SET_ITEM(links, i, item);
    }
    return links;
}

/* Threads other than the main one: a list of (tid, links), or an errno (int) when the task
 * directory cannot be listed. */
static PyObject *read_tasks(Walk *w, int dir_fd, long pid)
{
    size_t n = 0;
    long *tids;
    long long *values = NULL;
    int err = 0;
    Py_BEGIN_ALLOW_THREADS
    tids = list_numbers(dir_fd, "task", &n);
    if (tids == NULL)
        err = errno;
    else if ((values = PyMem_RawMalloc((n ? n : 1) * (size_t)w->nlinks * sizeof(long long))) == NULL)
        err = ENOMEM;
    for (size_t i = 0; values != NULL && i < n; i++) {
        char prefix[48];
        snprintf(prefix, sizeof prefix, "task/%ld/ns/", tids[i]);
        if (tids[i] != pid)
            read_links(w, dir_fd, prefix, values + i * (size_t)w->nlinks);
    }
    Py_END_ALLOW_THREADS
    if (err == ENOMEM) {
        PyMem_RawFree(tids);
        return PyErr_NoMemory();
    }
    if (tids == NULL)
        return PyLong_FromLong(err);
    PyObject *tasks = PyList_New(0);
    for (size_t i = 0; tasks != NULL && i < n; i++) {
        if (tids[i] == pid)
            continue;
        char prefix[48];
        snprintf(prefix, sizeof prefix, "task/%ld/ns/", tids[i]);
        PyObject *links = links_tuple(w, dir_fd, prefix, values + i * (size_t)w->nlinks);
        PyObject *task = links ? Py_BuildValue("(lN)", tids[i], links) : NULL;
        if (task == NULL || PyList_Append(tasks, task) < 0)
            Py_CLEAR(tasks);
        Py_XDECREF(task);
    }
    PyMem_RawFree(values);
    PyMem_RawFree(tids);
    return tasks;
}

/* The net namespace of a socket (pidfd_getfd, then SIOCGSKNS from linux/sockios.h), resolved;
 * its inode, or -errno (-1 is also -EPERM: a Python error is told by PyErr_Occurred). The fd must
 * still be that socket: one closed and reused meanwhile is another file (-ESTALE). */
static long long probe_socket(Walk *w, int *pidfd, long pid, long fd, unsigned long long sock_inode)
{
    int netns, err = 0;
    unsigned long long netns_ino;
    Py_BEGIN_ALLOW_THREADS
    if (*pidfd < 0)
        *pidfd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
    int sock = *pidfd < 0 ? -1 : (int)syscall(SYS_pidfd_getfd, *pidfd, (int)fd, 0);
    struct stat st;
    if (sock < 0) {
        err = errno;
    } else if (fstat(sock, &st) < 0 || st.st_ino != sock_inode) {
        err = ESTALE;
    }
    netns = err ? -1 : ioctl(sock, SIOCGSKNS);
    if (!err && netns < 0)
        err = errno;
    netns_ino = netns >= 0 && fstat(netns, &st) == 0 ? st.st_ino : 0;
    if (sock >= 0)
        close(sock);
    Py_END_ALLOW_THREADS
    if (err)
        return -err;
    long long inode = relative(w->known, held_of(w), netns, netns_ino, CLONE_NEWNET, 0); /* -1: a Python error */
    return inode == 0 ? -EBADF : inode;                           /* (0: no file behind the fd) */
}

/* Look a socket up in (or probe it into) the per-walk cache. NULL on a Python error. */
static PyObject *socket_netns(Walk *w, int *pidfd, long pid, long fd, unsigned long long sock_inode)
{
    PyObject *key = PyLong_FromUnsignedLongLong(sock_inode);
    if (key == NULL)
        return NULL;
    PyObject *cached = PyDict_GetItemWithError(w->sockets, key);
    if (cached != NULL || PyErr_Occurred()) {
        Py_DECREF(key);
        Py_XINCREF(cached);
        return cached;
    }
    long long netns = probe_socket(w, pidfd, pid, fd, sock_inode);
    PyObject *value = netns == -1 && PyErr_Occurred() ? NULL : PyLong_FromLongLong(netns);
    /* only an answer is cached: an error (a gone fd, a denied pidfd) may not hold for the next fd */
    if (value != NULL && netns > 0 && PyDict_SetItem(w->sockets, key, value) < 0)
        Py_CLEAR(value);
    Py_DECREF(key);
    return value;
}

/* One fd whose link names a kind in w->kinds (read without the GIL). */
typedef struct {
    long fd;
    Py_ssize_t kind;
    unsigned long long inode;
} FdLink;

/* The fds of the fd directory whose link is "KIND:[N]" for a KIND in w->kinds; an fd closed since
 * it was listed is skipped. Syscalls only (no GIL): a malloc'ed array, or NULL with errno set. */
static FdLink *list_fds(const Walk *w, int fd_dir, size_t *count)
{
    size_t n;
    long *fds = list_numbers(fd_dir, ".", &n);
    if (fds == NULL)
        return NULL;
    FdLink *found = PyMem_RawMalloc((n ? n : 1) * sizeof(FdLink));
    if (found == NULL) {
        PyMem_RawFree(fds);
        errno = ENOMEM;
        return NULL;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        char name[24], target[256];
        if (w->reading_self && held_by_a_walk(fds[i]))
            continue; /* the scanner's own file (see Held) */
        snprintf(name, sizeof name, "%ld", fds[i]);
        if (read_link(fd_dir, name, target, sizeof target) < 0)
            continue;
        for (Py_ssize_t kind = 0; kind < w->nkinds; kind++) {
            if (strncmp(target, w->kinds[kind], w->kind_len[kind]) == 0 && target[w->kind_len[kind]] == ':') {
                unsigned long long inode = bracket_inode(target);
                if (inode != 0)
                    found[k++] = (FdLink){fds[i], kind, inode};
                break;
            }
        }
    }
    PyMem_RawFree(fds);
    *count = k;
    return found;
}

/* A process's fd directory and the fds of it list_fds found (read in the process's first block). */
typedef struct {
    int dir;        /* the fd directory, or -1 */
    FdLink *links;  /* NULL when it could not be listed (err) */
    size_t n;
    int err;
} FdList;

/* Open and list the fd directory. Syscalls only: runs without the GIL. */
static void list_fd_dir(const Walk *w, int dir_fd, FdList *l)
{
    l->links = NULL;
    l->n = 0;
    l->dir = openat(dir_fd, "fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    l->err = l->dir < 0 || (l->links = list_fds(w, l->dir, &l->n)) == NULL ? errno : 0;
}

static void drop_fd_list(FdList *l)
{
    if (l->dir >= 0)
        close(l->dir);
    PyMem_RawFree(l->links);
    l->dir = -1;
    l->links = NULL;
}

/* The fds that are namespaces or sockets, from the listing l (which this drops): a list of (fd,
 * kind index, inode, net namespace of a socket or 0), or an errno (int) when the fd directory
 * could not be listed. Namespaces behind fds are resolved, sockets probed (once per socket inode). */
static PyObject *read_fds(Walk *w, long pid, FdList *l)
{
    if (l->links == NULL) {
        int err = l->err;
        drop_fd_list(l);
        return err == ENOMEM ? PyErr_NoMemory() : PyLong_FromLong(err);
    }
    int fd_dir = l->dir;
    FdLink *links = l->links;
    size_t n = l->n;
    int pidfd = -1;
    PyObject *found = PyList_New(0);
    for (size_t i = 0; found != NULL && i < n; i++) {
        PyObject *netns;
        if (links[i].kind == w->socket_kind) {
            if (!(w->flags & WANT_SOCKETS))
                continue;
            netns = socket_netns(w, &pidfd, pid, links[i].fd, links[i].inode);
        } else {
            NsOpen ns = {.inode = links[i].inode, .type = 0}; /* (an fd may be another file by now: its type is
                                                                 asked, not taken from the link) */
            snprintf(ns.path, sizeof ns.path, "%ld", links[i].fd);
            netns = resolve_paths(w->known, held_of(w), fd_dir, &ns, 1) < 0 ? NULL : PyLong_FromLong(0);
        }
        PyObject *entry = netns ? Py_BuildValue("(lnKN)", links[i].fd, links[i].kind, links[i].inode, netns) : NULL;
        if (entry == NULL || PyList_Append(found, entry) < 0)
            Py_CLEAR(found);
        Py_XDECREF(entry);
    }
    if (pidfd >= 0)
        close(pidfd);
    drop_fd_list(l);
    return found;
}

/* The "Threads:" count of a status text (1 if absent): whether task/ is worth listing. */
static long thread_count(const char *status, size_t len)
{
    const char *key = "\nThreads:";
    const char *at = memmem(status, len, key, strlen(key));
    return at ? strtol(at + strlen(key), NULL, 10) : 1;
}

/* Keep, at the front of a mountinfo text, only its lines that name nsfs (what procfs.nsfs_mounts
 * parses: bind-mounted namespace files are rare, the other ~20 to 200 lines of each table are not
 * worth a Python object); *lines gets the number of lines. Returns the length kept. */
static size_t nsfs_lines(char *text, size_t len, size_t *lines)
{
    size_t kept = 0, n = 0;
    for (size_t start = 0; start < len;) {
        char *newline = memchr(text + start, '\n', len - start);
        size_t end = newline ? (size_t)(newline - text) + 1 : len;
        n += newline != NULL;
        if (memmem(text + start, end - start, " nsfs ", 6) != NULL) {
            memmove(text + kept, text + start, end - start);
            kept += end - start;
        }
        start = end;
    }
    *lines = n;
    return kept;
}

/* With WANT_MOUNTS, the mount table of the process's mount namespace, unless one is in w->tables
 * already: tables[mntns] = (pid, number of mounts, the lines that name nsfs), read to EOF through
 * the process's handle. A table that cannot be read is left for the next process in that
 * namespace (and the Python side's reading, which counts the error). 0, or -1 on a Python error. */
static int read_mounts(Walk *w, int dir_fd, long pid, const long long *values)
{
    if (w->tables == NULL || !(w->flags & WANT_MOUNTS) || w->mnt_link < 0 || values[w->mnt_link] <= 0)
        return 0;
    PyObject *key = PyLong_FromLongLong(values[w->mnt_link]);
    if (key == NULL)
        return -1;
    int seen = PyDict_Contains(w->tables, key);
    if (seen != 0) {
        Py_DECREF(key);
        return seen < 0 ? -1 : 0;
    }
    ssize_t len;
    size_t lines = 0, kept = 0;
    int err = 0;
    Py_BEGIN_ALLOW_THREADS
    len = read_file(&w->mountinfo, dir_fd, "mountinfo");
    if (len < 0)
        err = errno;
    else
        kept = nsfs_lines(w->mountinfo.data, (size_t)len, &lines);
    Py_END_ALLOW_THREADS
    if (len < 0) {
        Py_DECREF(key);
        return err == ENOMEM ? (PyErr_NoMemory(), -1) : 0;
    }
    PyObject *entry = Py_BuildValue("(lny#)", pid, (Py_ssize_t)lines, w->mountinfo.data, (Py_ssize_t)kept);
    /* (the other thread of a two-thread walk may have stored this namespace meanwhile: first wins) */
    int stored = entry != NULL && PyDict_SetDefault(w->tables, key, entry) != NULL;
    Py_XDECREF(entry);
    Py_DECREF(key);
    return stored ? 0 : -1;
}

static PyObject *errno_record(long pid, int err)
{
    return Py_BuildValue("(li)", pid, err);
}

/* One process, through one O_PATH handle on /proc/PID (so every read is of this very process,
 * even if its pid is reused meanwhile: the handle then answers ENOENT/ESRCH):
 *   (pid, status, links, cmdline, cgroup or None, tasks, fds)
 * or (pid, errno) when any of status, links, cmdline, cgroup cannot be read. NULL on a Python
 * error. */
static PyObject *read_process(Walk *w, int proc_fd, long pid)
{
    char name[24];
    snprintf(name, sizeof name, "%ld", pid);
    long long values[MAX_LINKS];
    ssize_t status_len = -1, cmdline_len = -1, cgroup_len = 0;
    int dir_fd, err = 0;
    FdList fd_list = {.dir = -1, .links = NULL};
    w->reading_self = pid == w->self;
    Py_BEGIN_ALLOW_THREADS
    dir_fd = openat(proc_fd, name, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd >= 0 && (status_len = read_file(&w->status, dir_fd, "status")) >= 0) {
        read_links(w, dir_fd, "ns/", values);
        if ((cmdline_len = read_file(&w->cmdline, dir_fd, "cmdline")) >= 0 && (w->flags & WANT_CGROUP))
            cgroup_len = read_file(&w->cgroup, dir_fd, "cgroup");
    }
    if (dir_fd < 0 || status_len < 0 || cmdline_len < 0 || cgroup_len < 0)
        err = errno ? errno : EIO;
    else if (w->flags & (WANT_FDS | WANT_SOCKETS))
        list_fd_dir(w, dir_fd, &fd_list); /* (in this block too: one GIL hand-over less per process) */
    Py_END_ALLOW_THREADS
    if (err) {
        if (dir_fd >= 0)
            close(dir_fd);
        return err == ENOMEM ? PyErr_NoMemory() : errno_record(pid, err);
    }
    PyObject *record = NULL, *status, *links = NULL, *cmdline = NULL, *cgroup = NULL, *tasks = NULL, *fds = NULL;
    long threads = thread_count(w->status.data, (size_t)status_len);
    if ((status = PyBytes_FromStringAndSize(w->status.data, status_len)) == NULL ||
        (links = links_tuple(w, dir_fd, "ns/", values)) == NULL || read_mounts(w, dir_fd, pid, values) < 0 ||
        (cmdline = PyBytes_FromStringAndSize(w->cmdline.data, cmdline_len)) == NULL ||
        (cgroup = w->flags & WANT_CGROUP ? PyBytes_FromStringAndSize(w->cgroup.data, cgroup_len)
                                         : Py_NewRef(Py_None)) == NULL ||
        (tasks = (w->flags & WANT_TASKS) && threads > 1 ? read_tasks(w, dir_fd, pid) : PyList_New(0)) == NULL ||
        (fds = w->flags & (WANT_FDS | WANT_SOCKETS) ? read_fds(w, pid, &fd_list) : PyList_New(0)) == NULL)
        goto done;
    record = Py_BuildValue("(lOOOOOO)", pid, status, links, cmdline, cgroup, tasks, fds);
done:
    drop_fd_list(&fd_list); /* (read_fds dropped it, unless something failed before) */
    close(dir_fd);
    Py_XDECREF(status);
    Py_XDECREF(links);
    Py_XDECREF(cmdline);
    Py_XDECREF(cgroup);
    Py_XDECREF(tasks);
    Py_XDECREF(fds);
    return record;
}

/* --- the module's functions ---------------------------------------------------------------- */

/* Borrowed UTF-8 views of a tuple of str (valid while the tuple lives). */
static Py_ssize_t names_of(PyObject *seq, const char **names, size_t *lens, const char *what)
{
    if (!PyTuple_Check(seq) || PyTuple_GET_SIZE(seq) > MAX_LINKS) {
        PyErr_Format(PyExc_ValueError, "%s: a tuple of at most %d str", what, MAX_LINKS);
        return -1;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(seq); i++) {
        Py_ssize_t len;
        names[i] = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(seq, i), &len);
        if (names[i] == NULL)
            return -1;
        if (lens)
            lens[i] = (size_t)len;
    }
    return PyTuple_GET_SIZE(seq);
}

/* This process's pid as the proc directory shows it (its "self" link), -1 if it does not. */
static long self_pid(int proc_fd)
{
    char target[32];
    if (read_link(proc_fd, "self", target, sizeof target) < 0 || !all_digits(target))
        return -1;
    return strtol(target, NULL, 10);
}

/* The pids to read: those given, or every numeric entry of the proc directory. */
static long *pids_to_read(int proc_fd, PyObject *given, size_t *count)
{
    if (given == Py_None) {
        long *pids = list_numbers(proc_fd, ".", count);
        if (pids == NULL)
            PyErr_SetFromErrno(PyExc_OSError);
        return pids;
    }
    PyObject *seq = PySequence_Fast(given, "pids: a sequence of int or None");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    long *pids = PyMem_RawMalloc((size_t)(n ? n : 1) * sizeof(long));
    if (pids == NULL) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        pids[i] = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        if (pids[i] == -1 && PyErr_Occurred()) {
            PyMem_RawFree(pids);
            Py_DECREF(seq);
            return NULL;
        }
    }
    Py_DECREF(seq);
    *count = (size_t)n;
    return pids;
}

PyDoc_STRVAR(walk_doc,
"walk(proc, pids, links, fd_kinds, flags, known, tables=None) -> list\n\n"
"Read each process (pids, or every one in the proc directory when None): a record\n"
"(pid, status, links, cmdline, cgroup, tasks, fds) or (pid, errno). links: per name in links,\n"
"the inode or -errno; tasks: [(tid, links)] or an errno; fds: [(fd, kind index, inode, netns)]\n"
"or an errno. Every namespace seen is resolved into known (see resolve). With WANT_MOUNTS, the\n"
"mount table of each mount namespace not in tables yet goes into tables: mnt inode ->\n"
"(pid, number of mounts, the lines that name nsfs).");

static PyObject *walk(PyObject *Py_UNUSED(module), PyObject *args)
{
    const char *proc;
    PyObject *given, *link_names, *kind_names, *known, *tables = Py_None;
    Walk w = {0};
    if (!PyArg_ParseTuple(args, "sOOOiO!|O:walk", &proc, &given, &link_names, &kind_names, &w.flags,
                          &PyDict_Type, &known, &tables))
        return NULL;
    if (tables != Py_None && !PyDict_Check(tables)) {
        PyErr_SetString(PyExc_TypeError, "tables: a dict or None");
        return NULL;
    }
    w.known = known;
    w.tables = tables == Py_None ? NULL : tables;
    if ((w.nlinks = names_of(link_names, w.links, NULL, "links")) < 0 ||
        (w.nkinds = names_of(kind_names, w.kinds, w.kind_len, "fd_kinds")) < 0)
        return NULL;
    w.mnt_link = -1;
    for (Py_ssize_t i = 0; i < w.nlinks; i++) {
        w.link_types[i] = link_type(w.links[i]);
        if (strcmp(w.links[i], "mnt") == 0)
            w.mnt_link = i;
    }
    w.socket_kind = -1;
    for (Py_ssize_t k = 0; k < w.nkinds; k++)
        if (strcmp(w.kinds[k], "socket") == 0)
            w.socket_kind = k;
    int proc_fd = open(proc, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (proc_fd < 0)
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, proc);
    w.self = self_pid(proc_fd);
    struct rlimit files;
    w.held.below = getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur != RLIM_INFINITY
                       ? (int)(files.rlim_cur / 4 < INT_MAX ? files.rlim_cur / 4 : INT_MAX)
                       : 256;
    size_t n = 0;
    long *pids = pids_to_read(proc_fd, given, &n);
    PyObject *records = pids ? PyList_New(0) : NULL;
    if (records != NULL && (w.sockets = PyDict_New()) == NULL)
        Py_CLEAR(records);
    for (size_t i = 0; records != NULL && i < n; i++) {
        PyObject *record = read_process(&w, proc_fd, pids[i]);
        if (record == NULL || PyList_Append(records, record) < 0)
            Py_CLEAR(records);
        Py_XDECREF(record);
    }
    release_held(&w.held);
    Py_XDECREF(w.sockets);
    PyMem_RawFree(w.mountinfo.data);
    PyMem_RawFree(w.status.data);
    PyMem_RawFree(w.cmdline.data);
    PyMem_RawFree(w.cgroup.data);
    PyMem_RawFree(pids);
    close(proc_fd);
    return records;
}

PyDoc_STRVAR(resolve_doc,
"resolve(fd, known) -> int\n\n"
"Read the namespace behind fd (not closed) into known: inode -> (CLONE_NEW* type, dev, id,\n"
"owner, parent, owner_uid), relatives through NS_GET_USERNS/NS_GET_PARENT included. Returns\n"
"the inode; raises OSError if fd cannot be duplicated or stat'ed.");

static PyObject *resolve_fd(PyObject *Py_UNUSED(module), PyObject *args)
{
    int fd;
    PyObject *known;
    if (!PyArg_ParseTuple(args, "iO!:resolve", &fd, &PyDict_Type, &known))
        return NULL;
    int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (copy < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    long long inode = resolve(known, NULL, copy, 0, 0);
    if (inode < 0)
        return NULL;
    if (inode == 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyLong_FromLongLong(inode);
}

static PyMethodDef methods[] = {
    {"walk", walk, METH_VARARGS, walk_doc},
    {"resolve", resolve_fd, METH_VARARGS, resolve_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "namespacefs._walk",
    "The /proc walk of discovery, compiled (see _walk.c and namespacefs.discover.processes).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__walk(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntMacro(m, WANT_TASKS) < 0 || PyModule_AddIntMacro(m, WANT_FDS) < 0 ||
        PyModule_AddIntMacro(m, WANT_SOCKETS) < 0 || PyModule_AddIntMacro(m, WANT_CGROUP) < 0 ||
        PyModule_AddIntMacro(m, WANT_MOUNTS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

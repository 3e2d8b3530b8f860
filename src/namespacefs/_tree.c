/* namespacefs._tree: the per-entry work of `nsfs shift --chown`, in C (beside _walk.c).
 *
 * Two calls, one directory each, both relative to an fd of the tree's root:
 *   plan(rootfd, path, uid_of, gid_of, id_xattrs, xattr_of, links) reads a directory's entries (its
 *       own "." among them, its subdirectories listed, not recorded: each has a row of its own) and
 *       packs what the shift changes into one record blob;
 *   apply(rootfd, path, blob, forward, skip, xattrs) brings every record of a blob from its old
 *       state to its new one (forward) or back, checking the state of each entry first.
 * What the records mean (the id arithmetic, which xattrs carry ids and how, hard links, what a
 * conflict is worth) is decided in Python (namespacefs.ops.chown_shift), called back with the GIL
 * held between the blocks of syscalls, which run without it. Memory used without the GIL is
 * PyMem_Raw*.
 *
 * Nothing is followed or crossed: a directory is opened with openat2 RESOLVE_BENEATH |
 * RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV (no symlink in any component, no mount point), an entry is
 * statx'ed with AT_SYMLINK_NOFOLLOW and skipped when its mount id is not its directory's (a mount
 * on a file or a directory), and changed with the *at calls' no-follow flags.
 *
 * Kernel interfaces used, with their headers:
 *   openat2 (5.6)                              include/uapi/linux/openat2.h (struct open_how, RESOLVE_*)
 *   statx, STATX_MNT_ID (5.8)                  include/uapi/linux/stat.h (struct statx)
 *   getdents64                                 include/uapi/linux/dirent.h (struct linux_dirent64)
 *   fchownat, fchown, fchmod, close            man 2 (AT_SYMLINK_NOFOLLOW: include/uapi/linux/fcntl.h)
 *   fchmodat2 (6.6)                            include/uapi/asm-generic/unistd.h (AT_SYMLINK_NOFOLLOW)
 *   listxattrat, getxattrat, setxattrat (6.13) include/uapi/asm-generic/unistd.h, struct xattr_args in
 *                                              include/uapi/linux/xattr.h; flistxattr, fgetxattr,
 *                                              fsetxattr for the directory itself (man 2)
 * Syscalls numbered 424 and up are the same on every architecture. Where a kernel lacks the newest
 * (ENOSYS), the same call is made on /proc/self/fd/DIRFD/NAME with the l*xattr calls, fchmodat is
 * used just after statx said the entry is no symlink, and a directory is opened one component at a
 * time (openat O_NOFOLLOW, each on the root's mount).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>

#ifndef SYS_openat2
#define SYS_openat2 437 /* asm-generic/unistd.h, Linux 5.6 */
#endif
#define NR_fchmodat2 452   /* asm-generic/unistd.h, Linux 6.6 */
#define NR_setxattrat 463  /* asm-generic/unistd.h, Linux 6.13 */
#define NR_getxattrat 464
#define NR_listxattrat 465
#ifndef STATX_MNT_ID
#define STATX_MNT_ID 0x00001000U /* linux/stat.h, Linux 5.8 */
#endif

/* include/uapi/linux/xattr.h (Linux 6.13): the value argument of getxattrat/setxattrat */
struct xattr_args_ {
    uint64_t value;
    uint32_t size;
    uint32_t flags;
};

/* One record of a row: a fixed part, then the name (rec.len bytes, no NUL). Native byte order:
 * written and read only here. */
struct rec {
    uint64_t ino;
    uint32_t old_uid, old_gid, new_uid, new_gid, mode;
    uint16_t flags, len;
};
#define REC_XATTRS 1 /* id-carrying xattrs recorded for this entry (the xattrs argument of apply) */
#define MASK (STATX_TYPE | STATX_MODE | STATX_UID | STATX_GID | STATX_INO | STATX_NLINK | STATX_MNT_ID)
#define XATTR_MAX 65536 /* XATTR_SIZE_MAX and XATTR_LIST_MAX, include/uapi/linux/limits.h */
#define SMALL 1024      /* what a list or value is offered first: the kernel allocates what it is offered */

/* --- growable memory (PyMem_Raw: used without the GIL) ---------------------------------------- */

typedef struct {
    char *p;
    size_t len, cap;
} buf;

/* Appends n bytes; their offset, or -1 (out of memory). */
static Py_ssize_t buf_add(buf *b, const void *data, size_t n) {
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        char *p = PyMem_RawRealloc(b->p, cap);
        if (p == NULL)
            return -1;
        b->p = p;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, data, n);
    b->len += n;
    return (Py_ssize_t)(b->len - n);
}

/* Appends a new reference (NULL: the error of making it) to list, which takes it over. */
static int append_new(PyObject *list, PyObject *item) {
    int r = item == NULL ? -1 : PyList_Append(list, item);
    Py_XDECREF(item);
    return r;
}

/* --- the syscalls, each once ------------------------------------------------------------------ */

static volatile int have_openat2 = 1, have_xattrat = 1, have_fchmodat2 = 1; /* cleared on the first ENOSYS */

/* Which mount an entry is on: its mount id, or (before Linux 5.8) its filesystem's device. */
static uint64_t mount_key(const struct statx *st) {
    if (st->stx_mask & STATX_MNT_ID)
        return st->stx_mnt_id;
    return 1ULL << 63 | (uint64_t)st->stx_dev_major << 32 | st->stx_dev_minor;
}

static uint64_t mount_id(int fd) {
    struct statx st;
    return statx(fd, "", AT_EMPTY_PATH, STATX_MNT_ID, &st) == 0 ? mount_key(&st) : 0;
}

/* Without openat2 (before Linux 5.6, or under a tool that does not know it): one component at a
 * time with O_NOFOLLOW, each checked to be on the root's mount; "." and ".." only as the whole
 * path "." (our paths are made of the names getdents gave). */
static int open_by_components(int rootfd, const char *path) {
    char copy[PATH_MAX];
    if (strlen(path) >= sizeof copy)
        return errno = ENAMETOOLONG, -1;
    strcpy(copy, path);
    uint64_t mnt = mount_id(rootfd);
    int fd = openat(rootfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    char *save = NULL;
    for (char *c = strcmp(copy, ".") ? strtok_r(copy, "/", &save) : NULL; c && fd >= 0; c = strtok_r(NULL, "/", &save)) {
        int next = strcmp(c, ".") && strcmp(c, "..") ? openat(fd, c, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                                                     : (errno = EXDEV, -1);
        int saved = errno;
        close(fd);
        if (next >= 0 && mount_id(next) != mnt) {
            close(next);
            next = -1;
            saved = EXDEV;
        }
        fd = next;
        errno = saved;
    }
    return fd;
}

static int open_below(int rootfd, const char *path) {
    struct open_how how = {.flags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC,
                           .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV |
                                      RESOLVE_NO_MAGICLINKS};
    if (have_openat2) {
        int fd = (int)syscall(SYS_openat2, rootfd, path, &how, sizeof how);
        if (fd >= 0 || errno != ENOSYS)
            return fd;
        have_openat2 = 0;
    }
    return open_by_components(rootfd, path);
}

/* name NULL: the directory itself. */
static int stat_at(int dirfd, const char *name, struct statx *st) {
    if (name == NULL)
        return statx(dirfd, "", AT_EMPTY_PATH, MASK, st);
    return statx(dirfd, name, AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT, MASK, st);
}

enum { X_LIST, X_GET, X_SET };

/* One xattr call on an entry (name NULL: the directory itself): listxattrat, getxattrat or
 * setxattrat; on a kernel without them, the l*xattr call on /proc/self/fd/DIRFD/NAME. */
static ssize_t xattr_call(int op, int dirfd, const char *name, const char *xname, void *buf, size_t size) {
    if (name == NULL)
        return op == X_LIST  ? flistxattr(dirfd, buf, size)
               : op == X_GET ? fgetxattr(dirfd, xname, buf, size)
                             : fsetxattr(dirfd, xname, buf, size, 0);
    if (have_xattrat) {
        struct xattr_args_ args = {.value = (uintptr_t)buf, .size = (uint32_t)size};
        ssize_t n = op == X_LIST ? syscall(NR_listxattrat, dirfd, name, AT_SYMLINK_NOFOLLOW, buf, size)
                                 : syscall(op == X_GET ? NR_getxattrat : NR_setxattrat, dirfd, name,
                                           AT_SYMLINK_NOFOLLOW, xname, &args, sizeof args);
        if (n >= 0 || errno != ENOSYS)
            return n;
        have_xattrat = 0;
    }
    char path[PATH_MAX];
    snprintf(path, sizeof path, "/proc/self/fd/%d/%s", dirfd, name);
    return op == X_LIST  ? llistxattr(path, buf, size)
           : op == X_GET ? lgetxattr(path, xname, buf, size)
                         : lsetxattr(path, xname, buf, size, 0);
}

/* A value into scratch (XATTR_MAX bytes), offering the kernel a small buffer first. */
static ssize_t get_value(int dirfd, const char *name, const char *xname, char *scratch) {
    ssize_t n = xattr_call(X_GET, dirfd, name, xname, scratch, SMALL);
    return n < 0 && errno == ERANGE ? xattr_call(X_GET, dirfd, name, xname, scratch, XATTR_MAX) : n;
}

static int chown_at(int dirfd, const char *name, uint32_t uid, uint32_t gid) {
    return name == NULL ? fchown(dirfd, uid, gid) : fchownat(dirfd, name, uid, gid, AT_SYMLINK_NOFOLLOW);
}

static int chmod_at(int dirfd, const char *name, mode_t mode) {
    if (name == NULL)
        return fchmod(dirfd, mode);
    if (have_fchmodat2) {
        int r = (int)syscall(NR_fchmodat2, dirfd, name, mode, AT_SYMLINK_NOFOLLOW);
        if (r == 0 || errno != ENOSYS)
            return r;
        have_fchmodat2 = 0;
    }
    return fchmodat(dirfd, name, mode, 0); /* (statx said: no symlink) */
}

/* --- plan ------------------------------------------------------------------------------------- */

typedef struct {
    uint64_t ino;
    uint32_t uid, gid, mode, nlink;
    uint32_t name;           /* offset in names (NUL-terminated) */
    uint32_t xfirst, xcount; /* its id-carrying xattrs in xs */
} ent;

typedef struct {
    uint32_t which;      /* index in the id_xattrs tuple */
    uint32_t value, len; /* in vals */
} xent;

typedef struct {
    const char *want[8]; /* the id-carrying xattr names (from Python) */
    Py_ssize_t nwant;
    buf ents, names, subdirs, xs, vals; /* subdirs: uint32 offsets in names */
    char *scratch;                      /* XATTR_MAX: a list of names, then each value */
} scan_t;

static void scan_free(scan_t *s) {
    PyMem_RawFree(s->ents.p);
    PyMem_RawFree(s->names.p);
    PyMem_RawFree(s->subdirs.p);
    PyMem_RawFree(s->xs.p);
    PyMem_RawFree(s->vals.p);
    PyMem_RawFree(s->scratch);
}

static int add_name(scan_t *s, const char *name, uint32_t *off) {
    Py_ssize_t at = buf_add(&s->names, name, strlen(name) + 1);
    *off = (uint32_t)at;
    return at < 0 ? -1 : 0;
}

/* The id-carrying xattrs of one entry (name NULL: the directory), their values copied. An xattr
 * that cannot be listed or read (gone, or a filesystem without xattrs) is one there is not. */
static int read_xattrs(scan_t *s, int dirfd, const char *name, ent *e) {
    ssize_t n = xattr_call(X_LIST, dirfd, name, NULL, s->scratch, SMALL);
    if (n < 0 && errno == ERANGE) /* (the kernel allocates what it is offered: offer little first) */
        n = xattr_call(X_LIST, dirfd, name, NULL, s->scratch, XATTR_MAX);
    uint32_t found[8]; /* (a name is listed once: at most nwant of them) */
    size_t nfound = 0;
    if (n <= 0)
        return 0;
    for (char *x = s->scratch; x < s->scratch + n; x += strlen(x) + 1)
        for (Py_ssize_t i = 0; i < s->nwant && nfound < 8; i++)
            if (strcmp(x, s->want[i]) == 0)
                found[nfound++] = (uint32_t)i;
    for (size_t k = 0; k < nfound; k++) {
        xent x = {.which = found[k]};
        ssize_t len = get_value(dirfd, name, s->want[x.which], s->scratch);
        if (len < 0)
            continue;
        Py_ssize_t at = buf_add(&s->vals, s->scratch, (size_t)len);
        x.value = (uint32_t)at;
        x.len = (uint32_t)len;
        if (at < 0 || buf_add(&s->xs, &x, sizeof x) < 0)
            return -1;
        e->xcount++;
    }
    return 0;
}

static int add_ent(scan_t *s, int dirfd, const char *name, const char *stored, const struct statx *st) {
    ent e = {.ino = st->stx_ino, .uid = st->stx_uid, .gid = st->stx_gid, .mode = st->stx_mode,
             .nlink = st->stx_nlink, .xfirst = (uint32_t)(s->xs.len / sizeof(xent))};
    if (add_name(s, stored, &e.name) < 0)
        return -1;
    if (!S_ISLNK(st->stx_mode) && read_xattrs(s, dirfd, name, &e) < 0)
        return -1;
    return buf_add(&s->ents, &e, sizeof e) < 0 ? -1 : 0;
}

/* Every entry of the directory fd into s (without the GIL); 0 or an errno. */
static int scan(int fd, scan_t *s) {
    struct statx st;
    if (stat_at(fd, NULL, &st) < 0)
        return errno;
    uint64_t mnt = mount_key(&st);
    char *dents = PyMem_RawMalloc(65536);
    int err = dents == NULL || add_ent(s, fd, NULL, ".", &st) < 0 ? ENOMEM : 0;
    while (err == 0) {
        ssize_t n = getdents64(fd, dents, 65536);
        if (n <= 0) {
            err = n < 0 ? errno : 0;
            break;
        }
        for (ssize_t off = 0; off < n && err == 0;) {
            struct dirent64 *d = (struct dirent64 *)(dents + off);
            off += d->d_reclen;
            const char *name = d->d_name;
            if (name[0] == '.' && (name[1] == 0 || (name[1] == '.' && name[2] == 0)))
                continue;
            uint32_t at;
            if (d->d_type == DT_DIR) { /* its own row; a mount point is refused when it is opened */
                err = add_name(s, name, &at) < 0 || buf_add(&s->subdirs, &at, sizeof at) < 0 ? ENOMEM : 0;
                continue;
            }
            if (stat_at(fd, name, &st) < 0) {
                err = errno == ENOENT ? 0 : errno; /* (gone since it was listed) */
                continue;
            }
            if (mount_key(&st) != mnt)
                continue; /* something mounted on it: another filesystem's */
            if (S_ISDIR(st.stx_mode))
                err = add_name(s, name, &at) < 0 || buf_add(&s->subdirs, &at, sizeof at) < 0 ? ENOMEM : 0;
            else if (add_ent(s, fd, name, name, &st) < 0)
                err = ENOMEM;
        }
    }
    PyMem_RawFree(dents);
    return err;
}

/* An id through a Python function, remembering the last answer (a tree has few distinct ids). */
static int map_id(PyObject *func, uint32_t old, uint32_t *last_old, uint32_t *last_new, int *known,
                  uint32_t *out) {
    if (*known && *last_old == old) {
        *out = *last_new;
        return 0;
    }
    PyObject *r = PyObject_CallFunction(func, "k", (unsigned long)old);
    if (r == NULL)
        return -1;
    unsigned long v = PyLong_AsUnsignedLong(r);
    Py_DECREF(r);
    if (PyErr_Occurred())
        return -1;
    if (v > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "an id past 2^32-1");
        return -1;
    }
    *known = 1;
    *last_old = old;
    *out = *last_new = (uint32_t)v;
    return 0;
}

/* The recorded xattrs of e that the shift changes, appended to out as (name, xattr, old, new);
 * how many. */
static Py_ssize_t shifted_xattrs(scan_t *s, const ent *e, PyObject *id_xattrs, PyObject *xattr_of,
                                 PyObject *name, PyObject *out) {
    Py_ssize_t kept = 0;
    for (uint32_t k = 0; k < e->xcount; k++) {
        const xent *x = (const xent *)s->xs.p + e->xfirst + k;
        PyObject *xname = PyTuple_GET_ITEM(id_xattrs, x->which);
        PyObject *old = PyBytes_FromStringAndSize(s->vals.p + x->value, x->len);
        PyObject *new = old ? PyObject_CallFunctionObjArgs(xattr_of, xname, old, NULL) : NULL;
        PyObject *row = new && new != Py_None ? PyTuple_Pack(4, name, xname, old, new) : NULL;
        int bad = new == NULL || (new != Py_None && (row == NULL || PyList_Append(out, row) < 0));
        kept += new != NULL && new != Py_None;
        Py_XDECREF(row);
        Py_XDECREF(new);
        Py_XDECREF(old);
        if (bad)
            return -1;
    }
    return kept;
}

/* Whether a hard-linked inode was recorded already (in this row or an earlier one); records it. */
static int seen_link(PyObject *links, uint64_t ino) {
    PyObject *key = PyLong_FromUnsignedLongLong(ino);
    int seen = key ? PySet_Contains(links, key) : -1;
    if (seen == 0 && PySet_Add(links, key) < 0)
        seen = -1;
    Py_XDECREF(key);
    return seen;
}

typedef struct {
    PyObject *uid_of, *gid_of, *id_xattrs, *xattr_of, *links;
    uint32_t lu_old, lu_new, lg_old, lg_new;
    int lu, lg;
} plan_args;

/* One entry into the blob (and its xattrs into out) when the shift changes it: 1, 0 or -1. */
static int pack_ent(scan_t *s, const ent *e, plan_args *a, buf *blob, PyObject *out) {
    struct rec r = {.ino = e->ino, .old_uid = e->uid, .old_gid = e->gid, .mode = e->mode};
    const char *nm = s->names.p + e->name;
    size_t len = strlen(nm);
    if (map_id(a->uid_of, e->uid, &a->lu_old, &a->lu_new, &a->lu, &r.new_uid) < 0 ||
        map_id(a->gid_of, e->gid, &a->lg_old, &a->lg_new, &a->lg, &r.new_gid) < 0)
        return -1;
    Py_ssize_t before = PyList_GET_SIZE(out), kept = 0;
    if (e->xcount) {
        PyObject *name = PyBytes_FromStringAndSize(nm, (Py_ssize_t)len);
        kept = name ? shifted_xattrs(s, e, a->id_xattrs, a->xattr_of, name, out) : -1;
        Py_XDECREF(name);
        if (kept < 0)
            return -1;
    }
    int seen = 0;
    if (r.new_uid == r.old_uid && r.new_gid == r.old_gid && kept == 0)
        return 0;
    if (!S_ISDIR(e->mode) && e->nlink > 1 && (seen = seen_link(a->links, e->ino)) != 0) {
        if (seen > 0 && kept) /* recorded already: its xattrs too */
            seen = PyList_SetSlice(out, before, PyList_GET_SIZE(out), NULL) < 0 ? -1 : seen;
        return seen < 0 ? -1 : 0;
    }
    r.flags = kept ? REC_XATTRS : 0;
    r.len = (uint16_t)len;
    if (buf_add(blob, &r, sizeof r) < 0 || buf_add(blob, nm, len) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    return 1;
}

/* (blob, count, subdirs, xattrs) of the scanned directory. */
static PyObject *pack(scan_t *s, plan_args *a) {
    buf blob = {0};
    Py_ssize_t count = 0, nents = (Py_ssize_t)(s->ents.len / sizeof(ent));
    PyObject *xattrs = PyList_New(0), *subdirs = PyList_New(0), *result = NULL;
    for (Py_ssize_t i = 0; xattrs && subdirs && i < nents; i++) {
        int packed = pack_ent(s, (const ent *)s->ents.p + i, a, &blob, xattrs);
        if (packed < 0)
            goto out;
        count += packed;
    }
    for (size_t i = 0; xattrs && subdirs && i < s->subdirs.len / sizeof(uint32_t); i++) {
        const char *nm = s->names.p + ((const uint32_t *)s->subdirs.p)[i];
        if (append_new(subdirs, PyBytes_FromString(nm)) < 0)
            goto out;
    }
    if (xattrs && subdirs)
        result = Py_BuildValue("(y#nOO)", blob.p ? blob.p : "", (Py_ssize_t)blob.len, count, subdirs, xattrs);
out:
    PyMem_RawFree(blob.p);
    Py_XDECREF(xattrs);
    Py_XDECREF(subdirs);
    return result;
}

static PyObject *plan(PyObject *self, PyObject *args) {
    (void)self;
    int rootfd;
    const char *path;
    plan_args a = {0};
    if (!PyArg_ParseTuple(args, "iyOOO!OO!", &rootfd, &path, &a.uid_of, &a.gid_of, &PyTuple_Type, &a.id_xattrs,
                          &a.xattr_of, &PySet_Type, &a.links))
        return NULL;
    scan_t s = {0};
    s.nwant = PyTuple_GET_SIZE(a.id_xattrs);
    if (s.nwant > 8) {
        PyErr_SetString(PyExc_ValueError, "at most 8 id-carrying xattr names");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < s.nwant; i++)
        if ((s.want[i] = PyUnicode_AsUTF8(PyTuple_GET_ITEM(a.id_xattrs, i))) == NULL)
            return NULL;
    int fd = -1, err = 0;
    Py_BEGIN_ALLOW_THREADS
    s.scratch = PyMem_RawMalloc(XATTR_MAX);
    fd = s.scratch ? open_below(rootfd, path) : -1;
    err = s.scratch == NULL ? ENOMEM : fd < 0 ? errno : scan(fd, &s);
    if (fd >= 0)
        close(fd);
    Py_END_ALLOW_THREADS
    PyObject *result = NULL;
    if (err == ENOENT || err == ENOTDIR || err == ELOOP || err == EXDEV) /* gone, a symlink, a mount */
        result = Py_NewRef(Py_None);
    else if (err)
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
    else
        result = pack(&s, &a);
    scan_free(&s);
    return result;
}

/* --- apply ------------------------------------------------------------------------------------ */

typedef struct {
    const char *xname, *old, *new;
    Py_ssize_t oldlen, newlen;
    int dropped; /* chown drops it: a missing value counts as the state to change */
} xspec;

typedef struct {
    struct rec r;
    const char *name; /* in the blob, r.len bytes */
    uint32_t xfirst, xcount;
    int skip;
} todo;

typedef struct {
    uint32_t index;
    char why[120];
} conflict;

typedef struct {
    todo *items;
    size_t n;
    xspec *xs;
    size_t nxs;
    buf conflicts;
    char *scratch;
    Py_ssize_t changed, already;
} apply_t;

/* The xattrs recorded for one entry (xattrs[name]: [(xattr, old, new, dropped)]) into t->xs. */
static int add_specs(apply_t *t, PyObject *xattrs, todo *item) {
    PyObject *key = PyBytes_FromStringAndSize(item->name, item->r.len);
    PyObject *list = key ? PyDict_GetItemWithError(xattrs, key) : NULL;
    Py_XDECREF(key);
    if (list == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (!PyList_Check(list))
        return PyErr_SetString(PyExc_TypeError, "xattrs: a list per name"), -1;
    item->xfirst = (uint32_t)t->nxs;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list); i++) {
        xspec x;
        char *old, *new;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(list, i), "sy#y#p", &x.xname, &old, &x.oldlen, &new, &x.newlen,
                              &x.dropped))
            return -1;
        x.old = old;
        x.new = new;
        xspec *grown = PyMem_RawRealloc(t->xs, (t->nxs + 1) * sizeof *grown);
        if (grown == NULL)
            return PyErr_NoMemory(), -1;
        t->xs = grown;
        t->xs[t->nxs++] = x;
        item->xcount++;
    }
    return 0;
}

/* The blob's records into t (with the GIL: the skip set and the xattrs dict are read here). */
static int parse(apply_t *t, const char *blob, Py_ssize_t size, PyObject *skip, PyObject *xattrs) {
    size_t cap = 0;
    for (Py_ssize_t off = 0; off < size;) {
        if (size - off < (Py_ssize_t)sizeof(struct rec))
            return PyErr_SetString(PyExc_ValueError, "a truncated record"), -1;
        todo item = {.name = blob + off + sizeof(struct rec)};
        memcpy(&item.r, blob + off, sizeof item.r);
        off += (Py_ssize_t)sizeof(struct rec) + item.r.len;
        if (off > size || item.r.len == 0 || item.r.len > 255)
            return PyErr_SetString(PyExc_ValueError, "a truncated record"), -1;
        if (skip != Py_None) {
            PyObject *key = PyBytes_FromStringAndSize(item.name, item.r.len);
            item.skip = key ? PySet_Contains(skip, key) : -1;
            Py_XDECREF(key);
            if (item.skip < 0)
                return -1;
        }
        if ((item.r.flags & REC_XATTRS) && xattrs != Py_None && add_specs(t, xattrs, &item) < 0)
            return -1;
        if (t->n == cap) {
            cap = cap ? cap * 2 : 64;
            todo *grown = PyMem_RawRealloc(t->items, cap * sizeof *grown);
            if (grown == NULL)
                return PyErr_NoMemory(), -1;
            t->items = grown;
        }
        t->items[t->n++] = item;
    }
    return 0;
}

/* 0: in the end state (changed now: *did), 1: a conflict (why filled), without the GIL. */
static int apply_xattrs(apply_t *t, int dirfd, const char *name, const todo *item, int forward, int *did,
                        char *why, size_t size) {
    for (uint32_t k = 0; k < item->xcount; k++) {
        const xspec *x = t->xs + item->xfirst + k;
        const char *want = forward ? x->new : x->old, *was = forward ? x->old : x->new;
        Py_ssize_t wantlen = forward ? x->newlen : x->oldlen, waslen = forward ? x->oldlen : x->newlen;
        ssize_t cur = get_value(dirfd, name, x->xname, t->scratch);
        if (cur == wantlen && memcmp(t->scratch, want, (size_t)wantlen) == 0)
            continue;
        if ((cur == waslen && memcmp(t->scratch, was, (size_t)waslen) == 0) || (cur < 0 && x->dropped)) {
            if (xattr_call(X_SET, dirfd, name, x->xname, (void *)want, (size_t)wantlen) < 0)
                return snprintf(why, size, "%s", strerrordesc_np(errno)), 1;
            *did = 1;
            continue;
        }
        return snprintf(why, size, "%s changed by someone else", x->xname), 1;
    }
    return 0;
}

/* One entry: 0 in the end state (*did: changed now), 1 a conflict (why filled). */
static int apply_one(apply_t *t, int dirfd, uint64_t mnt, const todo *item, int forward, int *did, char *why,
                     size_t size) {
    char cname[256];
    memcpy(cname, item->name, item->r.len);
    cname[item->r.len] = 0;
    const char *name = strcmp(cname, ".") == 0 ? NULL : cname;
    const struct rec *r = &item->r;
    uint32_t want_uid = forward ? r->new_uid : r->old_uid, want_gid = forward ? r->new_gid : r->old_gid;
    uint32_t was_uid = forward ? r->old_uid : r->new_uid, was_gid = forward ? r->old_gid : r->new_gid;
    struct statx st;
    if (stat_at(dirfd, name, &st) < 0)
        return snprintf(why, size, "%s", errno == ENOENT ? "vanished" : strerrordesc_np(errno)), 1;
    if (name != NULL && mount_key(&st) != mnt)
        return snprintf(why, size, "a mount point now"), 1;
    if ((st.stx_mode & S_IFMT) != (r->mode & S_IFMT))
        return snprintf(why, size, "replaced by another kind of file"), 1;
    if (st.stx_uid != want_uid || st.stx_gid != want_gid) {
        if (st.stx_uid != was_uid || st.stx_gid != was_gid)
            return snprintf(why, size, "owned by %u:%u, expected %u:%u", st.stx_uid, st.stx_gid, was_uid, was_gid), 1;
        if (chown_at(dirfd, name, want_uid, want_gid) < 0)
            return snprintf(why, size, "%s", strerrordesc_np(errno)), 1;
        *did = 1;
    }
    /* chown drops set-user/group-ID bits: put them back */
    if ((r->mode & (S_ISUID | S_ISGID)) && !S_ISLNK(r->mode) && (*did || (st.stx_mode & 07777) != (r->mode & 07777))) {
        if (chmod_at(dirfd, name, r->mode & 07777) < 0)
            return snprintf(why, size, "%s", strerrordesc_np(errno)), 1;
        *did = 1;
    }
    return apply_xattrs(t, dirfd, name, item, forward, did, why, size);
}

/* Every record of t (without the GIL); 0 or ENOMEM. */
static int apply_all(apply_t *t, int rootfd, const char *path, int forward) {
    int fd = open_below(rootfd, path), open_errno = errno;
    struct statx st;
    uint64_t mnt = 0;
    if (fd >= 0 && stat_at(fd, NULL, &st) == 0)
        mnt = mount_key(&st);
    for (size_t i = 0; i < t->n; i++) {
        conflict c = {.index = (uint32_t)i};
        int did = 0, bad;
        if (t->items[i].skip)
            continue;
        if (fd < 0)
            bad = snprintf(c.why, sizeof c.why, "%s", open_errno == ENOENT ? "vanished" : strerrordesc_np(open_errno));
        else
            bad = apply_one(t, fd, mnt, &t->items[i], forward, &did, c.why, sizeof c.why);
        if (bad && buf_add(&t->conflicts, &c, sizeof c) < 0) {
            if (fd >= 0)
                close(fd);
            return ENOMEM;
        }
        t->changed += !bad && did;
        t->already += !bad && !did;
    }
    if (fd >= 0)
        close(fd);
    return 0;
}

static PyObject *conflicts_of(apply_t *t) {
    PyObject *list = PyList_New(0);
    for (size_t i = 0; list && i < t->conflicts.len / sizeof(conflict); i++) {
        const conflict *c = (const conflict *)t->conflicts.p + i;
        const todo *item = t->items + c->index;
        if (append_new(list, Py_BuildValue("(y#s)", item->name, (Py_ssize_t)item->r.len, c->why)) < 0)
            Py_CLEAR(list);
    }
    return list;
}

static PyObject *apply(PyObject *self, PyObject *args) {
    (void)self;
    int rootfd, forward;
    const char *path, *blob;
    Py_ssize_t size;
    PyObject *skip, *xattrs, *result = NULL;
    if (!PyArg_ParseTuple(args, "iyy#pOO", &rootfd, &path, &blob, &size, &forward, &skip, &xattrs))
        return NULL;
    if ((skip != Py_None && !PyAnySet_Check(skip)) || (xattrs != Py_None && !PyDict_Check(xattrs)))
        return PyErr_SetString(PyExc_TypeError, "skip: a set or None; xattrs: a dict or None"), NULL;
    apply_t t = {0};
    if (parse(&t, blob, size, skip, xattrs) == 0) {
        int err;
        Py_BEGIN_ALLOW_THREADS
        t.scratch = PyMem_RawMalloc(XATTR_MAX);
        err = t.scratch == NULL ? ENOMEM : apply_all(&t, rootfd, path, forward);
        Py_END_ALLOW_THREADS
        PyObject *conflicts = err ? PyErr_NoMemory() : conflicts_of(&t);
        if (conflicts != NULL)
            result = Py_BuildValue("(nnN)", t.changed, t.already, conflicts);
    }
    PyMem_RawFree(t.items);
    PyMem_RawFree(t.xs);
    PyMem_RawFree(t.conflicts.p);
    PyMem_RawFree(t.scratch);
    return result;
}

static PyMethodDef methods[] = {
    {"plan", plan, METH_VARARGS, "plan(rootfd, path, uid_of, gid_of, id_xattrs, xattr_of, links, record)"},
    {"apply", apply, METH_VARARGS, "apply(rootfd, path, blob, forward, skip, xattrs)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_tree", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__tree(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && (PyModule_AddIntConstant(m, "RECORD_SIZE", (long)sizeof(struct rec)) < 0 ||
                      PyModule_AddIntConstant(m, "REC_XATTRS", REC_XATTRS) < 0)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

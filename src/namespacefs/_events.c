/* namespacefs._events: what the live model's watchers read, parsed in C, one call per drain.
 *
 * What it is for: the daemon's updater reads every event source itself, once per update
 * (service.watchers.Listener). In Python each event cost ~30 us (a recv, a generator, struct
 * unpacking, tuples); a host that forks thousands of times a second would spend a core on that
 * alone. Here a drain costs its syscalls, and what comes back is the pids to re-read.
 *
 *   proc_events(fd, limit) -> (pids, (forks, execs, exits, threads), overruns, errno, drained)
 *       Read up to `limit` datagrams from the proc connector socket fd (MSG_DONTWAIT):
 *       include/uapi/linux/netlink.h (struct nlmsghdr, NLMSG_*), connector.h (struct cn_msg,
 *       CN_IDX_PROC, CN_VAL_PROC), cn_proc.h (struct proc_event). pids: for each fork the new
 *       task's process (child_tgid; a new thread counts as `threads`), for each exec and exit of a
 *       process (not a thread: pid == tgid) that process. overruns: recv said ENOBUFS (the kernel
 *       dropped events). errno: of a recv that failed otherwise (0: none). drained: recv said
 *       EAGAIN (everything queued was read).
 *
 *   perf_records(ring, data_offset, data_size) -> (samples, lost)
 *       The records written to one perf ring buffer since the last call, which frees their space:
 *       include/uapi/linux/perf_event.h (struct perf_event_mmap_page data_head/data_tail, struct
 *       perf_event_header, PERF_RECORD_SAMPLE, PERF_RECORD_LOST). ring: the writable mmap of the
 *       ring (the control page, then data_size bytes at data_offset). samples: (pid, tid, common
 *       type, ret) of each sample of PERF_SAMPLE_TID | PERF_SAMPLE_RAW whose raw record is a
 *       sys_exit_* tracepoint's (include/trace/events/syscalls.h: common fields, syscall nr, ret);
 *       lost: records the kernel dropped (a full ring).
 *
 * Nothing here trusts a length it reads: a message or record that does not fit what is left ends
 * the parse of its datagram or ring (tests/test_events.py feeds both garbage).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <linux/connector.h>
#include <linux/cn_proc.h>
#include <linux/netlink.h>
#include <linux/perf_event.h>

#define DATAGRAM 65536

/* What one drain found: the pids to re-read (a growing array: filled without the GIL). */
typedef struct {
    long *pids;
    size_t n, cap;
    long counts[4]; /* forks, execs, exits, new threads */
} Found;

/* The events of one datagram, appended to found (and counted). -1 when out of memory. Syscalls
 * and memory only: runs without the GIL. */
static int parse_datagram(const unsigned char *data, size_t len, Found *found)
{
    size_t off = 0;
    while (off + sizeof(struct nlmsghdr) <= len) {
        struct nlmsghdr h;
        memcpy(&h, data + off, sizeof h);
        if (h.nlmsg_len < sizeof h || h.nlmsg_len > len - off)
            return 0; /* (a length that does not fit: the rest is not trusted) */
        const unsigned char *msg = data + off + sizeof h;
        size_t body = h.nlmsg_len - sizeof h;
        /* cn_msg, then proc_event: what (u32), cpu (u32), timestamp_ns (u64), then the ids */
        size_t need = sizeof(struct cn_msg) + offsetof(struct proc_event, event_data) + 4 * sizeof(uint32_t);
        if (h.nlmsg_type == NLMSG_DONE && body >= need) {
            struct cn_msg cn;
            memcpy(&cn, msg, sizeof cn);
            if (cn.id.idx == CN_IDX_PROC && cn.id.val == CN_VAL_PROC) {
                const unsigned char *ev = msg + sizeof cn;
                uint32_t what, ids[4]; /* fork: parent pid, tgid, child pid, tgid; exec, exit: pid, tgid */
                memcpy(&what, ev + offsetof(struct proc_event, what), sizeof what);
                memcpy(ids, ev + offsetof(struct proc_event, event_data), sizeof ids);
                long pid = 0;
                int kind = 0; /* the index in counts */
                if (what == PROC_EVENT_FORK) {
                    pid = ids[3];
                    kind = ids[2] == ids[3] ? 0 : 3;
                } else if ((what == PROC_EVENT_EXEC || what == PROC_EVENT_EXIT) && ids[0] == ids[1]) {
                    pid = ids[1];
                    kind = what == PROC_EVENT_EXEC ? 1 : 2;
                }
                if (pid > 0) { /* (0 is no process: nothing the kernel sends) */
                    if (found->n == found->cap) {
                        size_t cap = found->cap ? 2 * found->cap : 256;
                        long *grown = PyMem_RawRealloc(found->pids, cap * sizeof(long));
                        if (grown == NULL)
                            return -1;
                        found->pids = grown;
                        found->cap = cap;
                    }
                    found->pids[found->n++] = pid;
                    found->counts[kind]++;
                }
            }
        }
        off += NLMSG_ALIGN(h.nlmsg_len);
    }
    return 0;
}

static PyObject *proc_events(PyObject *Py_UNUSED(module), PyObject *args)
{
    int fd, limit;
    if (!PyArg_ParseTuple(args, "ii:proc_events", &fd, &limit))
        return NULL;
    unsigned char *buf = PyMem_RawMalloc(DATAGRAM);
    if (buf == NULL)
        return PyErr_NoMemory();
    Found found = {NULL, 0, 0, {0, 0, 0, 0}};
    long overruns = 0;
    int err = 0, drained = 0, nomem = 0;
    Py_BEGIN_ALLOW_THREADS /* (one block for the whole drain: a hand-over of the GIL per recv costs more than it) */
    for (int i = 0; i < limit && !nomem; i++) {
        ssize_t n = recv(fd, buf, DATAGRAM, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == ENOBUFS) { /* events were dropped; what is queued after it is still read */
                overruns++;
                continue;
            }
            drained = errno == EAGAIN || errno == EWOULDBLOCK;
            err = drained ? 0 : errno;
            break;
        }
        nomem = parse_datagram(buf, (size_t)n, &found) < 0;
    }
    Py_END_ALLOW_THREADS
    PyMem_RawFree(buf);
    PyObject *pids = nomem ? NULL : PyList_New((Py_ssize_t)found.n);
    for (size_t i = 0; pids != NULL && i < found.n; i++) {
        PyObject *item = PyLong_FromLong(found.pids[i]);
        if (item == NULL)
            Py_CLEAR(pids);
        else
            PyList_SET_ITEM(pids, (Py_ssize_t)i, item);
    }
    PyMem_RawFree(found.pids);
    if (pids == NULL)
        return nomem ? PyErr_NoMemory() : NULL;
    return Py_BuildValue("N(llll)liN", pids, found.counts[0], found.counts[1], found.counts[2], found.counts[3],
                         overruns, err, PyBool_FromLong(drained));
}

/* len bytes at `position` (a free-running offset) of the data area, which wraps around. */
static void ring_read(const unsigned char *data, uint64_t size, uint64_t position, void *out, size_t len)
{
    uint64_t start = position % size;
    size_t first = (size_t)(size - start < len ? size - start : len);
    memcpy(out, data + start, first);
    memcpy((unsigned char *)out + first, data, len - first);
}

/* One sample's body (PERF_SAMPLE_TID | PERF_SAMPLE_RAW: u32 pid, tid; u32 raw size; the raw
 * tracepoint record: u16 common_type, u8 flags, u8 preempt_count, s32 common_pid, s32 nr (+4
 * padding), s64 ret) as (pid, tid, common type, ret), or NULL with no error when it is too short. */
static PyObject *sample(const unsigned char *body, size_t len)
{
    uint32_t tids[2], raw;
    uint16_t type;
    int64_t ret;
    if (len < 3 * sizeof(uint32_t) + 24)
        return NULL;
    memcpy(tids, body, sizeof tids);
    memcpy(&raw, body + 8, sizeof raw);
    if (raw < 24 || raw > len - 12)
        return NULL;
    memcpy(&type, body + 12, sizeof type);
    memcpy(&ret, body + 12 + 16, sizeof ret);
    return Py_BuildValue("(IIHL)", tids[0], tids[1], type, (long long)ret);
}

static PyObject *perf_records(PyObject *Py_UNUSED(module), PyObject *args)
{
    Py_buffer ring;
    unsigned long long offset, size;
    if (!PyArg_ParseTuple(args, "w*KK:perf_records", &ring, &offset, &size))
        return NULL;
    if ((size_t)ring.len < sizeof(struct perf_event_mmap_page) || size == 0 || offset > (unsigned long long)ring.len
        || size > (unsigned long long)ring.len - offset) {
        PyBuffer_Release(&ring);
        PyErr_SetString(PyExc_ValueError, "the data area is not within the ring");
        return NULL;
    }
    struct perf_event_mmap_page *page = ring.buf;
    const unsigned char *data = (const unsigned char *)ring.buf + offset;
    uint64_t head = __atomic_load_n(&page->data_head, __ATOMIC_ACQUIRE); /* (then the records it covers) */
    uint64_t tail = page->data_tail;
    PyObject *samples = PyList_New(0);
    unsigned long long lost = 0;
    unsigned char *body = PyMem_RawMalloc(65536);
    if (body == NULL) {
        Py_XDECREF(samples);
        samples = PyErr_NoMemory();
    }
    while (samples != NULL && head - tail >= sizeof(struct perf_event_header) && head - tail <= size) {
        struct perf_event_header h;
        ring_read(data, size, tail, &h, sizeof h);
        if (h.size < sizeof h || h.size > head - tail)
            break; /* a corrupt header: the rest is dropped */
        size_t len = h.size - sizeof h;
        ring_read(data, size, tail + sizeof h, body, len);
        if (h.type == PERF_RECORD_SAMPLE) {
            PyObject *item = sample(body, len);
            if (item != NULL && PyList_Append(samples, item) < 0)
                Py_CLEAR(samples);
            Py_XDECREF(item);
            if (PyErr_Occurred())
                Py_CLEAR(samples);
        } else if (h.type == PERF_RECORD_LOST && len >= 16) {
            uint64_t n;
            memcpy(&n, body + 8, sizeof n); /* u64 id, u64 lost */
            lost += n;
        }
        tail += h.size;
    }
    __atomic_store_n(&page->data_tail, head, __ATOMIC_RELEASE); /* (everything up to head is read or dropped) */
    PyMem_RawFree(body);
    PyBuffer_Release(&ring);
    return samples == NULL ? NULL : Py_BuildValue("NK", samples, lost);
}

static PyMethodDef methods[] = {
    {"proc_events", proc_events, METH_VARARGS,
     "proc_events(fd, limit) -> (pids, (forks, execs, exits, threads), overruns, errno, drained)"},
    {"perf_records", perf_records, METH_VARARGS,
     "perf_records(ring, data_offset, data_size) -> (samples: [(pid, tid, common type, ret)], lost)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "namespacefs._events",
    "The live model's event sources parsed in C: the proc connector's datagrams, the perf rings.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__events(void)
{
    return PyModule_Create(&module);
}

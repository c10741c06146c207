/* The native generator's measured window (bench/harness/nativegen.py), in C.
 *
 * The light generator (lightgen.py) already builds and protects every packet
 * before the window and checks what arrived after it; inside the window it
 * only sends, reads and sleeps. Profiled (perf, 500 calls socket to socket,
 * 6 December 2026), two thirds of that window was still the interpreter:
 * socket.recvmsg alone (a tuple, a bytes, an ancillary list and the source
 * address formatted with inet_ntop for every datagram) cost as much as every
 * sendto's kernel path. This file runs the same loop with the GIL released:
 * per tick, send() what is due (one clock read each), one non-blocking
 * epoll_wait, one recvmmsg per ready socket into preallocated buffers with the
 * kernel's receive time (SO_TIMESTAMPNS), then clock_nanosleep to the next
 * tick. What remains is the kernel's own work per datagram.
 *
 * Same schedule and rules as lightgen.run_light (which documents them); the
 * caller lays out every packet in one buffer and gets back, per packet, its
 * send time, and per received datagram its bytes (packed in an arena), its
 * receive socket and its kernel time. Bounds: everything is the caller's
 * preallocated memory (slots and arena); what does not fit is read into a
 * scratch buffer and counted `overflow`. Every byte read is untrusted and is
 * only copied here, never parsed (nativegen.py checks it after the window).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define RECV_SIZE 2048
#define CONTROL_SIZE CMSG_SPACE(sizeof(struct timespec))
/* Linux's SO_TIMESTAMPNS (asm-generic/socket.h) = SCM_TIMESTAMPNS. */
#ifndef SCM_TIMESTAMPNS
#define SCM_TIMESTAMPNS 35
#endif
/* Signals (Ctrl-C) are looked at this often, with the GIL, in ticks. */
#define SIGNAL_TICKS 2000

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int check_buffer(Py_buffer *view, const char *name, Py_ssize_t itemsize, Py_ssize_t min_items) {
    if (view->len % itemsize != 0 || view->len / itemsize < min_items) {
        PyErr_Format(PyExc_ValueError, "%s: at least %zd items of %zd bytes", name, min_items, itemsize);
        return -1;
    }
    return 0;
}

typedef struct {
    unsigned char data[BATCH][RECV_SIZE];
    unsigned char control[BATCH][CONTROL_SIZE];
    struct iovec iov[BATCH];
    struct mmsghdr msgs[BATCH];
} Scratch;

static int64_t kernel_time(struct msghdr *msg) {
    for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c != NULL; c = CMSG_NXTHDR(msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS && c->cmsg_len >= CMSG_LEN(sizeof(struct timespec))) {
            struct timespec ts;
            memcpy(&ts, CMSG_DATA(c), sizeof ts);
            return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
        }
    }
    return 0;
}

/* Sends packet k of the run on its flow's socket; a full local buffer (EAGAIN) loses it, as on a wire. */
static inline void send_one(const int32_t *fds, const struct sockaddr_in *dests, Py_ssize_t n, const unsigned char *packets,
                            const int64_t *offsets, Py_ssize_t k) {
    Py_ssize_t flow = k % n;
    size_t length = (size_t)(offsets[k + 1] - offsets[k]);
    if (dests[flow].sin_family == 0)
        (void)send(fds[flow], packets + offsets[k], length, MSG_DONTWAIT);
    else
        (void)sendto(fds[flow], packets + offsets[k], length, MSG_DONTWAIT, (const struct sockaddr *)&dests[flow], sizeof dests[flow]);
}

/* Calls `callable()` with the GIL; returns -1 (exception set) if it raised. */
static int call_back(PyObject *callable) {
    PyGILState_STATE state = PyGILState_Ensure();
    PyObject *result = PyObject_CallNoArgs(callable);
    int failed = result == NULL;
    Py_XDECREF(result);
    PyGILState_Release(state);
    return failed ? -1 : 0;
}

PyDoc_STRVAR(run_window_doc,
"run_window(send_fds, send_dests, packets, packet_offsets, stamps, recv_fds, recv_reads, arena, kept_offsets,\n"
"           kept_source, kept_arrival, window_first, interval_ns, tick_ns, send_deadline_ns, drain_ns,\n"
"           quiet_end_ns, max_sends_per_tick, on_window_start, on_window_end)\n"
"    -> (t0_ns, sent_through, kept, raw_received, overflow)\n\n"
"Sends packet k (bytes packets[packet_offsets[k]:packet_offsets[k+1]]) on send_fds[k % n] at\n"
"(send_dests: one 16-byte struct sockaddr_in per flow; family 0 = the socket is connected, send())\n"
"t0 + k * interval_ns (CLOCK_REALTIME), writing its send time into stamps[k]; reads each ready\n"
"recv_fds[i] (at most recv_reads[i] datagrams a tick) into the arena: datagram j is\n"
"arena[kept_offsets[j]:kept_offsets[j+1]], from recv_fds[kept_source[j]], kernel time\n"
"kept_arrival[j]. Calls on_window_start() before packet window_first goes out and\n"
"on_window_end() after the last send. send_deadline_ns and the others are relative to t0.");

static PyObject *run_window(PyObject *self, PyObject *args) {
    Py_buffer send_fds_b, dests_b, packets_b, offsets_b, stamps_b, recv_fds_b, reads_b, arena_b, kept_off_b, kept_src_b, kept_arr_b;
    Py_ssize_t window_first, max_sends;
    double interval_ns, tick_ns, deadline_rel, drain_rel, quiet_rel;
    PyObject *on_start, *on_end;
    if (!PyArg_ParseTuple(args, "y*y*y*y*w*y*y*w*w*w*w*ndddddnOO", &send_fds_b, &dests_b, &packets_b, &offsets_b, &stamps_b,
                          &recv_fds_b, &reads_b, &arena_b, &kept_off_b, &kept_src_b, &kept_arr_b, &window_first,
                          &interval_ns, &tick_ns, &deadline_rel, &drain_rel, &quiet_rel, &max_sends, &on_start, &on_end))
        return NULL;
    PyObject *result = NULL;
    Scratch *scratch = NULL;
    struct epoll_event *events = NULL;
    int ep = -1;

    Py_ssize_t n = send_fds_b.len / (Py_ssize_t)sizeof(int32_t);
    Py_ssize_t total = offsets_b.len / (Py_ssize_t)sizeof(int64_t) - 1;
    Py_ssize_t m = recv_fds_b.len / (Py_ssize_t)sizeof(int32_t);
    Py_ssize_t slots = kept_src_b.len / (Py_ssize_t)sizeof(int32_t);
    if (n < 1 || total < 0 || m < 1 || check_buffer(&send_fds_b, "send_fds", 4, 1) < 0
        || check_buffer(&dests_b, "send_dests", sizeof(struct sockaddr_in), n) < 0
        || check_buffer(&offsets_b, "packet_offsets", 8, 1) < 0 || check_buffer(&stamps_b, "stamps", 8, total) < 0
        || check_buffer(&recv_fds_b, "recv_fds", 4, 1) < 0 || check_buffer(&reads_b, "recv_reads", 4, m) < 0
        || check_buffer(&kept_src_b, "kept_source", 4, 0) < 0 || check_buffer(&kept_off_b, "kept_offsets", 8, slots + 1) < 0
        || check_buffer(&kept_arr_b, "kept_arrival", 8, slots) < 0 || !PyCallable_Check(on_start) || !PyCallable_Check(on_end)
        || !(interval_ns > 0) || !(tick_ns > 0) || max_sends < 1 || window_first < 0 || window_first > total) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "run_window: inconsistent arguments");
        goto done;
    }
    const int32_t *send_fds = send_fds_b.buf, *recv_fds = recv_fds_b.buf, *reads = reads_b.buf;
    const int64_t *offsets = offsets_b.buf;
    const struct sockaddr_in *dests = dests_b.buf;
    const unsigned char *packets = packets_b.buf;
    for (Py_ssize_t k = 0; k < total; k++) {
        if (offsets[k] < 0 || offsets[k] > offsets[k + 1] || offsets[k + 1] > packets_b.len) {
            PyErr_SetString(PyExc_ValueError, "packet_offsets out of the packets buffer");
            goto done;
        }
    }
    int64_t *stamps = stamps_b.buf, *kept_offsets = kept_off_b.buf, *kept_arrival = kept_arr_b.buf;
    int32_t *kept_source = kept_src_b.buf;
    unsigned char *arena = arena_b.buf;
    Py_ssize_t arena_size = arena_b.len;

    scratch = PyMem_RawCalloc(1, sizeof(Scratch));
    events = PyMem_RawCalloc((size_t)m, sizeof(struct epoll_event));
    if (scratch == NULL || events == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    for (Py_ssize_t i = 0; i < m; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, recv_fds[i], &ev) < 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            goto done;
        }
    }
    for (int j = 0; j < BATCH; j++) {
        scratch->iov[j].iov_base = scratch->data[j];
        scratch->iov[j].iov_len = RECV_SIZE;
        scratch->msgs[j].msg_hdr.msg_iov = &scratch->iov[j];
        scratch->msgs[j].msg_hdr.msg_iovlen = 1;
    }

    int64_t t0 = 0, end_ns = 0, last_arrival = 0;
    Py_ssize_t next = 0, sent_through = 0, kept = 0;
    long long raw_received = 0, overflow = 0;
    int window_started = 0, through_set = 0, failed = 0;
    long ticks = 0;
    kept_offsets[0] = 0;

    Py_BEGIN_ALLOW_THREADS
    t0 = now_ns();
    last_arrival = t0;
    int64_t deadline = t0 + (int64_t)deadline_rel;
    for (;;) {
        int64_t tick_start = now_ns();
        if (next < total) {
            Py_ssize_t due = (Py_ssize_t)((double)(tick_start - t0) / interval_ns) + 1;
            if (due > total) due = total;
            if (due > next + max_sends) due = next + max_sends;
            if (tick_start > deadline) {
                /* Out of time: the rest is never sent (offered_pps shows it). */
                due = total;
                sent_through = next;
                through_set = 1;
                next = total;
            }
            if (!window_started && due > window_first) {
                while (next < window_first) {
                    stamps[next] = now_ns();
                    send_one(send_fds, dests, n, packets, offsets, next);
                    next++;
                }
                window_started = 1;
                if (call_back(on_start) < 0) { failed = 1; break; }
            }
            while (next < due) {
                stamps[next] = now_ns();
                send_one(send_fds, dests, n, packets, offsets, next);
                next++;
            }
            if (next >= total && end_ns == 0) {
                if (!through_set) sent_through = total;
                if (call_back(on_end) < 0) { failed = 1; break; }
                end_ns = now_ns() + (int64_t)drain_rel;
            }
        } else if (tick_start > end_ns) {
            break;
        }
        /* Read what has arrived, without waiting (level-triggered: the next tick reads the rest). */
        int ready = epoll_wait(ep, events, (int)m, 0);
        for (int e = 0; e < ready; e++) {
            Py_ssize_t source = (Py_ssize_t)events[e].data.u64;
            int vlen = reads[source] < BATCH ? reads[source] : BATCH;
            if (vlen < 1) vlen = 1;
            for (int j = 0; j < vlen; j++) {
                scratch->msgs[j].msg_hdr.msg_control = scratch->control[j];
                scratch->msgs[j].msg_hdr.msg_controllen = CONTROL_SIZE;
                scratch->msgs[j].msg_hdr.msg_name = NULL;
                scratch->msgs[j].msg_hdr.msg_namelen = 0;
                scratch->msgs[j].msg_hdr.msg_flags = 0;
            }
            int got = recvmmsg(recv_fds[source], scratch->msgs, (unsigned int)vlen, MSG_DONTWAIT, NULL);
            for (int j = 0; j < got; j++) {
                raw_received++;
                size_t length = scratch->msgs[j].msg_len;
                if (kept >= slots || kept_offsets[kept] + (int64_t)length > arena_size) {
                    overflow++;
                    continue;
                }
                memcpy(arena + kept_offsets[kept], scratch->data[j], length);
                kept_arrival[kept] = kernel_time(&scratch->msgs[j].msg_hdr);
                kept_source[kept] = (int32_t)source;
                kept_offsets[kept + 1] = kept_offsets[kept] + (int64_t)length;
                kept++;
            }
        }
        if (ready > 0) {
            last_arrival = tick_start;
        } else if (next >= total && raw_received >= sent_through && tick_start - last_arrival > (int64_t)quiet_rel) {
            break; /* everything sent may be in (strangers and duplicates count too), and a while passed quietly */
        }
        if (++ticks % SIGNAL_TICKS == 0) {
            PyGILState_STATE state = PyGILState_Ensure();
            int interrupted = PyErr_CheckSignals() < 0;
            PyGILState_Release(state);
            if (interrupted) { failed = 1; break; }
        }
        /* Sleep out the tick: at most one wakeup a tick, whatever the load. */
        int64_t wake = tick_start + (int64_t)tick_ns;
        if (now_ns() < wake) {
            struct timespec until = {.tv_sec = wake / 1000000000LL, .tv_nsec = wake % 1000000000LL};
            while (clock_nanosleep(CLOCK_REALTIME, TIMER_ABSTIME, &until, NULL) == EINTR) {
            }
        }
    }
    Py_END_ALLOW_THREADS

    if (failed) {
        if (end_ns == 0) {
            /* The window's end was never called back: the caller's figures still need it. */
            PyObject *type, *value, *traceback;
            PyErr_Fetch(&type, &value, &traceback);
            PyObject *ended = PyObject_CallNoArgs(on_end);
            Py_XDECREF(ended);
            PyErr_Clear();
            PyErr_Restore(type, value, traceback);
        }
        goto done;
    }
    result = Py_BuildValue("LnnLL", (long long)t0, sent_through, kept, raw_received, overflow);

done:
    if (ep >= 0) close(ep);
    PyMem_RawFree(scratch);
    PyMem_RawFree(events);
    PyBuffer_Release(&send_fds_b);
    PyBuffer_Release(&dests_b);
    PyBuffer_Release(&packets_b);
    PyBuffer_Release(&offsets_b);
    PyBuffer_Release(&stamps_b);
    PyBuffer_Release(&recv_fds_b);
    PyBuffer_Release(&reads_b);
    PyBuffer_Release(&arena_b);
    PyBuffer_Release(&kept_off_b);
    PyBuffer_Release(&kept_src_b);
    PyBuffer_Release(&kept_arr_b);
    return result;
}

static PyMethodDef methods[] = {
    {"run_window", run_window, METH_VARARGS, run_window_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_native_window", "The native generator's measured window (see bench/harness/nativegen.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__native_window(void) { return PyModule_Create(&module); }

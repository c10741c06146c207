/* The relay's compiled fast path (issue 17): plain RTP forwarding in C.
 *
 * The Python relay (core.py) owns every piece of state. It programs this
 * helper with a route table (fastpath.py builds it): for each latched UDP bot
 * whose packets need nothing but forwarding, its source address, SSRC,
 * payload type, rate limit and the latched addresses of the others in its
 * room. FastPath.drain() reads the media socket with recvmmsg (GIL released,
 * MSG_DONTWAIT), forwards with sendmmsg every datagram it can route itself,
 * counts what it forwarded per route, and hands everything else back to
 * Python unchanged, in arrival order:
 *
 *   - anything not from a routed IPv4 source, not RTP by its first byte
 *     (RFC 7983 §7: 128-191) or RTCP by its second (RFC 5761 §4: 192-223),
 *     shorter than an RTP header, with another SSRC or payload type: Python's
 *     handle_datagram decides (and counts the drop) as without the helper;
 *   - once one datagram of a batch went to Python, every later one of that
 *     batch does too and drain() returns after the batch, so Python handles
 *     them in order and its state may change (a re-latch, a mute) before the
 *     helper reads again -- it never acts on a datagram Python would see in
 *     a different state;
 *   - a route flagged "mirror" (the speaker's speech is tracked) is forwarded
 *     here and a copy goes to Python for speech detection only;
 *   - a route with a level tracker (RouteLevel: the speaker's tracker is on
 *     the RFC 6464 level path) runs the level detector here on each forwarded
 *     packet and hands Python only its events (SPEECH entries, in order among
 *     the mirrored copies); a packet without a level is forwarded, mirrored,
 *     and the rest of its batch goes to Python, which takes the tracker back
 *     around it (level, set_level).
 *
 * Drops the helper decides itself: a datagram longer than MAX_DATAGRAM
 * (counted "oversized", as the transport does) and a route's packets beyond
 * its rate (counted per route as "rate_limited", as MediaRelay.forward does).
 * When the kernel refuses a send (EAGAIN) the helper stops forwarding for the
 * rest of the call and returns the datagrams it could not send, in order, for
 * the transport's bounded backlog; any other send error is counted by errno
 * name and that one datagram skipped, as sendto's caller does.
 *
 * SRTP legs (a browser's DTLS-SRTP leg, webrtc/leg.py): a route may come from
 * a browser (its SRTP is authenticated, decrypted and restamped with the
 * session's payload type and SSRC, as WebRtcLeg.handle_media does) and a
 * destination may be a browser (the packet is renumbered onto its outbound
 * stream and protected, as WebRtcSink.deliver_rtp does). libsrtp is the one
 * inside pylibsrtp's own compiled module: Python gives the addresses of its
 * srtp_protect/srtp_unprotect (set_srtp) and of each leg's srtp_t, and keeps
 * the SrtpContext owning them alive while a table names them. A datagram that
 * does not authenticate (forged, replayed, too old) goes to Python untouched
 * (it was decrypted in a copy; libsrtp changes no state on a failure), which
 * refuses it again and counts it as without the helper. A protect that fails
 * is counted per destination (srtp_protect_failed) as the sink counts it.
 * libsrtp sessions are not thread-safe: the thread calls them only under
 * `lock`, and Python touches a routed leg's sessions only while the thread is
 * paused (a hand-over, or a route change, which pauses it first).
 *
 * Bounds: MAX_ROUTES routes, MAX_FANOUT destinations per route, BATCH
 * datagrams per recvmmsg; all memory is allocated when the object is made.
 * Every byte read from the socket is untrusted: the only reads are of the
 * first two bytes and the 4..12 header bytes, each after a length check.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define MAX_DATAGRAM 1500
#define RECV_SIZE (MAX_DATAGRAM + 1)
#define MAX_FANOUT 16
#define MAX_ROUTES 65536
#define TABLE_SIZE (2 * MAX_ROUTES) /* open addressing, load <= 1/2 */
#define SEND_BATCH (BATCH * MAX_FANOUT)
#define RTP_HEADER 12
#define ERRNO_SLOTS 160
/* The forwarding thread's hand-over to Python: at most this many datagrams
 * wait (each a copy); with fewer than BATCH free the thread stops reading. */
#define QUEUE_SLOTS 512 /* = transport.DRAIN_BATCH: what Python handles per wakeup stays bounded as before */
/* A datagram takes at most 2 slots (a mirrored copy or one for Python; or up to 2
 * speech events): the thread reads a batch only with 2 * BATCH free. */

enum { TO_PYTHON = 0, MIRRORED = 1, UNSENT = 2, SPEECH = 3 /* a LevelEvent: with the mirrored, in order */ };

/* libsrtp 2.x's srtp_protect / srtp_unprotect: (srtp_t, buffer, int *length) -> srtp_err_status_t. */
typedef int (*srtp_call)(void *session, void *buffer, int *length);
#define SRTP_MAX_TRAILER (16 + 128) /* SRTP_MAX_TAG_LEN + SRTP_MAX_MKI_LEN: as webrtc/srtp.py */
#define MAX_RTP_TO_PROTECT (MAX_DATAGRAM - SRTP_MAX_TRAILER)
#define SEND_SIZE MAX_DATAGRAM

/* A browser destination: its outbound stream's numbering (OutboundStream) and SRTP session. */
typedef struct {
    void *session; /* NULL: a plain destination */
    uint32_t ssrc;
    uint8_t payload_type;
    uint16_t seq_offset, last_seq;
    uint32_t ts_offset, last_ts;
    double last_time;
    unsigned long long failed; /* protects that failed: not sent */
} SecureDest;

/* --- RFC 6464 speech levels (issue 17): a C copy of audio.vad.LevelDetector --------
 *
 * The same arithmetic in the same order as _NoiseFloor.is_speech and
 * SpeechGate.update/expire (IEEE doubles both sides), so a run here gives the
 * events and final state a Python run gives. The state comes from
 * LevelDetector.state() and goes back through LevelDetector.restore(): it has
 * one owner at a time. A route's speaker tracker (RouteLevel, set_level) runs it
 * on each forwarded packet that carries a level. */

#define BOT_AUDIO_LEVEL_ID 1 /* audio.vad.BOT_AUDIO_LEVEL_ID */

typedef struct {
    /* LevelDetector.config() */
    double margin, min_db, rise, threshold, release;
    int use_voice;
    long long onset_ms, hangover_ms, frame_ms;
    /* LevelDetector.state() */
    int has_floor, speaking, has_run, has_last;
    double floor;
    long long started_ms, run_start, speech_end, last_ms;
} LevelState;

enum { LEVEL_NONE = 0, LEVEL_STARTED = 1, LEVEL_STOPPED = 2, LEVEL_BARGE = 3 };

/* A routed speaker's speech tracker on the level path (speech.SpeechTracker,
 * MediaRelay._track_speech), owned by the route from set_routes/set_level until
 * level()/set_level take it back: the detector, the stream clock and the
 * fields the relay reads (last_ms, last_voice, the run's onset, whether it has
 * interrupted the bots, the barge-in limit; -1 none). */
typedef struct {
    int on;
    int level_id; /* -1: a bot's BOT_AUDIO_LEVEL_ID when the packet has an extension */
    LevelState st;
    uint32_t origin;
    long long packet_ms, last_ms, onset_ms, limit;
    int has_onset, interrupted;
    double last_voice;
} RouteLevel;

/* One speech event for Python: LEVEL_STARTED (ms), LEVEL_STOPPED (ms, duration),
 * LEVEL_BARGE (ms: the tracker's last_ms when the limit was reached). */
typedef struct {
    int kind;
    long long ms, duration;
} LevelEvent;

/* The level octet of element `element_id` in a packet whose payload starts at
 * `end` (checked by the caller, as payload_offset_untrusted does): -1 when there
 * is none, as speech.audio_level_untrusted returns None. */
static int level_octet(const unsigned char *data, size_t end, int element_id) {
    if (end < RTP_HEADER || !(data[0] & 0x10))
        return -1;
    size_t offset = RTP_HEADER + 4 * (size_t)(data[0] & 0x0F);
    if (offset + 4 > end || data[offset] != 0xBE || data[offset + 1] != 0xDE)
        return -1;
    size_t index = offset + 4;
    while (index < end) {
        unsigned header = data[index];
        if (header == 0) {
            index++;
            continue;
        }
        unsigned ident = header >> 4, length = (header & 0x0F) + 1;
        if (ident == 15)
            return -1;
        if ((int)ident == element_id) {
            if (length != 1 || index + 1 >= end)
                return -1;
            return data[index + 1];
        }
        index += 1 + length;
    }
    return -1;
}

static int level_stop(LevelState *st, long long *ms, long long *duration) {
    st->speaking = 0;
    st->has_run = 0;
    *ms = st->speech_end;
    *duration = st->speech_end - st->started_ms;
    return LEVEL_STOPPED;
}

/* SpeechGate.update with a probability of 1.0 or 0.0. */
static int gate_update(LevelState *st, double probability, long long stream_ms, long long *ms, long long *duration) {
    if (st->has_last && stream_ms < st->last_ms)
        return LEVEL_NONE;
    st->has_last = 1;
    st->last_ms = stream_ms;
    int stopped = LEVEL_NONE;
    long long stop_ms = 0, stop_duration = 0;
    if (st->speaking && stream_ms - st->speech_end >= st->hangover_ms)
        stopped = level_stop(st, &stop_ms, &stop_duration);
    if (st->speaking) {
        if (probability >= st->release)
            st->speech_end = stream_ms + st->frame_ms;
        else if (stream_ms + st->frame_ms - st->speech_end >= st->hangover_ms)
            return level_stop(st, ms, duration);
        return LEVEL_NONE;
    }
    *ms = stop_ms;
    *duration = stop_duration;
    if (probability < st->threshold) {
        st->has_run = 0;
        return stopped;
    }
    if (!st->has_run || stream_ms > st->speech_end) {
        st->has_run = 1;
        st->run_start = stream_ms;
    }
    st->speech_end = stream_ms + st->frame_ms;
    if (stopped == LEVEL_NONE && st->speech_end - st->run_start >= st->onset_ms) {
        st->speaking = 1;
        st->started_ms = st->run_start;
        st->has_run = 0;
        *ms = st->started_ms;
        return LEVEL_STARTED;
    }
    return stopped;
}

/* LevelDetector.update from one level octet (RFC 6464 §3: V flag, -dBov). */
static int level_update(LevelState *st, int octet, long long stream_ms, long long *ms, long long *duration) {
    double level_db = -(double)(octet & 0x7F);
    double floor = st->floor;
    if (!st->has_floor || level_db < floor)
        floor = level_db;
    else
        floor += st->rise;
    st->has_floor = 1;
    st->floor = floor;
    int speech = level_db >= st->min_db && level_db >= floor + st->margin;
    if (st->use_voice && !(octet & 0x80))
        speech = 0;
    return gate_update(st, speech ? 1.0 : 0.0, stream_ms, ms, duration);
}

/* SpeechGate.expire. */
static int level_expire(LevelState *st, long long stream_ms, long long *ms, long long *duration) {
    if (st->speaking && stream_ms - st->speech_end >= st->hangover_ms)
        return level_stop(st, ms, duration);
    return LEVEL_NONE;
}

/* An optional int (None or int) into has and value; -1 with an exception set on failure. */
static int optional_ll(PyObject *obj, int *has, long long *value) {
    if (obj == Py_None) {
        *has = 0;
        *value = 0;
        return 0;
    }
    *has = 1;
    *value = PyLong_AsLongLong(obj);
    return *value == -1 && PyErr_Occurred() ? -1 : 0;
}

static int level_parse(PyObject *config, PyObject *state, LevelState *st) {
    PyObject *floor, *run_start, *last_ms;
    memset(st, 0, sizeof(*st));
    if (!PyArg_ParseTuple(config, "dddpLLddL", &st->margin, &st->min_db, &st->rise, &st->use_voice, &st->onset_ms,
                          &st->hangover_ms, &st->threshold, &st->release, &st->frame_ms))
        return -1;
    if (!PyArg_ParseTuple(state, "OpLOLO", &floor, &st->speaking, &st->started_ms, &run_start, &st->speech_end, &last_ms))
        return -1;
    if (floor != Py_None) {
        st->has_floor = 1;
        st->floor = PyFloat_AsDouble(floor);
        if (st->floor == -1.0 && PyErr_Occurred())
            return -1;
    }
    if (optional_ll(run_start, &st->has_run, &st->run_start) < 0 || optional_ll(last_ms, &st->has_last, &st->last_ms) < 0)
        return -1;
    return 0;
}

static PyObject *optional_value(int has, long long value) {
    if (!has)
        Py_RETURN_NONE;
    return PyLong_FromLongLong(value);
}

static PyObject *level_state_tuple(const LevelState *st) {
    PyObject *floor = st->has_floor ? PyFloat_FromDouble(st->floor) : (Py_INCREF(Py_None), Py_None);
    return Py_BuildValue("(NOLNLN)", floor, st->speaking ? Py_True : Py_False, st->started_ms,
                         optional_value(st->has_run, st->run_start), st->speech_end, optional_value(st->has_last, st->last_ms));
}

/* A route's level tracker from (level_id, config, state, origin, packet_ms, last_ms,
 * last_voice, onset_ms or None, interrupted, limit) or None (off): 0, or -1 with
 * an exception set. */
static int route_level_parse(PyObject *obj, RouteLevel *lv) {
    memset(lv, 0, sizeof(*lv));
    if (obj == Py_None)
        return 0;
    PyObject *config, *state, *onset;
    unsigned long origin;
    if (!PyArg_ParseTuple(obj, "iOOkLLdOpL", &lv->level_id, &config, &state, &origin, &lv->packet_ms, &lv->last_ms,
                          &lv->last_voice, &onset, &lv->interrupted, &lv->limit))
        return -1;
    if (lv->level_id < -1 || lv->level_id > 14 || lv->level_id == 0 || origin > 0xFFFFFFFFUL || lv->packet_ms < 1) {
        PyErr_SetString(PyExc_ValueError, "a level route needs an id 1-14 (or -1), a 32-bit origin and a packet duration");
        return -1;
    }
    if (level_parse(config, state, &lv->st) < 0 || optional_ll(onset, &lv->has_onset, &lv->onset_ms) < 0)
        return -1;
    lv->origin = (uint32_t)origin;
    lv->on = 1;
    return 0;
}

static PyObject *route_level_tuple(const RouteLevel *lv) {
    if (!lv->on)
        Py_RETURN_NONE;
    const LevelState *st = &lv->st;
    return Py_BuildValue("(i(dddOLLddL)NkLLdNOL)", lv->level_id, st->margin, st->min_db, st->rise, st->use_voice ? Py_True : Py_False, st->onset_ms,
                         st->hangover_ms, st->threshold, st->release, st->frame_ms, level_state_tuple(st),
                         (unsigned long)lv->origin, lv->packet_ms, lv->last_ms, lv->last_voice,
                         optional_value(lv->has_onset, lv->onset_ms), lv->interrupted ? Py_True : Py_False, lv->limit);
}

PyDoc_STRVAR(level_feed_doc,
"level_feed(config, state, level_id, items) -> (events, state)\n\n"
"Run the compiled LevelDetector over `items` from LevelDetector.config()/state().\n"
"An item is (packet, payload_offset, stream_ms) or an int (expire at that stream\n"
"position). `level_id` is the stream's RFC 6464 element id, or -1 for a bot's\n"
"(BOT_AUDIO_LEVEL_ID when the packet has an extension), as SpeechTracker reads it.\n"
"events: ('started', ms), ('stopped', ms, duration), ('unlevelled', item index)\n"
"for a packet without a level (the tracker's other paths take it).");

static PyObject *level_feed(PyObject *module, PyObject *args) {
    PyObject *config, *state, *items;
    int level_id;
    if (!PyArg_ParseTuple(args, "OOiO", &config, &state, &level_id, &items))
        return NULL;
    LevelState st;
    if (level_parse(config, state, &st) < 0)
        return NULL;
    PyObject *seq = PySequence_Fast(items, "items must be a sequence");
    if (seq == NULL)
        return NULL;
    PyObject *events = PyList_New(0);
    if (events == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        long long ms = 0, duration = 0;
        int kind;
        PyObject *event = NULL;
        if (PyLong_Check(item)) {
            long long at = PyLong_AsLongLong(item);
            if (at == -1 && PyErr_Occurred())
                goto fail;
            kind = level_expire(&st, at, &ms, &duration);
        } else {
            Py_buffer packet;
            Py_ssize_t offset;
            long long at;
            if (!PyArg_ParseTuple(item, "y*nL", &packet, &offset, &at))
                goto fail;
            if (offset < 0 || offset > packet.len) {
                PyBuffer_Release(&packet);
                PyErr_SetString(PyExc_ValueError, "payload_offset outside the packet");
                goto fail;
            }
            const unsigned char *data = packet.buf;
            int octet = level_id >= 0 ? level_octet(data, (size_t)offset, level_id) : -1;
            if (octet < 0 && level_id < 0 && packet.len > 0 && (data[0] & 0x10))
                octet = level_octet(data, (size_t)offset, BOT_AUDIO_LEVEL_ID);
            PyBuffer_Release(&packet);
            if (octet < 0) {
                event = Py_BuildValue("(sn)", "unlevelled", i);
                kind = LEVEL_NONE;
            } else {
                kind = level_update(&st, octet, at, &ms, &duration);
            }
        }
        if (kind == LEVEL_STARTED)
            event = Py_BuildValue("(sL)", "started", ms);
        else if (kind == LEVEL_STOPPED)
            event = Py_BuildValue("(sLL)", "stopped", ms, duration);
        else if (event == NULL)
            continue;
        if (event == NULL || PyList_Append(events, event) < 0) {
            Py_XDECREF(event);
            goto fail;
        }
        Py_DECREF(event);
    }
    Py_DECREF(seq);
    return Py_BuildValue("(NN)", events, level_state_tuple(&st));
fail:
    Py_DECREF(seq);
    Py_XDECREF(events);
    return NULL;
}

typedef struct {
    int kind;
    Py_ssize_t route_id;
    LevelEvent event; /* kind SPEECH */
    size_t length;
    socklen_t namelen;
    struct sockaddr_storage name;
    unsigned char data[RECV_SIZE];
} Entry;

typedef struct {
    uint32_t ip;     /* network order */
    uint16_t port;   /* network order */
    uint8_t mirror;
    uint32_t ssrc;   /* host order */
    uint32_t payload_type;
    uint32_t max_pps;
    uint32_t window_packets;
    double window_start;
    Py_ssize_t route_id;
    int ndest;
    struct sockaddr_in dest[MAX_FANOUT];
    unsigned long long packets, bytes, rate_limited;
    /* A browser source: its inbound session, the smallest plausible SRTP
     * packet, and what its header is restamped with (network order). */
    void *in_session;
    uint32_t min_length;
    uint8_t restamp_pt;
    unsigned char restamp_ssrc[4];
    int secure_dests; /* any destination with a session */
    SecureDest sdest[MAX_FANOUT];
    RouteLevel level; /* level.on: the speaker's speech detection runs here */
} Route;

typedef struct {
    PyObject_HEAD
    int fd;
    int32_t *index;        /* TABLE_SIZE slots: a route's position + 1, 0 empty */
    Route *routes;
    Py_ssize_t nroutes;
    unsigned char *buffers; /* BATCH * RECV_SIZE */
    struct mmsghdr rmsg[BATCH];
    struct iovec riov[BATCH];
    struct sockaddr_storage rname[BATCH];
    struct mmsghdr smsg[SEND_BATCH];
    struct iovec siov[SEND_BATCH];
    unsigned long long oversized, bad_family, send_errors[ERRNO_SLOTS];
    /* The forwarding thread (start/stop): everything above that the thread
     * touches (the table, the counters, the queue, the flags) is guarded by
     * `lock`; the thread never holds the GIL, Python never waits for the
     * thread while holding `lock`. */
    int threaded;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int notify_fd, stop_pipe[2];
    int stopping, paused, blocked;
    double clock_offset; /* the thread's clock minus the relay's */
    Entry *queue;
    int queued;
    struct sockaddr_in sname[SEND_BATCH]; /* copies of destinations: the table may change before the send */
    unsigned long long recv_errors[ERRNO_SLOTS], backlog_dropped;
    /* SRTP: libsrtp's functions, a decrypted copy per received datagram, a
     * protected copy per send. */
    srtp_call protect, unprotect;
    unsigned char *plain;   /* BATCH * RECV_SIZE */
    unsigned char *sealed;  /* SEND_BATCH * SEND_SIZE, allocated with the first SRTP route */
} FastPath;

static void lock_table(FastPath *self) {
    if (self->threaded) {
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&self->lock);
        Py_END_ALLOW_THREADS
    }
}

static void unlock_table(FastPath *self) {
    if (self->threaded)
        pthread_mutex_unlock(&self->lock);
}

static inline uint32_t hash_key(uint32_t ip, uint16_t port) {
    uint64_t key = ((uint64_t)ip << 16) ^ port;
    key *= 0x9E3779B97F4A7C15ULL;
    return (uint32_t)(key >> 40) & (TABLE_SIZE - 1);
}

static Route *lookup(FastPath *self, uint32_t ip, uint16_t port) {
    uint32_t slot = hash_key(ip, port);
    for (;;) {
        int32_t at = self->index[slot];
        if (at == 0)
            return NULL;
        Route *route = &self->routes[at - 1];
        if (route->ip == ip && route->port == port)
            return route;
        slot = (slot + 1) & (TABLE_SIZE - 1);
    }
}

/* Where the payload starts: after the fixed header, the CSRCs and the header
 * extension (RFC 3550 §5.3.1), as wire/rtp.py's payload_offset_untrusted; 0 if
 * they overrun the datagram. */
static size_t payload_offset(const unsigned char *data, size_t length) {
    size_t offset = RTP_HEADER + 4 * (size_t)(data[0] & 0x0F);
    if (data[0] & 0x10) {
        if (length < offset + 4)
            return 0;
        offset += 4 + 4 * (((size_t)data[offset + 2] << 8) | data[offset + 3]);
    }
    return length < offset ? 0 : offset;
}

/* Speech detection of a level route's forwarded packet (plain RTP, its header
 * checked by route_for), as MediaRelay._track_speech and SpeechTracker.on_packet
 * do on the level path: the events in `out` (at most 2: a start or a stop, then
 * a barge-in), their count returned; -1 when the packet carries no level (the
 * tracker's other paths take it: Python gets the packet and the state). */
static int track_level(RouteLevel *lv, const unsigned char *data, size_t length, double now, LevelEvent *out) {
    size_t offset = payload_offset(data, length);
    if (offset == 0)
        return 0; /* _track_speech: not a whole header, nothing tracked */
    int octet = lv->level_id >= 0 ? level_octet(data, offset, lv->level_id) : -1;
    if (octet < 0 && lv->level_id < 0 && (data[0] & 0x10))
        octet = level_octet(data, offset, BOT_AUDIO_LEVEL_ID);
    if (octet < 0)
        return -1;
    uint32_t ts = ((uint32_t)data[4] << 24) | ((uint32_t)data[5] << 16) | ((uint32_t)data[6] << 8) | data[7];
    long long stream_ms = (long long)((uint32_t)(ts - lv->origin) / 48); /* audio.opus.stream_ms */
    lv->last_ms = stream_ms + lv->packet_ms;
    int n = 0;
    long long ms = 0, duration = 0;
    int kind = level_update(&lv->st, octet, stream_ms, &ms, &duration);
    lv->last_voice = now;
    if (kind == LEVEL_STARTED) {
        lv->has_onset = 1;
        lv->onset_ms = ms;
        lv->interrupted = 0;
        out[n++] = (LevelEvent){LEVEL_STARTED, ms, 0};
    } else if (kind == LEVEL_STOPPED) {
        lv->has_onset = 0;
        out[n++] = (LevelEvent){LEVEL_STOPPED, ms, duration};
    }
    if (lv->has_onset && lv->limit >= 0 && !lv->interrupted && lv->last_ms - lv->onset_ms >= lv->limit) {
        lv->interrupted = 1;
        out[n++] = (LevelEvent){LEVEL_BARGE, lv->last_ms, 0};
    }
    return n;
}

/* The route that forwards this untrusted datagram as it is, or NULL for Python:
 * RTP by its first byte (RFC 7983 §7: 128-191) and not RTCP by its second (RFC
 * 5761 §4: 192-223), a whole RTP header, from a routed IPv4 source, with the
 * route's SSRC and payload type (anything else Python judges and counts:
 * malformed_rtp, wrong_ssrc, wrong_payload_type, unknown_source...). */
static Route *route_for(FastPath *self, const unsigned char *data, size_t length, const struct sockaddr_storage *name,
                        socklen_t namelen) {
    if (length < RTP_HEADER || namelen < sizeof(struct sockaddr_in) || name->ss_family != AF_INET)
        return NULL;
    if (data[0] < 128 || data[0] > 191 || (data[1] >= 192 && data[1] <= 223))
        return NULL;
    const struct sockaddr_in *sin = (const struct sockaddr_in *)name;
    Route *route = lookup(self, sin->sin_addr.s_addr, sin->sin_port);
    if (route == NULL)
        return NULL;
    uint32_t ssrc = ((uint32_t)data[8] << 24) | ((uint32_t)data[9] << 16) | ((uint32_t)data[10] << 8) | data[11];
    if (ssrc != route->ssrc)
        return NULL;
    if (route->in_session != NULL) {
        /* SRTP: any payload type (the leg restamps it); too short for its tag: Python counts it. */
        if (length < route->min_length)
            return NULL;
    } else if ((uint32_t)(data[1] & 0x7F) != route->payload_type) {
        return NULL;
    } else if (route->secure_dests && payload_offset(data, length) == 0) {
        return NULL; /* CSRCs or an extension that overrun it: Python judges (OutboundStream.rewrite) */
    }
    return route;
}

/* A browser's SRTP datagram, authenticated and decrypted into `out` and
 * restamped (WebRtcLeg.handle_media): its new length, or 0 if libsrtp refused
 * it (Python then sees the untouched original and counts why). */
static size_t open_srtp(FastPath *self, const Route *route, const unsigned char *data, size_t length, unsigned char *out) {
    memcpy(out, data, length);
    int len = (int)length;
    if (self->unprotect(route->in_session, out, &len) != 0 || len < RTP_HEADER)
        return 0;
    out[1] = (unsigned char)((out[1] & 0x80) | route->restamp_pt);
    memcpy(out + 8, route->restamp_ssrc, 4);
    return (size_t)len;
}

/* The route of received datagram ``i`` (NULL: it goes to Python). A browser's
 * SRTP is authenticated and decrypted into the batch's plain buffer, and
 * ``data``/``length`` then name the plain packet; SRTP that fails goes to
 * Python untouched, which refuses and counts it. */
static Route *route_datagram(FastPath *self, int i, unsigned char **data, size_t *length) {
    Route *route = route_for(self, *data, *length, &self->rname[i], self->rmsg[i].msg_hdr.msg_namelen);
    if (route != NULL && route->in_session != NULL) {
        unsigned char *plain = self->plain + (size_t)i * RECV_SIZE;
        size_t opened = open_srtp(self, route, *data, *length, plain);
        if (opened == 0)
            return NULL;
        *data = plain, *length = opened;
    }
    return route;
}

/* A plain RTP packet (its header checked by route_for) renumbered onto a
 * browser's outbound stream, its CSRCs and header extension stripped (the
 * browser negotiated none with us), and protected into `out`, as
 * OutboundStream.rewrite + SrtpContext.protect_with_header: its length, or 0
 * (counted) if libsrtp refused it. The stream's state moves first, as there. */
static size_t seal_srtp(FastPath *self, SecureDest *sd, const unsigned char *data, size_t length, double now, unsigned char *out) {
    uint16_t seq = (uint16_t)((data[2] << 8) | data[3]);
    uint32_t ts = ((uint32_t)data[4] << 24) | ((uint32_t)data[5] << 16) | ((uint32_t)data[6] << 8) | data[7];
    uint16_t out_seq = (uint16_t)(seq + sd->seq_offset);
    uint32_t out_ts = ts + sd->ts_offset;
    if ((uint16_t)(out_seq - sd->last_seq) < 0x8000) {
        sd->last_seq = out_seq;
        sd->last_ts = out_ts;
    }
    sd->last_time = now;
    size_t offset = payload_offset(data, length); /* >= 12: route_for checked it */
    size_t size = length - offset + RTP_HEADER;
    if (size > MAX_RTP_TO_PROTECT) {
        sd->failed++;
        return 0;
    }
    out[0] = (unsigned char)(0x80 | (data[0] & 0x20));
    out[1] = (unsigned char)((data[1] & 0x80) | sd->payload_type);
    out[2] = (unsigned char)(out_seq >> 8);
    out[3] = (unsigned char)out_seq;
    out[4] = (unsigned char)(out_ts >> 24);
    out[5] = (unsigned char)(out_ts >> 16);
    out[6] = (unsigned char)(out_ts >> 8);
    out[7] = (unsigned char)out_ts;
    out[8] = (unsigned char)(sd->ssrc >> 24);
    out[9] = (unsigned char)(sd->ssrc >> 16);
    out[10] = (unsigned char)(sd->ssrc >> 8);
    out[11] = (unsigned char)sd->ssrc;
    memcpy(out + RTP_HEADER, data + offset, length - offset);
    int len = (int)size;
    if (self->protect(sd->session, out, &len) != 0) {
        sd->failed++;
        return 0;
    }
    return (size_t)len;
}

/* Point the receive headers at the buffers, for a recvmmsg of `want`. */
static void prepare_receive(FastPath *self, int want) {
    for (int i = 0; i < want; i++) {
        struct msghdr *hdr = &self->rmsg[i].msg_hdr;
        memset(hdr, 0, sizeof(*hdr));
        hdr->msg_name = &self->rname[i];
        hdr->msg_namelen = sizeof(self->rname[i]);
        hdr->msg_iov = &self->riov[i];
        hdr->msg_iovlen = 1;
    }
}

/* MediaRelay.forward's per-speaker rate limit, on the relay's clock, and the
 * route's counters: 1 if the datagram is forwarded, 0 if rate-limited. */
static int admit(Route *route, double now, size_t length) {
    if (now - route->window_start >= 1.0) {
        route->window_start = now;
        route->window_packets = 0;
    }
    route->window_packets++;
    if (route->window_packets > route->max_pps) {
        route->rate_limited++;
        return 0;
    }
    route->packets++;
    route->bytes += length;
    return 1;
}

/* Queue one send of `data` to each of the route's listeners from slot `nsend`;
 * returns the next free slot. */
static int queue_sends(FastPath *self, Route *route, unsigned char *data, size_t length, int nsend, double now) {
    for (int d = 0; d < route->ndest; d++) {
        struct msghdr *out = &self->smsg[nsend].msg_hdr;
        unsigned char *payload = data;
        size_t size = length;
        if (route->sdest[d].session != NULL) {
            payload = self->sealed + (size_t)nsend * SEND_SIZE;
            size = seal_srtp(self, &route->sdest[d], data, length, now, payload);
            if (size == 0)
                continue;
        }
        memset(out, 0, sizeof(*out));
        self->sname[nsend] = route->dest[d];
        self->siov[nsend].iov_base = payload;
        self->siov[nsend].iov_len = size;
        out->msg_name = &self->sname[nsend];
        out->msg_namelen = sizeof(struct sockaddr_in);
        out->msg_iov = &self->siov[nsend];
        out->msg_iovlen = 1;
        nsend++;
    }
    return nsend;
}

static int parse_ipv4(PyObject *addr, struct sockaddr_in *out) {
    const char *host;
    int port;
    if (!PyArg_ParseTuple(addr, "si", &host, &port))
        return -1;
    if (port < 0 || port > 65535) {
        PyErr_SetString(PyExc_ValueError, "port out of range");
        return -1;
    }
    memset(out, 0, sizeof(*out));
    out->sin_family = AF_INET;
    out->sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &out->sin_addr) != 1) {
        PyErr_SetString(PyExc_ValueError, "not an IPv4 address");
        return -1;
    }
    return 0;
}

/* One destination: (host, port), or a browser's (host, port, session, ssrc,
 * payload_type, seq_offset, ts_offset, last_seq, last_ts, last_time). */
static int parse_destination(FastPath *self, PyObject *item, struct sockaddr_in *out, SecureDest *sd) {
    memset(sd, 0, sizeof(*sd));
    if (PyTuple_Check(item) && PyTuple_GET_SIZE(item) == 2)
        return parse_ipv4(item, out);
    const char *host;
    int port;
    unsigned long long session;
    unsigned long ssrc, payload_type, seq_offset, ts_offset, last_seq, last_ts;
    double last_time;
    if (!PyArg_ParseTuple(item, "siKkkkkkkd", &host, &port, &session, &ssrc, &payload_type, &seq_offset, &ts_offset, &last_seq,
                          &last_ts, &last_time))
        return -1;
    if (session == 0 || self->protect == NULL || payload_type > 127 || seq_offset > 0xFFFF || last_seq > 0xFFFF ||
        ssrc > 0xFFFFFFFFUL || ts_offset > 0xFFFFFFFFUL || last_ts > 0xFFFFFFFFUL) {
        PyErr_SetString(PyExc_ValueError, "a browser destination needs set_srtp() first, a session and fields in range");
        return -1;
    }
    PyObject *addr = Py_BuildValue("(si)", host, port);
    if (addr == NULL)
        return -1;
    int rc = parse_ipv4(addr, out);
    Py_DECREF(addr);
    if (rc < 0)
        return -1;
    sd->session = (void *)(uintptr_t)session;
    sd->ssrc = (uint32_t)ssrc;
    sd->payload_type = (uint8_t)payload_type;
    sd->seq_offset = (uint16_t)seq_offset;
    sd->ts_offset = (uint32_t)ts_offset;
    sd->last_seq = (uint16_t)last_seq;
    sd->last_ts = (uint32_t)last_ts;
    sd->last_time = last_time;
    return 0;
}

/* The browser destinations' state, [(index, failed, last_seq, last_ts, last_time)];
 * with `reset`, the failure counts start again. */
static PyObject *secure_states(Route *route, int reset) {
    PyObject *list = PyList_New(0);
    if (list == NULL)
        return NULL;
    for (int d = 0; d < route->ndest; d++) {
        SecureDest *sd = &route->sdest[d];
        if (sd->session == NULL)
            continue;
        PyObject *row = Py_BuildValue("(iKkkd)", d, sd->failed, (unsigned long)sd->last_seq, (unsigned long)sd->last_ts, sd->last_time);
        if (row == NULL || PyList_Append(list, row) < 0) {
            Py_XDECREF(row);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(row);
        if (reset)
            sd->failed = 0;
    }
    return list;
}

static void stop_thread(FastPath *self);

static void FastPath_dealloc(FastPath *self) {
    stop_thread(self);
    PyMem_Free(self->queue);
    PyMem_Free(self->index);
    PyMem_Free(self->routes);
    PyMem_Free(self->buffers);
    PyMem_Free(self->plain);
    PyMem_Free(self->sealed);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int FastPath_init(FastPath *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"fd", NULL};
    int fd;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i", kwlist, &fd))
        return -1;
    self->fd = fd;
    PyMem_Free(self->index);
    PyMem_Free(self->routes);
    PyMem_Free(self->buffers);
    self->index = PyMem_Calloc(TABLE_SIZE, sizeof(int32_t));
    self->routes = PyMem_Calloc(1, sizeof(Route));
    self->buffers = PyMem_Malloc((size_t)BATCH * RECV_SIZE);
    PyMem_Free(self->plain);
    self->plain = PyMem_Malloc((size_t)BATCH * RECV_SIZE);
    if (self->index == NULL || self->routes == NULL || self->buffers == NULL || self->plain == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->nroutes = 0;
    for (int i = 0; i < BATCH; i++) {
        self->riov[i].iov_base = self->buffers + (size_t)i * RECV_SIZE;
        self->riov[i].iov_len = RECV_SIZE;
    }
    return 0;
}

PyDoc_STRVAR(set_routes_doc,
"set_routes(routes) -> None\n\n"
"Replace the whole route table. Each route is a tuple\n"
"(route_id, (host, port), ssrc, payload_type, max_pps, mirror, destinations,\n"
" window_start, window_packets, srtp_in, level): the rate window carries on from the relay's.\n"
"level is None or the speaker's speech tracker on the level path (see set_level).\n"
"srtp_in is None (plain RTP) or (session, min_length, restamp_pt, restamp_ssrc) for a\n"
"browser's SRTP (session: the address of its inbound srtp_t; ssrc is then the SSRC\n"
"of its stream). destinations is a sequence of (host, port) or, for a browser,\n"
"(host, port, session, ssrc, payload_type, seq_offset, ts_offset, last_seq,\n"
" last_ts, last_time): its outbound srtp_t and stream (OutboundStream). IPv4 only, at most 16\n"
"destinations and 65536 routes (ValueError otherwise; the old table stays).\n"
"Counts of the old table not yet taken are lost: call take_stats() first.");

static PyObject *FastPath_set_routes(FastPath *self, PyObject *routes) {
    PyObject *seq = PySequence_Fast(routes, "routes must be a sequence");
    if (seq == NULL)
        return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    if (count > MAX_ROUTES) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "too many routes");
        return NULL;
    }
    int32_t *index = PyMem_Calloc(TABLE_SIZE, sizeof(int32_t));
    Route *table = PyMem_Calloc(count ? (size_t)count : 1, sizeof(Route));
    if (index == NULL || table == NULL) {
        Py_DECREF(seq);
        PyMem_Free(index);
        PyMem_Free(table);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        Py_ssize_t route_id;
        PyObject *source, *destinations, *srtp_in, *level;
        unsigned long ssrc, payload_type, max_pps;
        int mirror;
        double window_start;
        unsigned long window_packets;
        struct sockaddr_in src;
        srtp_in = level = Py_None; /* optional: plain RTP, no level tracker */
        if (!PyArg_ParseTuple(item, "nOkkkpOdk|OO", &route_id, &source, &ssrc, &payload_type, &max_pps, &mirror, &destinations,
                              &window_start, &window_packets, &srtp_in, &level))
            goto fail;
        Route *route = &table[i];
        if (route_level_parse(level, &route->level) < 0)
            goto fail;
        if (srtp_in != Py_None) {
            unsigned long long session;
            unsigned long min_length, restamp_ssrc;
            unsigned char restamp_pt;
            if (!PyArg_ParseTuple(srtp_in, "Kkbk", &session, &min_length, &restamp_pt, &restamp_ssrc))
                goto fail;
            if (session == 0 || self->unprotect == NULL || restamp_pt > 127 || min_length < RTP_HEADER) {
                PyErr_SetString(PyExc_ValueError, "an SRTP source needs set_srtp() first, a session, payload type 0-127");
                goto fail;
            }
            route->in_session = (void *)(uintptr_t)session;
            route->min_length = (uint32_t)min_length;
            route->restamp_pt = restamp_pt;
            route->restamp_ssrc[0] = (unsigned char)(restamp_ssrc >> 24);
            route->restamp_ssrc[1] = (unsigned char)(restamp_ssrc >> 16);
            route->restamp_ssrc[2] = (unsigned char)(restamp_ssrc >> 8);
            route->restamp_ssrc[3] = (unsigned char)restamp_ssrc;
        }
        if (parse_ipv4(source, &src) < 0)
            goto fail;
        PyObject *dseq = PySequence_Fast(destinations, "destinations must be a sequence");
        if (dseq == NULL)
            goto fail;
        Py_ssize_t ndest = PySequence_Fast_GET_SIZE(dseq);
        if (ndest > MAX_FANOUT) {
            Py_DECREF(dseq);
            PyErr_SetString(PyExc_ValueError, "too many destinations");
            goto fail;
        }
        uint32_t slot = hash_key(src.sin_addr.s_addr, src.sin_port);
        while (index[slot]) {
            Route *other = &table[index[slot] - 1];
            if (other->ip == src.sin_addr.s_addr && other->port == src.sin_port) {
                Py_DECREF(dseq);
                PyErr_SetString(PyExc_ValueError, "duplicate source");
                goto fail;
            }
            slot = (slot + 1) & (TABLE_SIZE - 1);
        }
        for (Py_ssize_t d = 0; d < ndest; d++) {
            if (parse_destination(self, PySequence_Fast_GET_ITEM(dseq, d), &route->dest[d], &route->sdest[d]) < 0) {
                Py_DECREF(dseq);
                goto fail;
            }
            if (route->sdest[d].session != NULL)
                route->secure_dests = 1;
        }
        Py_DECREF(dseq);
        index[slot] = (int32_t)(i + 1);
        route->ip = src.sin_addr.s_addr;
        route->port = src.sin_port;
        route->ssrc = (uint32_t)ssrc;
        route->payload_type = (uint32_t)payload_type;
        route->max_pps = (uint32_t)max_pps;
        route->mirror = (uint8_t)mirror;
        route->route_id = route_id;
        route->ndest = (int)ndest;
        route->window_start = window_start;
        route->window_packets = (uint32_t)window_packets;
    }
    Py_DECREF(seq);
    if (self->sealed == NULL) {
        for (Py_ssize_t i = 0; i < count; i++) {
            if (table[i].secure_dests) {
                self->sealed = PyMem_Malloc((size_t)SEND_BATCH * SEND_SIZE);
                if (self->sealed == NULL) {
                    PyMem_Free(index);
                    PyMem_Free(table);
                    return PyErr_NoMemory();
                }
                break;
            }
        }
    }
    lock_table(self);
    int32_t *old_index = self->index;
    Route *old_routes = self->routes;
    self->index = index;
    self->routes = table;
    self->nroutes = count;
    unlock_table(self);
    PyMem_Free(old_index);
    PyMem_Free(old_routes);
    Py_RETURN_NONE;
fail:
    Py_DECREF(seq);
    PyMem_Free(index);
    PyMem_Free(table);
    return NULL;
}

PyDoc_STRVAR(take_stats_doc,
"take_stats() -> (routes, counters)\n\n"
"What happened since the last call, and reset: routes is a list of\n"
"(route_id, packets, bytes, rate_limited, window_start, window_packets, streams) for\n"
"routes with any count (the rate window to carry back into the relay; streams:\n"
"[(destination index, failed protects, last_seq, last_ts, last_time)] of its browsers);\n"
"counters a dict of the helper's own drops: 'oversized', 'send_backlog_dropped',\n"
"'recv_error_EAFNOSUPPORT', 'send_error_<n>' and 'recv_error_<n>' (n an errno number).");

/* Move a nonzero count into counters[name] and reset it; -1 with an exception set on failure. */
static int take_counter(PyObject *counters, const char *name, unsigned long long *count) {
    if (*count == 0)
        return 0;
    PyObject *value = PyLong_FromUnsignedLongLong(*count);
    if (value == NULL || PyDict_SetItemString(counters, name, value) < 0) {
        Py_XDECREF(value);
        return -1;
    }
    Py_DECREF(value);
    *count = 0;
    return 0;
}

static PyObject *FastPath_take_stats(FastPath *self, PyObject *unused) {
    PyObject *routes = PyList_New(0);
    PyObject *counters = PyDict_New();
    PyObject *result = NULL;
    if (routes == NULL || counters == NULL) {
        Py_XDECREF(routes);
        Py_XDECREF(counters);
        return NULL;
    }
    lock_table(self);
    for (Py_ssize_t at = 0; at < self->nroutes; at++) {
        Route *route = &self->routes[at];
        if (route->packets == 0 && route->rate_limited == 0)
            continue;
        PyObject *streams = secure_states(route, 1);
        if (streams == NULL)
            goto done;
        PyObject *row = Py_BuildValue("nKKKdkN", route->route_id, route->packets, route->bytes, route->rate_limited,
                                      route->window_start, (unsigned long)route->window_packets, streams);
        if (row == NULL || PyList_Append(routes, row) < 0) {
            Py_XDECREF(row);
            goto done;
        }
        Py_DECREF(row);
        route->packets = route->bytes = route->rate_limited = 0;
    }
    if (take_counter(counters, "oversized", &self->oversized) < 0)
        goto done;
    if (take_counter(counters, "recv_error_EAFNOSUPPORT", &self->bad_family) < 0)
        goto done;
    if (take_counter(counters, "send_backlog_dropped", &self->backlog_dropped) < 0)
        goto done;
    for (int side = 0; side < 2; side++) {
        unsigned long long *errors = side ? self->recv_errors : self->send_errors;
        for (int code = 0; code < ERRNO_SLOTS; code++) {
            char name[32];
            snprintf(name, sizeof(name), side ? "recv_error_%d" : "send_error_%d", code);
            if (take_counter(counters, name, &errors[code]) < 0)
                goto done;
        }
    }
    result = Py_BuildValue("(OO)", routes, counters);
done:
    unlock_table(self);
    Py_XDECREF(routes);
    Py_XDECREF(counters);
    return result;
}

/* (host, port) as recvfrom gives it: IPv4 (str, int), IPv6 (str, int, flowinfo, scope_id). */
static PyObject *address_of(const struct sockaddr_storage *name, socklen_t namelen) {
    char host[INET6_ADDRSTRLEN];
    if (name->ss_family == AF_INET && namelen >= sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)name;
        inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
        return Py_BuildValue("(si)", host, (int)ntohs(sin->sin_port));
    }
    if (name->ss_family == AF_INET6 && namelen >= sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)name;
        inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
        return Py_BuildValue("(siII)", host, (int)ntohs(sin6->sin6_port), (unsigned)ntohl(sin6->sin6_flowinfo),
                             (unsigned)sin6->sin6_scope_id);
    }
    PyErr_SetString(PyExc_OSError, "unsupported address family");
    return NULL;
}

static int append_datagram(PyObject *list, const unsigned char *data, size_t length, PyObject *addr) {
    PyObject *bytes = PyBytes_FromStringAndSize((const char *)data, (Py_ssize_t)length);
    if (bytes == NULL)
        return -1;
    PyObject *pair = PyTuple_Pack(2, bytes, addr);
    Py_DECREF(bytes);
    if (pair == NULL)
        return -1;
    int rc = PyList_Append(list, pair);
    Py_DECREF(pair);
    return rc;
}

static int append_sockaddr(PyObject *list, const unsigned char *data, size_t length, const struct sockaddr_in *dest) {
    PyObject *addr = address_of((const struct sockaddr_storage *)dest, sizeof(*dest));
    if (addr == NULL)
        return -1;
    int rc = append_datagram(list, data, length, addr);
    Py_DECREF(addr);
    return rc;
}

static PyObject *level_event_tuple(const LevelEvent *event) {
    if (event->kind == LEVEL_STOPPED)
        return Py_BuildValue("(sLL)", "stopped", event->ms, event->duration);
    return Py_BuildValue("(sL)", event->kind == LEVEL_STARTED ? "started" : "barge", event->ms);
}

/* Append (payload, route_id) to the speech list: payload a packet (bytes) or an event (tuple). */
static int append_speech(PyObject *list, PyObject *payload, Py_ssize_t route_id) {
    if (payload == NULL)
        return -1;
    PyObject *pair = Py_BuildValue("(Nn)", payload, route_id);
    if (pair == NULL)
        return -1;
    int rc = PyList_Append(list, pair);
    Py_DECREF(pair);
    return rc;
}

PyDoc_STRVAR(drain_doc,
"drain(now, forward, limit) -> (received, emptied, to_python, mirrored, unsent, error)\n\n"
"Read up to `limit` datagrams (in recvmmsg batches of 64) without blocking.\n"
"With `forward` false nothing is forwarded (the transport has a send backlog\n"
"that forwarded datagrams would overtake). received: datagrams read; emptied:\n"
"the socket said EAGAIN; to_python: [(data, addr)] for MediaRelay.handle_datagram,\n"
"in arrival order; mirrored: [(data, route_id)] forwarded here, for speech\n"
"detection, and a level route's events [((kind, ms[, duration]), route_id)] in\n"
"order among them (see set_level); unsent: [(data, addr)] the kernel refused with EAGAIN, in order;\n"
"error: the errno of a receive that failed otherwise than EAGAIN (it ends\n"
"the call; what was read before stands), or 0.");

static PyObject *FastPath_drain(FastPath *self, PyObject *args) {
    double now;
    int forward;
    Py_ssize_t limit;
    if (!PyArg_ParseTuple(args, "dpn", &now, &forward, &limit))
        return NULL;
    if (self->threaded) {
        PyErr_SetString(PyExc_RuntimeError, "the forwarding thread reads the socket: use collect()");
        return NULL;
    }
    PyObject *to_python = PyList_New(0), *mirrored = PyList_New(0), *unsent = PyList_New(0);
    if (to_python == NULL || mirrored == NULL || unsent == NULL)
        goto fail;
    Py_ssize_t received = 0;
    int emptied = 0, recv_errno = 0;
    int blocked = !forward; /* a send said EAGAIN: forward nothing more */
    while (received < limit) {
        int want = limit - received < BATCH ? (int)(limit - received) : BATCH;
        prepare_receive(self, want);
        int count;
        Py_BEGIN_ALLOW_THREADS
        count = recvmmsg(self->fd, self->rmsg, (unsigned)want, MSG_DONTWAIT, NULL);
        Py_END_ALLOW_THREADS
        if (count < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                emptied = 1;
            else if (errno != EINTR)
                recv_errno = errno;
            break;
        }
        if (count == 0) {
            emptied = 1;
            break;
        }
        received += count;
        int nsend = 0;
        int slow = 0; /* a datagram of this batch went to Python: so do the rest */
        for (int i = 0; i < count; i++) {
            struct msghdr *hdr = &self->rmsg[i].msg_hdr;
            unsigned char *data = self->riov[i].iov_base;
            size_t length = self->rmsg[i].msg_len;
            if ((hdr->msg_flags & MSG_TRUNC) || length > MAX_DATAGRAM) {
                self->oversized++;
                continue;
            }
            Route *route = slow || blocked ? NULL : route_datagram(self, i, &data, &length);
            if (route == NULL) {
                slow = 1;
                PyObject *addr = address_of(&self->rname[i], hdr->msg_namelen);
                if (addr == NULL) {
                    PyErr_Clear();
                    self->bad_family++; /* never: the socket is AF_INET/AF_INET6 */
                    continue;
                }
                int rc = append_datagram(to_python, data, length, addr);
                Py_DECREF(addr);
                if (rc < 0)
                    goto fail;
                continue;
            }
            if (!admit(route, now, length))
                continue;
            int mirror = route->mirror;
            if (route->level.on) {
                LevelEvent events[2];
                int n = track_level(&route->level, data, length, now, events);
                mirror = n < 0;
                for (int e = 0; e < n; e++)
                    if (append_speech(mirrored, level_event_tuple(&events[e]), route->route_id) < 0)
                        goto fail;
                if (mirror)
                    slow = 1; /* Python's tracker takes this one with the state: the rest of the batch after it */
            }
            if (mirror && append_speech(mirrored, PyBytes_FromStringAndSize((const char *)data, (Py_ssize_t)length),
                                        route->route_id) < 0)
                goto fail;
            nsend = queue_sends(self, route, data, length, nsend, now);
        }
        int start = 0;
        while (start < nsend) {
            int sent;
            Py_BEGIN_ALLOW_THREADS
            sent = sendmmsg(self->fd, self->smsg + start, (unsigned)(nsend - start), MSG_DONTWAIT);
            Py_END_ALLOW_THREADS
            if (sent < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK) {
                    blocked = 1;
                    for (int k = start; k < nsend; k++) {
                        if (append_sockaddr(unsent, self->siov[k].iov_base, self->siov[k].iov_len,
                                            (const struct sockaddr_in *)self->smsg[k].msg_hdr.msg_name) < 0)
                            goto fail;
                    }
                    break;
                }
                /* sendmmsg fails only for its first datagram: count it, skip it. */
                self->send_errors[errno < ERRNO_SLOTS ? errno : 0]++;
                sent = 1;
            }
            start += sent;
        }
        if (slow)
            break; /* Python handles those first: its state may change before the next batch */
    }
    return Py_BuildValue("(nNNNNi)", received, PyBool_FromLong(emptied), to_python, mirrored, unsent, recv_errno);
fail:
    Py_XDECREF(to_python);
    Py_XDECREF(mirrored);
    Py_XDECREF(unsent);
    return NULL;
}


static PyMethodDef module_methods[] = {
    {"level_feed", level_feed, METH_VARARGS, level_feed_doc},
    {NULL, NULL, 0, NULL},
};


/* --- the forwarding thread ------------------------------------------------------- */

static double monotonic_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Under `lock`: keep one datagram for Python. */
static void push_entry(FastPath *self, int kind, Py_ssize_t route_id, const unsigned char *data, size_t length,
                       const void *name, socklen_t namelen) {
    Entry *entry = &self->queue[self->queued++];
    entry->kind = kind;
    entry->route_id = route_id;
    entry->length = length;
    entry->namelen = namelen;
    memcpy(&entry->name, name, namelen);
    memcpy(entry->data, data, length);
}

static void notify(FastPath *self) {
    uint64_t one = 1;
    ssize_t rc = write(self->notify_fd, &one, sizeof(one));
    (void)rc; /* a full eventfd counter still wakes the reader */
}

static void *forward_thread(void *arg) {
    FastPath *self = arg;
    struct pollfd fds[2] = {{.fd = self->fd, .events = POLLIN}, {.fd = self->stop_pipe[0], .events = POLLIN}};
    for (;;) {
        pthread_mutex_lock(&self->lock);
        while (!self->stopping && (self->paused || QUEUE_SLOTS - self->queued < 2 * BATCH))
            pthread_cond_wait(&self->cond, &self->lock);
        int stopping = self->stopping;
        pthread_mutex_unlock(&self->lock);
        if (stopping)
            break;
        if (poll(fds, 2, -1) < 0) {
            if (errno != EINTR) { /* never seen; counted, and the thread goes on */
                pthread_mutex_lock(&self->lock);
                self->recv_errors[errno < ERRNO_SLOTS ? errno : 0]++;
                pthread_mutex_unlock(&self->lock);
            }
            continue;
        }
        if (fds[1].revents)
            break;
        prepare_receive(self, BATCH);
        int count = recvmmsg(self->fd, self->rmsg, BATCH, MSG_DONTWAIT, NULL);
        if (count <= 0) {
            if (count < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                pthread_mutex_lock(&self->lock);
                self->recv_errors[errno < ERRNO_SLOTS ? errno : 0]++;
                pthread_mutex_unlock(&self->lock);
            }
            continue;
        }
        double now = monotonic_now() - self->clock_offset; /* the relay's clock */
        int nsend = 0, slow = 0, handed = 0;
        pthread_mutex_lock(&self->lock);
        /* Paused meanwhile (the relay changed: the table is stale), or a send
         * backlog: this batch goes to Python, all of it. */
        int blocked = self->blocked || self->paused;
        for (int i = 0; i < count; i++) {
            struct msghdr *hdr = &self->rmsg[i].msg_hdr;
            unsigned char *data = self->riov[i].iov_base;
            size_t length = self->rmsg[i].msg_len;
            if ((hdr->msg_flags & MSG_TRUNC) || length > MAX_DATAGRAM) {
                self->oversized++;
                continue;
            }
            Route *route = slow || blocked ? NULL : route_datagram(self, i, &data, &length);
            if (route == NULL) {
                slow = 1;
                push_entry(self, TO_PYTHON, -1, data, length, &self->rname[i], hdr->msg_namelen);
                handed++;
                continue;
            }
            if (!admit(route, now, length))
                continue;
            int mirror = route->mirror;
            if (route->level.on) {
                LevelEvent events[2];
                int n = track_level(&route->level, data, length, now, events);
                mirror = n < 0;
                for (int e = 0; e < n; e++) {
                    Entry *entry = &self->queue[self->queued++];
                    entry->kind = SPEECH;
                    entry->route_id = route->route_id;
                    entry->event = events[e];
                    handed++;
                }
                if (mirror)
                    slow = 1; /* Python's tracker takes this one with the state, then the rest of the batch */
            }
            if (mirror) {
                push_entry(self, MIRRORED, route->route_id, data, length, &self->rname[i], hdr->msg_namelen);
                handed++;
            }
            nsend = queue_sends(self, route, data, length, nsend, now); /* copies: the table may change once unlocked */
        }
        if (slow)
            self->paused = 1; /* Python handles those first; it resumes the thread */
        pthread_mutex_unlock(&self->lock);
        int start = 0;
        while (start < nsend) {
            int sent = sendmmsg(self->fd, self->smsg + start, (unsigned)(nsend - start), MSG_DONTWAIT);
            if (sent < 0) {
                if (errno == EINTR)
                    continue;
                pthread_mutex_lock(&self->lock);
                if (errno == EAGAIN || errno == EWOULDBLOCK) {
                    for (int k = start; k < nsend; k++) {
                        if (self->queued < QUEUE_SLOTS) {
                            push_entry(self, UNSENT, -1, self->siov[k].iov_base, self->siov[k].iov_len, &self->sname[k],
                                       sizeof(struct sockaddr_in));
                            handed++;
                        } else {
                            self->backlog_dropped++;
                        }
                    }
                    self->paused = 1;
                    self->blocked = 1;
                    pthread_mutex_unlock(&self->lock);
                    break;
                }
                self->send_errors[errno < ERRNO_SLOTS ? errno : 0]++;
                pthread_mutex_unlock(&self->lock);
                sent = 1;
            }
            start += sent;
        }
        if (handed)
            notify(self);
    }
    return NULL;
}

PyDoc_STRVAR(start_doc,
"start(notify_fd, now) -> None\n\n"
"Start the forwarding thread: it blocks in poll() without the GIL, forwards\n"
"what the table routes, and keeps the rest for collect(), writing 1 to the\n"
"eventfd `notify_fd` when it did. `now` is the relay's clock at this moment\n"
"(the rate windows stay on it). After a datagram for Python (or EAGAIN) the\n"
"thread waits for resume().");

static PyObject *FastPath_start(FastPath *self, PyObject *args) {
    int notify_fd;
    double now;
    if (!PyArg_ParseTuple(args, "id", &notify_fd, &now))
        return NULL;
    if (self->threaded) {
        PyErr_SetString(PyExc_RuntimeError, "already started");
        return NULL;
    }
    if (self->queue == NULL) {
        self->queue = PyMem_Malloc(sizeof(Entry) * QUEUE_SLOTS);
        if (self->queue == NULL)
            return PyErr_NoMemory();
    }
    if (pipe2(self->stop_pipe, O_CLOEXEC | O_NONBLOCK) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    pthread_mutex_init(&self->lock, NULL);
    pthread_cond_init(&self->cond, NULL);
    self->notify_fd = notify_fd;
    self->stopping = self->paused = self->blocked = 0;
    self->queued = 0;
    self->clock_offset = monotonic_now() - now;
    self->threaded = 1;
    int rc = pthread_create(&self->thread, NULL, forward_thread, self);
    if (rc != 0) {
        self->threaded = 0;
        close(self->stop_pipe[0]);
        close(self->stop_pipe[1]);
        errno = rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

static void stop_thread(FastPath *self) {
    if (!self->threaded)
        return;
    pthread_mutex_lock(&self->lock);
    self->stopping = 1;
    pthread_cond_signal(&self->cond);
    pthread_mutex_unlock(&self->lock);
    char byte = 1;
    ssize_t rc = write(self->stop_pipe[1], &byte, 1);
    (void)rc;
    pthread_join(self->thread, NULL);
    close(self->stop_pipe[0]);
    close(self->stop_pipe[1]);
    pthread_cond_destroy(&self->cond);
    pthread_mutex_destroy(&self->lock);
    self->threaded = 0;
}

static PyObject *FastPath_stop(FastPath *self, PyObject *unused) {
    if (self->threaded) {
        Py_BEGIN_ALLOW_THREADS
        stop_thread(self);
        Py_END_ALLOW_THREADS
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(collect_doc,
"collect() -> (to_python, mirrored, unsent)\n\n"
"What the thread kept, in order: [(data, addr)] for handle_datagram,\n"
"[(data, route_id)] forwarded for speech detection (and a level route's events\n"
"[((kind, ms[, duration]), route_id)] among them, in order), [(data, addr)] the\n"
"kernel refused (EAGAIN) for the backlog.");

static PyObject *FastPath_collect(FastPath *self, PyObject *unused) {
    if (!self->threaded) {
        PyErr_SetString(PyExc_RuntimeError, "not started");
        return NULL;
    }
    PyObject *lists[3] = {PyList_New(0), PyList_New(0), PyList_New(0)};
    PyObject *result = NULL;
    if (lists[0] == NULL || lists[1] == NULL || lists[2] == NULL)
        goto done;
    lock_table(self);
    int failed = 0;
    for (int i = 0; i < self->queued && !failed; i++) {
        Entry *entry = &self->queue[i];
        if (entry->kind == SPEECH) {
            failed = append_speech(lists[MIRRORED], level_event_tuple(&entry->event), entry->route_id) < 0;
            continue;
        }
        PyObject *tag = entry->kind == MIRRORED ? PyLong_FromSsize_t(entry->route_id) : address_of(&entry->name, entry->namelen);
        if (tag == NULL) {
            PyErr_Clear();
            self->bad_family++;
            continue;
        }
        failed = append_datagram(lists[entry->kind], entry->data, entry->length, tag) < 0;
        Py_DECREF(tag);
    }
    self->queued = 0;
    pthread_cond_signal(&self->cond);
    unlock_table(self);
    if (!failed)
        result = Py_BuildValue("(OOO)", lists[0], lists[1], lists[2]);
done:
    for (int k = 0; k < 3; k++)
        Py_XDECREF(lists[k]);
    return result;
}

static PyObject *FastPath_resume(FastPath *self, PyObject *args) {
    int forward;
    if (!PyArg_ParseTuple(args, "p", &forward))
        return NULL;
    if (self->threaded) {
        lock_table(self);
        self->paused = 0;
        self->blocked = !forward;
        pthread_cond_signal(&self->cond);
        unlock_table(self);
    }
    Py_RETURN_NONE;
}

static PyObject *FastPath_pending(FastPath *self, PyObject *unused) {
    lock_table(self);
    int queued = self->threaded ? self->queued : 0;
    unlock_table(self);
    return PyLong_FromLong(queued);
}

static PyObject *FastPath_pause(FastPath *self, PyObject *unused) {
    if (self->threaded) {
        lock_table(self);
        self->paused = 1;
        unlock_table(self);
    }
    Py_RETURN_NONE;
}

static Route *route_by_id(FastPath *self, Py_ssize_t route_id) {
    /* fastpath.py numbers routes in table order */
    if (route_id < 0 || route_id >= self->nroutes || self->routes[route_id].route_id != route_id) {
        PyErr_SetString(PyExc_KeyError, "no such route");
        return NULL;
    }
    return &self->routes[route_id];
}

PyDoc_STRVAR(level_doc,
"level(route_id) -> tracker or None\n\n"
"The route's speech tracker on the level path as it stands (None: off), in the\n"
"shape set_level takes. Python owns it again only after set_level(route_id, None).");

static PyObject *FastPath_level(FastPath *self, PyObject *args) {
    Py_ssize_t route_id;
    if (!PyArg_ParseTuple(args, "n", &route_id))
        return NULL;
    lock_table(self);
    Route *route = route_by_id(self, route_id);
    PyObject *result = route == NULL ? NULL : route_level_tuple(&route->level);
    unlock_table(self);
    return result;
}

PyDoc_STRVAR(set_level_doc,
"set_level(route_id, tracker) -> None\n\n"
"Give the route its speaker's speech tracker on the level path, or None (the\n"
"route then mirrors its packets if flagged so): (level_id or -1 for a bot's,\n"
"LevelDetector.config(), LevelDetector.state(), the stream's first RTP timestamp,\n"
"packet_ms, last_ms, last_voice, onset_ms or None, interrupted, barge-in limit\n"
"in ms or -1). Each forwarded packet with a level then runs the detector here;\n"
"one without a level is mirrored and the rest of its batch goes to Python,\n"
"which takes the tracker back (level, set_level) around it.");

static PyObject *FastPath_set_level(FastPath *self, PyObject *args) {
    Py_ssize_t route_id;
    PyObject *level;
    RouteLevel parsed;
    if (!PyArg_ParseTuple(args, "nO", &route_id, &level) || route_level_parse(level, &parsed) < 0)
        return NULL;
    lock_table(self);
    Route *route = route_by_id(self, route_id);
    if (route != NULL)
        route->level = parsed;
    unlock_table(self);
    if (route == NULL)
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(level_track_doc,
"level_track(route_id, packet, now) -> [event] or None\n\n"
"The route's tracker on one plain RTP packet of its speaker that Python\n"
"forwarded (it came to Python after another datagram of its batch): the\n"
"events, as a forwarded packet's; None when the packet carries no level (the\n"
"tracker is unchanged: Python takes it back for that packet).");

static PyObject *FastPath_level_track(FastPath *self, PyObject *args) {
    Py_ssize_t route_id;
    Py_buffer packet;
    double now;
    if (!PyArg_ParseTuple(args, "ny*d", &route_id, &packet, &now))
        return NULL;
    LevelEvent events[2];
    int n = 0;
    lock_table(self);
    Route *route = route_by_id(self, route_id);
    if (route != NULL && route->level.on && packet.len >= RTP_HEADER)
        n = track_level(&route->level, packet.buf, (size_t)packet.len, now, events);
    unlock_table(self);
    PyBuffer_Release(&packet);
    if (route == NULL)
        return NULL;
    if (n < 0 || !route->level.on)
        Py_RETURN_NONE;
    PyObject *list = PyList_New(n);
    for (int e = 0; list != NULL && e < n; e++) {
        PyObject *event = level_event_tuple(&events[e]);
        if (event == NULL) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, e, event);
    }
    return list;
}

PyDoc_STRVAR(level_expire_doc,
"level_expire(route_id, now, sweep) -> ('stopped', ms, duration) or None\n\n"
"MediaRelay._sweep_speaking for a level route: if its speaker is speaking and\n"
"silent for `sweep` s or more at `now`, expire its detector at\n"
"last_ms + int(silent * 1000). None also while the thread holds events Python\n"
"has not collected (they come first: the next sweep asks again).");

static PyObject *FastPath_level_expire(FastPath *self, PyObject *args) {
    Py_ssize_t route_id;
    double now, sweep;
    if (!PyArg_ParseTuple(args, "ndd", &route_id, &now, &sweep))
        return NULL;
    lock_table(self);
    Route *route = route_by_id(self, route_id);
    RouteLevel *lv = route == NULL ? NULL : &route->level;
    int kind = LEVEL_NONE;
    long long ms = 0, duration = 0;
    if (lv != NULL && lv->on && lv->has_onset && !(self->threaded && self->queued > 0)) {
        double silent = now - lv->last_voice;
        if (silent >= sweep)
            kind = level_expire(&lv->st, lv->last_ms + (long long)(silent * 1000), &ms, &duration);
        if (kind == LEVEL_STOPPED)
            lv->has_onset = 0;
    }
    unlock_table(self);
    if (route == NULL)
        return NULL;
    if (kind != LEVEL_STOPPED)
        Py_RETURN_NONE;
    return Py_BuildValue("(sLL)", "stopped", ms, duration);
}

static PyObject *FastPath_window(FastPath *self, PyObject *args) {
    Py_ssize_t route_id;
    if (!PyArg_ParseTuple(args, "n", &route_id))
        return NULL;
    lock_table(self);
    Route *route = route_by_id(self, route_id);
    PyObject *result = route == NULL ? NULL : Py_BuildValue("(dk)", route->window_start, (unsigned long)route->window_packets);
    unlock_table(self);
    return result;
}

static PyObject *FastPath_set_window(FastPath *self, PyObject *args) {
    Py_ssize_t route_id;
    double start;
    unsigned long packets;
    if (!PyArg_ParseTuple(args, "ndk", &route_id, &start, &packets))
        return NULL;
    lock_table(self);
    Route *route = route_by_id(self, route_id);
    if (route != NULL) {
        route->window_start = start;
        route->window_packets = (uint32_t)packets;
    }
    unlock_table(self);
    if (route == NULL)
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(set_srtp_doc,
"set_srtp(protect, unprotect) -> None\n\n"
"The addresses of libsrtp 2.x's srtp_protect and srtp_unprotect, from the\n"
"library that made the sessions routes name (pylibsrtp's: webrtc/srtp.py).");

static PyObject *FastPath_set_srtp(FastPath *self, PyObject *args) {
    unsigned long long protect, unprotect;
    if (!PyArg_ParseTuple(args, "KK", &protect, &unprotect))
        return NULL;
    if (protect == 0 || unprotect == 0) {
        PyErr_SetString(PyExc_ValueError, "null function");
        return NULL;
    }
    lock_table(self);
    self->protect = (srtp_call)(uintptr_t)protect;
    self->unprotect = (srtp_call)(uintptr_t)unprotect;
    unlock_table(self);
    Py_RETURN_NONE;
}

static PyObject *FastPath_streams(FastPath *self, PyObject *args) {
    Py_ssize_t route_id;
    if (!PyArg_ParseTuple(args, "n", &route_id))
        return NULL;
    lock_table(self);
    Route *route = route_by_id(self, route_id);
    PyObject *result = route == NULL ? NULL : secure_states(route, 1);
    unlock_table(self);
    return result;
}

static PyObject *FastPath_set_streams(FastPath *self, PyObject *args) {
    Py_ssize_t route_id;
    PyObject *states;
    if (!PyArg_ParseTuple(args, "nO", &route_id, &states))
        return NULL;
    PyObject *seq = PySequence_Fast(states, "states must be a sequence");
    if (seq == NULL)
        return NULL;
    lock_table(self);
    Route *route = route_by_id(self, route_id);
    int ok = route != NULL;
    for (Py_ssize_t k = 0; ok && k < PySequence_Fast_GET_SIZE(seq); k++) {
        int d;
        unsigned long last_seq, last_ts;
        double last_time;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, k), "ikkd", &d, &last_seq, &last_ts, &last_time)) {
            ok = 0;
        } else if (d < 0 || d >= route->ndest || route->sdest[d].session == NULL) {
            PyErr_SetString(PyExc_KeyError, "no such browser destination");
            ok = 0;
        } else {
            route->sdest[d].last_seq = (uint16_t)last_seq;
            route->sdest[d].last_ts = (uint32_t)last_ts;
            route->sdest[d].last_time = last_time;
        }
    }
    unlock_table(self);
    Py_DECREF(seq);
    if (!ok)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *FastPath_route_count(FastPath *self, PyObject *unused) {
    return PyLong_FromSsize_t(self->nroutes);
}

/* --- Python's own sends (send_list): the bot -> browser half of a call -------------------- */

#define SEND_LIST_BATCH 64 /* datagrams per sendmmsg call; the buffers are on the stack */

/* An (IPv4 host, port) tuple as sockaddr_in; 0 if it is none (Python's sendto decides then). */
static int ipv4_destination(PyObject *addr, struct sockaddr_in *out) {
    if (!PyTuple_Check(addr) || PyTuple_GET_SIZE(addr) < 2)
        return 0;
    PyObject *host = PyTuple_GET_ITEM(addr, 0), *port = PyTuple_GET_ITEM(addr, 1);
    if (!PyUnicode_Check(host) || !PyLong_Check(port))
        return 0;
    const char *text = PyUnicode_AsUTF8(host);
    if (text == NULL) {
        PyErr_Clear();
        return 0;
    }
    long number = PyLong_AsLong(port);
    if (number < 0 || number > 65535) {
        PyErr_Clear();
        return 0;
    }
    memset(out, 0, sizeof(*out));
    out->sin_family = AF_INET;
    out->sin_port = htons((uint16_t)number);
    return inet_pton(AF_INET, text, &out->sin_addr) == 1;
}

PyDoc_STRVAR(send_list_doc,
"send_list(datagrams, addresses, start, end) -> (next, errno)\n\n"
"Send datagrams[start:end] (bytes) to addresses[start:end] ((IPv4 host, port)\n"
"tuples) in order with sendmmsg, SEND_LIST_BATCH a call, GIL released. Stops\n"
"at the first one it cannot send: next is its index (end when all went) and\n"
"errno says why: 0 all sent; EAGAIN the kernel's buffer is full (it and the\n"
"rest are unsent); another errno the kernel refused that one datagram (the\n"
"caller counts and skips it, as for sendto); -1 not bytes or not an IPv4\n"
"address (the caller sends it with sendto, which decides). Uses its own\n"
"buffers: safe beside the forwarding thread.");

static PyObject *FastPath_send_list(FastPath *self, PyObject *args) {
    PyObject *datagrams, *addresses;
    Py_ssize_t start, end;
    if (!PyArg_ParseTuple(args, "O!O!nn", &PyList_Type, &datagrams, &PyList_Type, &addresses, &start, &end))
        return NULL;
    if (end > PyList_GET_SIZE(datagrams))
        end = PyList_GET_SIZE(datagrams);
    if (end > PyList_GET_SIZE(addresses))
        end = PyList_GET_SIZE(addresses);
    if (start < 0)
        start = 0;
    struct mmsghdr msgs[SEND_LIST_BATCH];
    struct iovec iovs[SEND_LIST_BATCH];
    struct sockaddr_in names[SEND_LIST_BATCH];
    int code = 0;
    while (start < end) {
        int count = 0;
        PyObject *last_addr = NULL;
        while (count < SEND_LIST_BATCH && start + count < end) {
            PyObject *data = PyList_GET_ITEM(datagrams, start + count);
            PyObject *addr = PyList_GET_ITEM(addresses, start + count);
            if (!PyBytes_CheckExact(data))
                break;
            if (addr == last_addr) {
                names[count] = names[count - 1]; /* one peer's packets share one tuple */
            } else if (!ipv4_destination(addr, &names[count])) {
                break;
            }
            last_addr = addr;
            iovs[count].iov_base = PyBytes_AS_STRING(data);
            iovs[count].iov_len = (size_t)PyBytes_GET_SIZE(data);
            memset(&msgs[count], 0, sizeof(msgs[count]));
            msgs[count].msg_hdr.msg_name = &names[count];
            msgs[count].msg_hdr.msg_namelen = sizeof(names[count]);
            msgs[count].msg_hdr.msg_iov = &iovs[count];
            msgs[count].msg_hdr.msg_iovlen = 1;
            count++;
        }
        if (count == 0) {
            code = -1;
            break;
        }
        /* The lists and their bytes stay alive and unchanged: the caller owns
         * them and holds them across this call. */
        int first = 0;
        while (first < count) {
            int sent;
            Py_BEGIN_ALLOW_THREADS
            sent = sendmmsg(self->fd, msgs + first, (unsigned)(count - first), MSG_DONTWAIT);
            Py_END_ALLOW_THREADS
            if (sent < 0) {
                if (errno == EINTR)
                    continue;
                code = errno == EWOULDBLOCK ? EAGAIN : errno;
                break;
            }
            first += sent;
        }
        start += first;
        if (code != 0)
            break;
    }
    return Py_BuildValue("(ni)", start, code);
}

static PyMethodDef FastPath_methods[] = {
    {"set_routes", (PyCFunction)FastPath_set_routes, METH_O, set_routes_doc},
    {"take_stats", (PyCFunction)FastPath_take_stats, METH_NOARGS, take_stats_doc},
    {"drain", (PyCFunction)FastPath_drain, METH_VARARGS, drain_doc},
    {"route_count", (PyCFunction)FastPath_route_count, METH_NOARGS, "Routes in the table."},
    {"set_srtp", (PyCFunction)FastPath_set_srtp, METH_VARARGS, set_srtp_doc},
    {"streams", (PyCFunction)FastPath_streams, METH_VARARGS,
     "streams(route_id) -> [(index, failed, last_seq, last_ts, last_time)]: its browser destinations (failures reset)."},
    {"set_streams", (PyCFunction)FastPath_set_streams, METH_VARARGS,
     "set_streams(route_id, [(index, last_seq, last_ts, last_time)]): the relay numbered meanwhile."},
    {"start", (PyCFunction)FastPath_start, METH_VARARGS, start_doc},
    {"window", (PyCFunction)FastPath_window, METH_VARARGS, "window(route_id) -> (start, packets): the route's rate window."},
    {"set_window", (PyCFunction)FastPath_set_window, METH_VARARGS, "set_window(route_id, start, packets): the relay counted meanwhile."},
    {"stop", (PyCFunction)FastPath_stop, METH_NOARGS, "Stop the forwarding thread and wait for it (idempotent)."},
    {"collect", (PyCFunction)FastPath_collect, METH_NOARGS, collect_doc},
    {"resume", (PyCFunction)FastPath_resume, METH_VARARGS, "resume(forward): the thread reads again; forwards only if `forward`."},
    {"level", (PyCFunction)FastPath_level, METH_VARARGS, level_doc},
    {"set_level", (PyCFunction)FastPath_set_level, METH_VARARGS, set_level_doc},
    {"level_expire", (PyCFunction)FastPath_level_expire, METH_VARARGS, level_expire_doc},
    {"level_track", (PyCFunction)FastPath_level_track, METH_VARARGS, level_track_doc},
    {"pending", (PyCFunction)FastPath_pending, METH_NOARGS, "Entries the thread kept that collect() has not taken yet (0 without the thread)."},
    {"pause", (PyCFunction)FastPath_pause, METH_NOARGS, "The thread stops after its current batch until resume() (the table is stale)."},
    {"send_list", (PyCFunction)FastPath_send_list, METH_VARARGS, send_list_doc},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject FastPathType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "botcall.relay._fastpath.FastPath",
    .tp_doc = PyDoc_STR("FastPath(fd): plain RTP forwarding for the routes the relay programs."),
    .tp_basicsize = sizeof(FastPath),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)FastPath_init,
    .tp_dealloc = (destructor)FastPath_dealloc,
    .tp_methods = FastPath_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastpath", "The relay's compiled fast path (see fastpath.py).", -1, module_methods,
};

PyMODINIT_FUNC PyInit__fastpath(void) {
    if (PyType_Ready(&FastPathType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&FastPathType);
    if (PyModule_AddObject(m, "FastPath", (PyObject *)&FastPathType) < 0) {
        Py_DECREF(&FastPathType);
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "MAX_FANOUT", MAX_FANOUT);
    PyModule_AddIntConstant(m, "MAX_ROUTES", MAX_ROUTES);
    PyModule_AddIntConstant(m, "BATCH", BATCH);
    PyModule_AddIntConstant(m, "MAX_DATAGRAM", MAX_DATAGRAM);
    return m;
}

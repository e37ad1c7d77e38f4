// SPDX-License-Identifier: MIT
// The compiled user-space forwarder of stunner-dp: ChannelData relayed by a C thread.
//
// Where the kernel fast path cannot load (no BPF, no privileges), the media path still should
// not run one Python bytecode per packet. Python starts fwd_run() in a thread of its own (the
// GIL is released for the whole call) and hands it the UDP listener and relay sockets. This
// thread reads them all with recvmmsg. A datagram that matches a channel entry Python
// installed is relayed here:
//   client ChannelData on a listener -> its payload from the relay socket to the peer,
//   a peer's datagram on a relay      -> ChannelData from the listener to the client.
// Every other datagram (STUN, Send/Data indications, unbound channels, anything short or
// odd) is handed to Python unchanged, as a record on a Unix stream socket, in arrival
// order, and Python answers it exactly as it would have. Python stays the reference: an entry
// exists only while Python's own hot path would relay that channel, and the state machine
// installs and removes entries through the same seam as the eBPF program's map entries.
//
// Locking: one mutex. The thread holds it while it handles one epoll batch; every call
// from Python takes it. So after fwd_unwatch() or fwd_remove() returns, the thread neither
// touches that descriptor nor relays that channel any more.
//
// Build: scripts/build-forwarder (the shared object ships as package data).
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define FWD_ABI 1
#define KIND_LISTENER 0
#define KIND_RELAY 1
#define BATCH 32          // datagrams per recvmmsg
#define ROUNDS 4          // recvmmsg calls per socket per wake-up: a busy one cannot starve
#define SLOT 65536        // the largest UDP payload, so nothing is ever truncated
#define HEADROOM 4        // room for a ChannelData header in front of a peer's payload
#define EVENTS 64
#define HANDOFF_SIZE (4u << 20)  // records waiting for Python before new ones are dropped
#define RECORD_HEAD 28

// totals, the order of TOTAL_NAMES in stunner_dp/forwarder/__init__.py
enum total {
    T_HANDED_OFF, T_HANDOFF_DROPPED, T_RECV_ERRORS, T_WAKEUPS, T_COUNT
};

struct endpoint {  // a UDP address as Python gave it: family, 16 address bytes, port
    uint8_t family;  // AF_INET or AF_INET6
    uint8_t ip[16];
    uint16_t port;   // host order
};

union address {
    struct sockaddr sa;
    struct sockaddr_in in4;
    struct sockaddr_in6 in6;
};

struct entry {
    int used;
    int listener_fd, relay_fd;
    uint16_t channel;
    struct endpoint client, peer;
    union address client_sa, peer_sa;
    socklen_t client_len, peer_len;
    uint64_t fwd_packets, fwd_bytes, rev_packets, rev_bytes, fwd_dropped, rev_dropped;
    int32_t fwd_next, rev_next;  // hash chains (index, -1 ends); fwd_next also the free list
};

struct watch {
    int active;
    int kind;
    uint32_t token;
    uint32_t refs;  // entries that read or send through this descriptor
};

struct fwd {
    pthread_mutex_t mu;
    int epoll_fd, wake_fd, handoff_fd;
    int stopping, handoff_armed, handoff_closed;
    uint32_t capacity, buckets_mask;
    struct entry *entries;
    int32_t *fwd_buckets, *rev_buckets;
    int32_t free_head;  // entries removed, for reuse (-1: none)
    uint32_t fresh;     // entries below this index have been used: the rest are untouched
    uint32_t used;
    struct watch *watches;
    int watch_cap;
    uint64_t totals[T_COUNT];
    // receive and send state of the thread
    uint8_t *slots;  // BATCH * (HEADROOM + SLOT)
    struct mmsghdr in[BATCH], out[BATCH];
    struct iovec in_iov[BATCH], out_iov[BATCH];
    struct sockaddr_storage names[BATCH];
    int32_t out_entry[BATCH];
    uint8_t *handoff;
    uint32_t handoff_used, handoff_sent;
};

static uint32_t mix(uint32_t h, const void *data, size_t n) {
    const uint8_t *p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 16777619u;  // FNV-1a
    }
    return h;
}

static uint32_t fwd_hash(int listener_fd, const struct endpoint *client, uint16_t channel) {
    uint32_t h = 2166136261u;
    h = mix(h, &listener_fd, sizeof listener_fd);
    h = mix(h, &channel, sizeof channel);
    h = mix(h, &client->port, sizeof client->port);
    return mix(h, client->ip, client->family == AF_INET ? 4 : 16);
}

static uint32_t rev_hash(int relay_fd, const struct endpoint *peer) {
    uint32_t h = 2166136261u;
    h = mix(h, &relay_fd, sizeof relay_fd);
    h = mix(h, &peer->port, sizeof peer->port);
    return mix(h, peer->ip, peer->family == AF_INET ? 4 : 16);
}

static int same_endpoint(const struct endpoint *a, const struct endpoint *b) {
    return a->family == b->family && a->port == b->port &&
           memcmp(a->ip, b->ip, a->family == AF_INET ? 4 : 16) == 0;
}

// the endpoint a received datagram came from (0: a family we do not relay)
static int endpoint_of(const struct sockaddr_storage *sa, struct endpoint *out) {
    memset(out, 0, sizeof *out);
    if (sa->ss_family == AF_INET) {
        const struct sockaddr_in *in4 = (const struct sockaddr_in *)sa;
        out->family = AF_INET;
        memcpy(out->ip, &in4->sin_addr, 4);
        out->port = ntohs(in4->sin_port);
        return 1;
    }
    if (sa->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        out->family = AF_INET6;
        memcpy(out->ip, &in6->sin6_addr, 16);
        out->port = ntohs(in6->sin6_port);
        return 1;
    }
    return 0;
}

static socklen_t sockaddr_of(const struct endpoint *e, union address *out) {
    memset(out, 0, sizeof *out);
    if (e->family == AF_INET) {
        out->in4.sin_family = AF_INET;
        out->in4.sin_port = htons(e->port);
        memcpy(&out->in4.sin_addr, e->ip, 4);
        return sizeof out->in4;
    }
    out->in6.sin6_family = AF_INET6;
    out->in6.sin6_port = htons(e->port);
    memcpy(&out->in6.sin6_addr, e->ip, 16);
    return sizeof out->in6;
}

static struct entry *find_fwd(struct fwd *f, int listener_fd, const struct endpoint *client,
                              uint16_t channel) {
    int32_t i = f->fwd_buckets[fwd_hash(listener_fd, client, channel) & f->buckets_mask];
    for (; i >= 0; i = f->entries[i].fwd_next) {
        struct entry *e = &f->entries[i];
        if (e->listener_fd == listener_fd && e->channel == channel &&
            same_endpoint(&e->client, client))
            return e;
    }
    return NULL;
}

static struct entry *find_rev(struct fwd *f, int relay_fd, const struct endpoint *peer) {
    int32_t i = f->rev_buckets[rev_hash(relay_fd, peer) & f->buckets_mask];
    for (; i >= 0; i = f->entries[i].rev_next) {
        struct entry *e = &f->entries[i];
        if (e->relay_fd == relay_fd && same_endpoint(&e->peer, peer))
            return e;
    }
    return NULL;
}

static void unlink_chain(struct fwd *f, int32_t *head, int32_t id, int fwd_chain) {
    int32_t *link = head;
    while (*link >= 0) {
        struct entry *e = &f->entries[*link];
        int32_t *next = fwd_chain ? &e->fwd_next : &e->rev_next;
        if (*link == id) {
            *link = *next;
            return;
        }
        link = next;
    }
}

static void remove_entry(struct fwd *f, int32_t id) {
    struct entry *e = &f->entries[id];
    unlink_chain(f, &f->fwd_buckets[fwd_hash(e->listener_fd, &e->client, e->channel) &
                                    f->buckets_mask], id, 1);
    unlink_chain(f, &f->rev_buckets[rev_hash(e->relay_fd, &e->peer) & f->buckets_mask], id, 0);
    e->used = 0;
    f->watches[e->listener_fd].refs--;
    f->watches[e->relay_fd].refs--;
    e->fwd_next = f->free_head;
    f->free_head = id;
    f->used--;
}

// -- handing datagrams to Python ---------------------------------------------------------------

static void handoff_flush(struct fwd *f) {
    if (f->handoff_closed) {
        f->handoff_used = f->handoff_sent = 0;
        return;
    }
    while (f->handoff_sent < f->handoff_used) {
        ssize_t n = send(f->handoff_fd, f->handoff + f->handoff_sent,
                         f->handoff_used - f->handoff_sent, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break;  // full (EAGAIN): EPOLLOUT tells us when Python has read
        }
        f->handoff_sent += (uint32_t)n;
    }
    int pending = f->handoff_sent < f->handoff_used;
    if (!pending)
        f->handoff_used = f->handoff_sent = 0;
    if (pending != f->handoff_armed) {
        struct epoll_event ev = {.events = EPOLLIN | (pending ? EPOLLOUT : 0),
                                 .data.fd = f->handoff_fd};
        if (epoll_ctl(f->epoll_fd, EPOLL_CTL_MOD, f->handoff_fd, &ev) == 0)
            f->handoff_armed = pending;
    }
}

// One record: u32 length, u32 token, u8 family, u8 0, u16 port, 16 address bytes (all host
// order), then the datagram.
static void handoff(struct fwd *f, uint32_t token, const struct endpoint *from,
                    const uint8_t *data, uint32_t len) {
    uint32_t need = RECORD_HEAD + len;
    if (f->handoff_used + need > HANDOFF_SIZE && f->handoff_sent > 0) {
        memmove(f->handoff, f->handoff + f->handoff_sent, f->handoff_used - f->handoff_sent);
        f->handoff_used -= f->handoff_sent;
        f->handoff_sent = 0;
    }
    if (f->handoff_used + need > HANDOFF_SIZE) {
        f->totals[T_HANDOFF_DROPPED]++;  // Python is that far behind: as a full socket would
        return;
    }
    uint8_t *r = f->handoff + f->handoff_used;
    uint16_t port = from->port;
    memcpy(r, &len, 4);
    memcpy(r + 4, &token, 4);
    r[8] = from->family;
    r[9] = 0;
    memcpy(r + 10, &port, 2);
    memcpy(r + 12, from->ip, 16);
    memcpy(r + RECORD_HEAD, data, len);
    f->handoff_used += need;
    f->totals[T_HANDED_OFF]++;
}

// -- the two directions --------------------------------------------------------------------------

static int receive(struct fwd *f, int fd) {
    for (int i = 0; i < BATCH; i++) {
        f->in_iov[i].iov_base = f->slots + (size_t)i * (HEADROOM + SLOT) + HEADROOM;
        f->in_iov[i].iov_len = SLOT;
        f->in[i].msg_hdr = (struct msghdr){.msg_name = &f->names[i],
                                           .msg_namelen = sizeof f->names[i],
                                           .msg_iov = &f->in_iov[i],
                                           .msg_iovlen = 1};
    }
    for (;;) {
        int n = recvmmsg(fd, f->in, BATCH, MSG_DONTWAIT, NULL);
        if (n >= 0 || errno != EINTR)
            return n;
    }
}

static void from_clients(struct fwd *f, int fd, uint32_t token) {
    for (int round = 0; round < ROUNDS; round++) {
        int n = receive(f, fd);
        if (n <= 0) {
            if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
                f->totals[T_RECV_ERRORS]++;  // an error queued on the socket: read on
                continue;
            }
            return;
        }
        for (int i = 0; i < n; i++) {
            uint8_t *b = f->in_iov[i].iov_base;
            uint32_t len = f->in[i].msg_len;
            struct endpoint client;
            if (!endpoint_of(&f->names[i], &client))
                continue;
            if (len >= 4 && b[0] >= 0x40 && b[0] <= 0x7F) {
                uint16_t size = (uint16_t)(b[2] << 8 | b[3]);
                struct entry *e = find_fwd(f, fd, &client, (uint16_t)(b[0] << 8 | b[1]));
                if (e != NULL && size <= len - 4) {
                    ssize_t sent;
                    do {
                        sent = sendto(e->relay_fd, b + 4, size, MSG_DONTWAIT,
                                      &e->peer_sa.sa, e->peer_len);
                    } while (sent < 0 && errno == EINTR);
                    if (sent < 0) {
                        e->fwd_dropped++;  // send buffer full or peer unreachable
                    } else {
                        e->fwd_packets++;
                        e->fwd_bytes += size;
                    }
                    continue;
                }
            }
            handoff(f, token, &client, b, len);
        }
        if (n < BATCH)
            return;
    }
}

static void send_to_clients(struct fwd *f, int listener_fd, int count) {
    int done = 0;
    while (done < count) {
        int n = sendmmsg(listener_fd, f->out + done, (unsigned)(count - done), MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            f->entries[f->out_entry[done]].rev_dropped++;  // this one failed: on to the next
            done++;
            continue;
        }
        for (int i = done; i < done + n; i++) {
            struct entry *e = &f->entries[f->out_entry[i]];
            e->rev_packets++;
            e->rev_bytes += f->out_iov[i].iov_len - 4;
        }
        done += n;
    }
}

static void from_peers(struct fwd *f, int fd, uint32_t token) {
    for (int round = 0; round < ROUNDS; round++) {
        int n = receive(f, fd);
        if (n <= 0) {
            if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
                f->totals[T_RECV_ERRORS]++;  // an ICMP error surfaced on the socket
                continue;
            }
            return;
        }
        int count = 0, out_fd = -1;
        for (int i = 0; i < n; i++) {
            uint8_t *payload = f->in_iov[i].iov_base;
            uint32_t len = f->in[i].msg_len;
            struct endpoint peer;
            if (!endpoint_of(&f->names[i], &peer))
                continue;
            struct entry *e = find_rev(f, fd, &peer);
            if (e == NULL) {
                handoff(f, token, &peer, payload, len);
                continue;
            }
            if (count > 0 && e->listener_fd != out_fd) {
                send_to_clients(f, out_fd, count);
                count = 0;
            }
            out_fd = e->listener_fd;
            uint8_t *frame = payload - HEADROOM;  // ChannelData: channel, length, payload
            frame[0] = (uint8_t)(e->channel >> 8);
            frame[1] = (uint8_t)e->channel;
            frame[2] = (uint8_t)(len >> 8);
            frame[3] = (uint8_t)len;
            f->out_iov[count] = (struct iovec){.iov_base = frame, .iov_len = len + 4};
            f->out[count].msg_hdr = (struct msghdr){.msg_name = &e->client_sa,
                                                    .msg_namelen = e->client_len,
                                                    .msg_iov = &f->out_iov[count],
                                                    .msg_iovlen = 1};
            f->out_entry[count] = (int32_t)(e - f->entries);
            count++;
        }
        if (count > 0)
            send_to_clients(f, out_fd, count);
        if (n < BATCH)
            return;
    }
}

// -- the API Python calls (ctypes) ---------------------------------------------------------------

int fwd_abi(void) { return FWD_ABI; }

void fwd_free(struct fwd *f);

struct fwd *fwd_new(int handoff_fd, uint32_t max_entries) {
    if (max_entries == 0 || max_entries > (1u << 24))
        return NULL;
    struct fwd *f = calloc(1, sizeof *f);
    if (f == NULL)
        return NULL;
    pthread_mutex_init(&f->mu, NULL);
    f->epoll_fd = f->wake_fd = -1;
    f->handoff_fd = handoff_fd;
    f->capacity = max_entries;
    uint32_t buckets = 1;
    while (buckets < 2 * max_entries)
        buckets <<= 1;
    f->buckets_mask = buckets - 1;
    f->entries = calloc(max_entries, sizeof *f->entries);
    f->fwd_buckets = malloc(buckets * sizeof(int32_t));
    f->rev_buckets = malloc(buckets * sizeof(int32_t));
    f->slots = malloc((size_t)BATCH * (HEADROOM + SLOT));
    f->handoff = malloc(HANDOFF_SIZE);
    f->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    f->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (!f->entries || !f->fwd_buckets || !f->rev_buckets || !f->slots || !f->handoff ||
        f->epoll_fd < 0 || f->wake_fd < 0) {
        fwd_free(f);
        return NULL;
    }
    memset(f->fwd_buckets, 0xff, buckets * sizeof(int32_t));
    memset(f->rev_buckets, 0xff, buckets * sizeof(int32_t));
    // entries are taken in order (fresh) before any is reused: the table's pages stay
    // unmapped until that many channels exist (calloc'd memory is mapped lazily)
    f->free_head = -1;
    f->fresh = 0;
    struct epoll_event wake = {.events = EPOLLIN, .data.fd = f->wake_fd};
    struct epoll_event out = {.events = EPOLLIN, .data.fd = handoff_fd};
    if (epoll_ctl(f->epoll_fd, EPOLL_CTL_ADD, f->wake_fd, &wake) < 0 ||
        epoll_ctl(f->epoll_fd, EPOLL_CTL_ADD, handoff_fd, &out) < 0) {
        fwd_free(f);
        return NULL;
    }
    return f;
}

// After fwd_run has returned (or was never called).
void fwd_free(struct fwd *f) {
    if (f == NULL)
        return;
    if (f->epoll_fd >= 0)
        close(f->epoll_fd);
    if (f->wake_fd >= 0)
        close(f->wake_fd);
    free(f->entries);
    free(f->fwd_buckets);
    free(f->rev_buckets);
    free(f->slots);
    free(f->handoff);
    free(f->watches);
    pthread_mutex_destroy(&f->mu);
    free(f);
}

// The forwarding loop, until fwd_stop(). Returns 0, or -errno when epoll fails.
int fwd_run(struct fwd *f) {
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);  // signals stay the main thread's (Python's)
    struct epoll_event events[EVENTS];
    for (;;) {
        int n = epoll_wait(f->epoll_fd, events, EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        pthread_mutex_lock(&f->mu);
        if (f->stopping) {
            pthread_mutex_unlock(&f->mu);
            return 0;
        }
        f->totals[T_WAKEUPS]++;
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == f->wake_fd) {
                uint64_t ignored;
                (void)!read(f->wake_fd, &ignored, sizeof ignored);
                continue;
            }
            if (fd == f->handoff_fd) {
                if (events[i].events & (EPOLLHUP | EPOLLERR)) {  // Python closed its end
                    epoll_ctl(f->epoll_fd, EPOLL_CTL_DEL, fd, NULL);
                    f->handoff_closed = 1;
                }
                continue;
            }
            if (fd < 0 || fd >= f->watch_cap || !f->watches[fd].active)
                continue;  // unwatched since epoll_wait returned: not ours any more
            struct watch *w = &f->watches[fd];
            if (w->kind == KIND_LISTENER)
                from_clients(f, fd, w->token);
            else
                from_peers(f, fd, w->token);
        }
        handoff_flush(f);
        pthread_mutex_unlock(&f->mu);
    }
}

void fwd_stop(struct fwd *f) {
    pthread_mutex_lock(&f->mu);
    f->stopping = 1;
    pthread_mutex_unlock(&f->mu);
    uint64_t one = 1;
    (void)!write(f->wake_fd, &one, sizeof one);
}

// Forget `fd`: its entries go, and it is no longer watched. Python removes a relay's entries
// before it closes the relay; this sweep is the safety net (and a closing listener's case),
// skipped when nothing refers to fd.
static void drop_entries_of(struct fwd *f, int fd) {
    for (uint32_t i = 0; f->watches[fd].refs > 0 && i < f->fresh; i++) {
        struct entry *e = &f->entries[i];
        if (e->used && (e->listener_fd == fd || e->relay_fd == fd))
            remove_entry(f, (int32_t)i);
    }
    f->watches[fd].active = 0;
}

// Read `fd` in the thread from now on; its handed-off datagrams carry `token`.
int fwd_watch(struct fwd *f, int fd, int kind, uint32_t token) {
    if (fd < 0 || (kind != KIND_LISTENER && kind != KIND_RELAY))
        return -EINVAL;
    int rc = 0;
    pthread_mutex_lock(&f->mu);
    if (fd >= f->watch_cap) {
        int cap = f->watch_cap ? f->watch_cap : 1024;
        while (cap <= fd)
            cap *= 2;
        struct watch *grown = realloc(f->watches, (size_t)cap * sizeof *grown);
        if (grown == NULL) {
            rc = -ENOMEM;
            goto out;
        }
        memset(grown + f->watch_cap, 0, (size_t)(cap - f->watch_cap) * sizeof *grown);
        f->watches = grown;
        f->watch_cap = cap;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    if (f->watches[fd].active) {
        if (epoll_ctl(f->epoll_fd, EPOLL_CTL_MOD, fd, &ev) == 0) {
            rc = -EEXIST;  // watched, and still the same open socket
            goto out;
        }
        // A watched socket was closed without fwd_unwatch (epoll dropped it) and its number
        // reused: nothing may still send through the old one's entries.
        drop_entries_of(f, fd);
    }
    if (epoll_ctl(f->epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        rc = -errno;
        goto out;
    }
    f->watches[fd] = (struct watch){.active = 1, .kind = kind, .token = token, .refs = 0};
out:
    pthread_mutex_unlock(&f->mu);
    return rc;
}

// Stop reading `fd`, and remove every entry that sends through it. The caller folds the
// entries' counts first (fwd_counters) when it wants them.
int fwd_unwatch(struct fwd *f, int fd) {
    int rc = 0;
    pthread_mutex_lock(&f->mu);
    if (fd < 0 || fd >= f->watch_cap || !f->watches[fd].active) {
        rc = -ENOENT;
    } else {
        epoll_ctl(f->epoll_fd, EPOLL_CTL_DEL, fd, NULL);
        drop_entries_of(f, fd);
    }
    pthread_mutex_unlock(&f->mu);
    return rc;
}

static int watched(const struct fwd *f, int fd, int kind) {
    return fd >= 0 && fd < f->watch_cap && f->watches[fd].active && f->watches[fd].kind == kind;
}

static int endpoint_from(uint8_t family, const uint8_t *ip, uint16_t port, struct endpoint *e) {
    if (family != AF_INET && family != AF_INET6)
        return 0;
    memset(e, 0, sizeof *e);
    e->family = family;
    memcpy(e->ip, ip, family == AF_INET ? 4 : 16);
    e->port = port;
    return 1;
}

// Relay `channel` between the client on `listener_fd` and the peer through `relay_fd`.
// Returns the entry's id, or -errno (EEXIST: either direction's key is taken; ENOSPC: full).
int fwd_add(struct fwd *f, int listener_fd, uint8_t client_family, const uint8_t *client_ip,
            uint16_t client_port, uint16_t channel, int relay_fd, uint8_t peer_family,
            const uint8_t *peer_ip, uint16_t peer_port) {
    struct endpoint client, peer;
    if (!endpoint_from(client_family, client_ip, client_port, &client) ||
        !endpoint_from(peer_family, peer_ip, peer_port, &peer) || channel < 0x4000 ||
        channel > 0x7FFF)
        return -EINVAL;
    int rc;
    pthread_mutex_lock(&f->mu);
    if (!watched(f, listener_fd, KIND_LISTENER) || !watched(f, relay_fd, KIND_RELAY)) {
        rc = -EBADF;  // a direction nobody would read
    } else if (find_fwd(f, listener_fd, &client, channel) || find_rev(f, relay_fd, &peer)) {
        rc = -EEXIST;
    } else if (f->free_head < 0 && f->fresh >= f->capacity) {
        rc = -ENOSPC;
    } else {
        int32_t id = f->free_head >= 0 ? f->free_head : (int32_t)f->fresh++;
        struct entry *e = &f->entries[id];
        if (id == f->free_head)
            f->free_head = e->fwd_next;
        memset(e, 0, sizeof *e);
        e->used = 1;
        e->listener_fd = listener_fd;
        e->relay_fd = relay_fd;
        e->channel = channel;
        e->client = client;
        e->peer = peer;
        e->client_len = sockaddr_of(&client, &e->client_sa);
        e->peer_len = sockaddr_of(&peer, &e->peer_sa);
        int32_t *fb = &f->fwd_buckets[fwd_hash(listener_fd, &client, channel) & f->buckets_mask];
        int32_t *rb = &f->rev_buckets[rev_hash(relay_fd, &peer) & f->buckets_mask];
        e->fwd_next = *fb;
        *fb = id;
        e->rev_next = *rb;
        *rb = id;
        f->watches[listener_fd].refs++;
        f->watches[relay_fd].refs++;
        f->used++;
        rc = id;
    }
    pthread_mutex_unlock(&f->mu);
    return rc;
}

int fwd_remove(struct fwd *f, int32_t id) {
    int rc = 0;
    pthread_mutex_lock(&f->mu);
    if (id < 0 || (uint32_t)id >= f->capacity || !f->entries[id].used)
        rc = -ENOENT;
    else
        remove_entry(f, id);
    pthread_mutex_unlock(&f->mu);
    return rc;
}

// fwd_packets, fwd_bytes, rev_packets, rev_bytes, fwd_dropped, rev_dropped of entry `id`
// (bytes: relayed payload, the ChannelData header excluded).
int fwd_counters(struct fwd *f, int32_t id, uint64_t out[6]) {
    int rc = 0;
    pthread_mutex_lock(&f->mu);
    if (id < 0 || (uint32_t)id >= f->capacity || !f->entries[id].used) {
        rc = -ENOENT;
    } else {
        struct entry *e = &f->entries[id];
        out[0] = e->fwd_packets;
        out[1] = e->fwd_bytes;
        out[2] = e->rev_packets;
        out[3] = e->rev_bytes;
        out[4] = e->fwd_dropped;
        out[5] = e->rev_dropped;
    }
    pthread_mutex_unlock(&f->mu);
    return rc;
}

// totals[T_COUNT], then the number of entries
void fwd_totals(struct fwd *f, uint64_t out[T_COUNT + 1]) {
    pthread_mutex_lock(&f->mu);
    memcpy(out, f->totals, sizeof f->totals);
    out[T_COUNT] = f->used;
    pthread_mutex_unlock(&f->mu);
}

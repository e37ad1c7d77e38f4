// SPDX-License-Identifier: MIT OR GPL-2.0
/*
 * turn_offload: TURN ChannelData <-> UDP relayed in the kernel (stunner-dp issue 10).
 *
 * A TC program attached on ingress (tcx link, or classic clsact). For UDP over IPv4 and IPv6:
 *
 *   forward  client -> listener, ChannelData (channel, exact length)  whose fwd entry exists:
 *            strip the 4-byte header, src := relay, dst := peer
 *   reverse  peer -> relay, any UDP payload whose rev entry exists:
 *            prepend the ChannelData header, src := listener, dst := client
 *
 * Everything else returns TC_ACT_UNSPEC untouched and counts why in `pass_reasons`: with tcx
 * that is TCX_NEXT (the next program of the chain sees the packet, then the stack and user
 * space), with classic tc "no verdict" (the next filter runs). TC_ACT_OK would end the chain:
 * with `-u N` workers (one program each) or several engines on one lo, a packet that one
 * program holds no entry for must still reach the program that does. The maps are filled by stunner_dp/offload/engine.py; the layouts below are
 * mirrored there with `struct` format strings.
 *
 * Why the headers stay in place and the payload moves by 4 bytes (instead of
 * bpf_skb_adjust_room): skbs sent by local sockets (lo, veth from a pod) are CHECKSUM_PARTIAL,
 * and csum_start is an absolute offset that adjust_room does not move. After a shrink the UDP
 * header sits 4 bytes past csum_start (the receiver then verifies a checksum that holds only
 * the pseudo-header sum: UdpInCsumErrors); after a grow csum_start points into the UDP header
 * and a NIC would write the checksum into the ChannelData length. Keeping IP/UDP headers where
 * they are and moving the payload (bpf_skb_change_tail + load/store in 512-byte pieces) keeps
 * csum_start valid for every ip_summed state; bpf_l4_csum_replace is PARTIAL-aware (it updates
 * only the pseudo-header part then), so one code path serves all skbs.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>

#define AF_INET 2
#define AF_INET6 10
#define CHECKSUM_PARTIAL 3
#define LOOPBACK_IFINDEX 1

#define CHANNEL_MIN 0x4000
#define CHANNEL_MAX 0x7FFF
#define CD_HLEN 4
#define PIECE 512                    /* bytes moved per load/store pair */
#define MAX_PIECES 18
#define MAX_PAYLOAD (MAX_PIECES * PIECE) /* 9216: larger payloads go to user space */

/* user space resizes these three with bpf_map__set_max_entries before load */
#define DEFAULT_ENTRIES 16384

enum pass_reason {
	PASS_NOT_IP = 0,
	PASS_NOT_UDP,
	PASS_NOT_CHANNELDATA,
	PASS_NO_ENTRY,
	PASS_LENGTH,      /* ChannelData length != UDP payload - 4 (padding, trailing, short) */
	PASS_FRAGMENT,
	PASS_IP_OPTIONS,  /* IPv4 options, IPv6 extension headers */
	PASS_GSO,
	PASS_MTU,
	PASS_TOO_BIG,     /* payload > MAX_PAYLOAD */
	PASS_FIB,         /* no route/neighbour we can redirect to */
	PASS_MALFORMED,
	DROP_ERROR,       /* a helper failed half-way through a rewrite: dropped */
	NR_REASONS,
};

/* all ports and channel numbers in network byte order, IPv4 addresses in ip[0..3] */
struct fwd_key {
	__u8 family;
	__u8 pad;
	__be16 channel;
	__be16 client_port;
	__be16 listener_port;
	__u8 client_ip[16];
};

struct fwd_val {
	__u8 relay_ip[16];
	__u8 peer_ip[16];
	__be16 relay_port;
	__be16 peer_port;
	__u32 id;
};

struct rev_key {
	__u8 family;
	__u8 pad;
	__be16 relay_port;
	__be16 peer_port;
	__u16 pad2;
	__u8 relay_ip[16];
	__u8 peer_ip[16];
};

struct rev_val {
	__u8 listener_ip[16];
	__u8 client_ip[16];
	__be16 listener_port;
	__be16 client_port;
	__be16 channel;
	__u16 pad;
	__u32 id;
};

struct counters {
	__u64 fwd_packets;
	__u64 fwd_bytes;  /* payload bytes sent to the peer (ChannelData header excluded) */
	__u64 rev_packets;
	__u64 rev_bytes;  /* payload bytes received from the peer (header excluded) */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DEFAULT_ENTRIES);
	__type(key, struct fwd_key);
	__type(value, struct fwd_val);
} fwd_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DEFAULT_ENTRIES);
	__type(key, struct rev_key);
	__type(value, struct rev_val);
} rev_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DEFAULT_ENTRIES);
	__type(key, __u32);
	__type(value, struct counters);
} entry_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NR_REASONS);
	__type(key, __u32);
	__type(value, __u64);
} pass_reasons SEC(".maps");

struct scratch {
	__u8 buf[PIECE];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch_map SEC(".maps");

/* ip_summed of the kernel's sk_buff: a CO-RE relocated bitfield read (kernel >= 6.3) */
extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;

struct sk_buff___sdp {
	__u8 ip_summed : 2;
} __attribute__((preserve_access_index));

static __always_inline int skb_is_partial(struct __sk_buff *skb)
{
	struct sk_buff___sdp *k = bpf_cast_to_kern_ctx(skb);

	return BPF_CORE_READ_BITFIELD(k, ip_summed) == CHECKSUM_PARTIAL;
}

static __always_inline int pass(__u32 reason)
{
	__u64 *n = bpf_map_lookup_elem(&pass_reasons, &reason);

	if (n)
		*n += 1;
	return reason == DROP_ERROR ? TC_ACT_SHOT : TC_ACT_UNSPEC; /* TCX_NEXT */
}

/* the parsed outer headers */
struct pkt {
	__u32 l4;        /* offset of the UDP header */
	__u32 ip_len;    /* IPv4 tot_len or IPv6 payload_len as parsed */
	__u16 udp_len;
	__u8 family;
	__u8 pad;
	__be16 sport;
	__be16 dport;
	__be16 check;
	__u16 pad2;
	__u32 word0;     /* IPv4: first header word (version, tos, tot_len) */
	__u8 saddr[16];
	__u8 daddr[16];
};

/* the rewrite one direction asks for */
struct rewrite {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__be32 cd;       /* the ChannelData header removed (fwd) or added (rev) */
	__u32 data_len;  /* relayed payload bytes */
	__u32 out_ifindex;
	__u8 smac[ETH_ALEN];
	__u8 dmac[ETH_ALEN];
	__s32 delta;     /* -4 fwd, +4 rev */
	__u8 redirect;   /* 0: TC_ACT_OK (lo); 1: bpf_redirect with MACs; 2: bpf_redirect_neigh */
};

static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	__u32 len = skb->len;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)))
			return PASS_MALFORMED;
		if (ip.version != 4)
			return PASS_MALFORMED;
		if (ip.protocol != IPPROTO_UDP)
			return PASS_NOT_UDP;
		if (ip.ihl != 5)
			return ip.ihl > 5 ? PASS_IP_OPTIONS : PASS_MALFORMED;
		if (ip.frag_off & bpf_htons(0x3fff))
			return PASS_FRAGMENT;
		p->family = AF_INET;
		p->ip_len = bpf_ntohs(ip.tot_len);
		p->l4 = ETH_HLEN + sizeof(ip);
		if (p->ip_len < sizeof(ip) + sizeof(struct udphdr) || len != ETH_HLEN + p->ip_len)
			return PASS_MALFORMED;
		__builtin_memcpy(&p->word0, &ip, 4);
		__builtin_memset(p->saddr, 0, 32);
		__builtin_memcpy(p->saddr, &ip.saddr, 4);
		__builtin_memcpy(p->daddr, &ip.daddr, 4);
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)))
			return PASS_MALFORMED;
		if (ip6.version != 6)
			return PASS_MALFORMED;
		if (ip6.nexthdr != IPPROTO_UDP) {
			switch (ip6.nexthdr) {
			case 44:
				return PASS_FRAGMENT;
			case 0: case 43: case 50: case 51: case 60: case 135: case 139: case 140:
			case 253: case 254:
				return PASS_IP_OPTIONS;
			default:
				return PASS_NOT_UDP;
			}
		}
		p->family = AF_INET6;
		p->ip_len = bpf_ntohs(ip6.payload_len);
		p->l4 = ETH_HLEN + sizeof(ip6);
		if (p->ip_len < sizeof(struct udphdr) || len != ETH_HLEN + sizeof(ip6) + p->ip_len)
			return PASS_MALFORMED;
		p->word0 = 0;
		__builtin_memcpy(p->saddr, &ip6.saddr, 16);
		__builtin_memcpy(p->daddr, &ip6.daddr, 16);
	} else {
		return PASS_NOT_IP;
	}

	struct udphdr udp;

	if (bpf_skb_load_bytes(skb, p->l4, &udp, sizeof(udp)))
		return PASS_MALFORMED;
	p->udp_len = bpf_ntohs(udp.len);
	if (p->udp_len != (p->family == AF_INET ? p->ip_len - sizeof(struct iphdr) : p->ip_len))
		return PASS_MALFORMED;
	p->sport = udp.source;
	p->dport = udp.dest;
	p->check = udp.check;
	if (p->family == AF_INET6 && udp.check == 0)
		return PASS_MALFORMED; /* RFC 8200: zero UDP checksums are invalid over IPv6 */
	return -1;
}

/* [base+4, base+4+n) -> [base, base+n), ascending (the forward direction shrinks) */
static __noinline int move_down(struct __sk_buff *skb, __u32 base, __u32 n)
{
	__u32 zero = 0, off = 0;
	struct scratch *s = bpf_map_lookup_elem(&scratch_map, &zero);

	if (!s)
		return -1;
	for (int i = 0; i < MAX_PIECES; i++) {
		if (n - off < PIECE)
			break;
		if (bpf_skb_load_bytes(skb, base + CD_HLEN + off, s->buf, PIECE) ||
		    bpf_skb_store_bytes(skb, base + off, s->buf, PIECE, 0))
			return -1;
		off += PIECE;
	}
	__u32 rem = n - off;
#define DOWN(sz)                                                                        \
	if (rem & (sz)) {                                                               \
		if (bpf_skb_load_bytes(skb, base + CD_HLEN + off, s->buf, (sz)) ||      \
		    bpf_skb_store_bytes(skb, base + off, s->buf, (sz), 0))              \
			return -1;                                                      \
		off += (sz);                                                            \
	}
	DOWN(256) DOWN(128) DOWN(64) DOWN(32) DOWN(16) DOWN(8) DOWN(4) DOWN(2) DOWN(1)
#undef DOWN
	return 0;
}

/* [base, base+n) -> [base+4, base+4+n), descending (the reverse direction grows) */
static __noinline int move_up(struct __sk_buff *skb, __u32 base, __u32 n)
{
	__u32 zero = 0;
	struct scratch *s = bpf_map_lookup_elem(&scratch_map, &zero);
	__u32 full = n / PIECE, rem = n % PIECE;

	if (!s)
		return -1;
	for (int i = 0; i < MAX_PIECES; i++) {
		if (i >= full)
			break;
		__u32 o = rem + (full - 1 - i) * PIECE;

		if (bpf_skb_load_bytes(skb, base + o, s->buf, PIECE) ||
		    bpf_skb_store_bytes(skb, base + CD_HLEN + o, s->buf, PIECE, 0))
			return -1;
	}
	__u32 top = rem;
#define UP(sz)                                                                          \
	if (rem & (sz)) {                                                               \
		top -= (sz);                                                            \
		if (bpf_skb_load_bytes(skb, base + top, s->buf, (sz)) ||                \
		    bpf_skb_store_bytes(skb, base + CD_HLEN + top, s->buf, (sz), 0))    \
			return -1;                                                      \
	}
	UP(256) UP(128) UP(64) UP(32) UP(16) UP(8) UP(4) UP(2) UP(1)
#undef UP
	return 0;
}

/*
 * Where the rewritten packet goes. lo: TC_ACT_OK (the stack delivers it locally; a redirect
 * to lo's ingress is dropped as martian). Elsewhere: a FIB lookup for the new addresses and a
 * redirect to the egress device (bpf_redirect with the FIB's MACs, or bpf_redirect_neigh when
 * the neighbour is not resolved yet).
 */
static __always_inline int route(struct __sk_buff *skb, struct pkt *p, struct rewrite *rw)
{
	if (skb->ifindex == LOOPBACK_IFINDEX) {
		rw->out_ifindex = LOOPBACK_IFINDEX;
		rw->redirect = 0;
		return 0;
	}
	struct bpf_fib_lookup fib = {};

	fib.family = p->family;
	fib.l4_protocol = IPPROTO_UDP;
	fib.sport = rw->sport;
	fib.dport = rw->dport;
	fib.ifindex = skb->ifindex;
	if (p->family == AF_INET) {
		__builtin_memcpy(&fib.ipv4_src, rw->saddr, 4);
		__builtin_memcpy(&fib.ipv4_dst, rw->daddr, 4);
	} else {
		__builtin_memcpy(fib.ipv6_src, rw->saddr, 16);
		__builtin_memcpy(fib.ipv6_dst, rw->daddr, 16);
	}
	long rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);

	if (rc == BPF_FIB_LKUP_RET_FWD_DISABLED) {
		/* forwarding is off on the ingress device: look up as if sending from it */
		fib.ifindex = skb->ifindex;
		rc = bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_OUTPUT);
	}
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		rw->redirect = 1;
		__builtin_memcpy(rw->smac, fib.smac, ETH_ALEN);
		__builtin_memcpy(rw->dmac, fib.dmac, ETH_ALEN);
	} else if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		rw->redirect = 2;
	} else {
		return -1;
	}
	rw->out_ifindex = fib.ifindex;
	return 0;
}

static __always_inline long csum_addrs(struct pkt *p, struct rewrite *rw, __u32 old_len,
				       __u32 new_len)
{
	/* pseudo header: saddr, daddr, length (as a 32-bit word; any 16-bit position sums alike) */
	__u32 from[9], to[9];

	if (p->family == AF_INET) {
		__builtin_memcpy(&from[0], p->saddr, 4);
		__builtin_memcpy(&from[1], p->daddr, 4);
		from[2] = bpf_htonl(old_len);
		__builtin_memcpy(&to[0], rw->saddr, 4);
		__builtin_memcpy(&to[1], rw->daddr, 4);
		to[2] = bpf_htonl(new_len);
		return bpf_csum_diff(from, 12, to, 12, 0);
	}
	__builtin_memcpy(&from[0], p->saddr, 16);
	__builtin_memcpy(&from[4], p->daddr, 16);
	from[8] = bpf_htonl(old_len);
	__builtin_memcpy(&to[0], rw->saddr, 16);
	__builtin_memcpy(&to[4], rw->daddr, 16);
	to[8] = bpf_htonl(new_len);
	return bpf_csum_diff(from, 36, to, 36, 0);
}

static __always_inline int rewrite(struct __sk_buff *skb, struct pkt *p, struct rewrite *rw)
{
	__u32 l4 = p->l4, l3 = ETH_HLEN;
	__u32 old_udp = p->udp_len, new_udp = p->udp_len + rw->delta;
	int partial = skb_is_partial(skb);
	/* IPv4 checksum 0 stays 0; a result of 0 is sent as 0xffff */
	__u64 mm = partial ? 0 : BPF_F_MARK_MANGLED_0;
	long diff;

	/* 1. the payload moves, the length changes; headers stay where they are */
	if (rw->delta < 0) {
		if (move_down(skb, l4 + sizeof(struct udphdr), rw->data_len))
			return -1;
		if (bpf_skb_change_tail(skb, skb->len - CD_HLEN, 0))
			return -1;
	} else {
		if (bpf_skb_change_tail(skb, skb->len + CD_HLEN, 0))
			return -1;
		if (move_up(skb, l4 + sizeof(struct udphdr), rw->data_len))
			return -1;
		if (bpf_skb_store_bytes(skb, l4 + sizeof(struct udphdr), &rw->cd, CD_HLEN, 0))
			return -1;
	}

	/* 2. the UDP checksum: pseudo header, then ports, length and the ChannelData header */
	diff = csum_addrs(p, rw, old_udp, new_udp);
	if (diff < 0 || bpf_l4_csum_replace(skb, l4 + 6, 0, diff, BPF_F_PSEUDO_HDR | mm))
		return -1;
	{
		__u32 from[3], to[3];

		from[0] = ((__u32)p->dport << 16) | p->sport;   /* (sport, dport) as on the wire */
		from[1] = bpf_htonl(old_udp << 16);              /* (len, check := 0) */
		to[0] = ((__u32)rw->dport << 16) | rw->sport;
		to[1] = bpf_htonl(new_udp << 16);
		if (rw->delta < 0) {
			from[2] = rw->cd;
			diff = bpf_csum_diff(from, 12, to, 8, 0);
		} else {
			to[2] = rw->cd;
			diff = bpf_csum_diff(from, 8, to, 12, 0);
		}
		if (diff < 0 || bpf_l4_csum_replace(skb, l4 + 6, 0, diff, mm))
			return -1;
	}

	/* 3. the headers */
	struct udphdr udp = { .source = rw->sport, .dest = rw->dport, .len = bpf_htons(new_udp) };

	if (bpf_skb_store_bytes(skb, l4, &udp, 6, BPF_F_INVALIDATE_HASH))
		return -1;
	if (p->family == AF_INET) {
		__u32 w0 = p->word0, nw0;
		__u16 tot = bpf_htons(p->ip_len + rw->delta);
		__u32 from[3], to[3];

		nw0 = w0;
		__builtin_memcpy((__u8 *)&nw0 + 2, &tot, 2);
		from[0] = w0;
		__builtin_memcpy(&from[1], p->saddr, 4);
		__builtin_memcpy(&from[2], p->daddr, 4);
		to[0] = nw0;
		__builtin_memcpy(&to[1], rw->saddr, 4);
		__builtin_memcpy(&to[2], rw->daddr, 4);
		diff = bpf_csum_diff(from, 12, to, 12, 0);
		if (diff < 0 || bpf_l3_csum_replace(skb, l3 + 10, 0, diff, 0))
			return -1;
		if (bpf_skb_store_bytes(skb, l3 + 2, &tot, 2, 0) ||
		    bpf_skb_store_bytes(skb, l3 + 12, &to[1], 8, 0))
			return -1;
	} else {
		__u16 plen = bpf_htons(p->ip_len + rw->delta);

		if (bpf_skb_store_bytes(skb, l3 + 4, &plen, 2, 0) ||
		    bpf_skb_store_bytes(skb, l3 + 8, rw->saddr, 16, 0) ||
		    bpf_skb_store_bytes(skb, l3 + 24, rw->daddr, 16, 0))
			return -1;
	}
	if (!partial)
		bpf_csum_level(skb, BPF_CSUM_LEVEL_RESET);
	return 0;
}

static __always_inline int deliver(struct __sk_buff *skb, struct rewrite *rw)
{
	if (rw->redirect == 0)
		return TC_ACT_OK;
	if (rw->redirect == 2)
		return bpf_redirect_neigh(rw->out_ifindex, NULL, 0, 0);
	if (bpf_skb_store_bytes(skb, 0, rw->dmac, ETH_ALEN, 0) ||
	    bpf_skb_store_bytes(skb, ETH_ALEN, rw->smac, ETH_ALEN, 0))
		return pass(DROP_ERROR);
	return bpf_redirect(rw->out_ifindex, 0);
}

static __always_inline int check_mtu(struct __sk_buff *skb, struct rewrite *rw)
{
	__u32 mtu_len = 0;

	return bpf_check_mtu(skb, rw->out_ifindex, &mtu_len, rw->delta, 0) ? -1 : 0;
}

static __always_inline int reverse(struct __sk_buff *skb, struct pkt *p, struct rev_val *v)
{
	struct rewrite rw = {};
	struct counters *c;

	rw.data_len = p->udp_len - sizeof(struct udphdr);
	rw.delta = CD_HLEN;
	rw.sport = v->listener_port;
	rw.dport = v->client_port;
	__builtin_memcpy(rw.saddr, v->listener_ip, 16);
	__builtin_memcpy(rw.daddr, v->client_ip, 16);
	rw.cd = ((__u32)bpf_htons(rw.data_len) << 16) | v->channel;
	if (rw.data_len > MAX_PAYLOAD)
		return pass(PASS_TOO_BIG);
	if (route(skb, p, &rw))
		return pass(PASS_FIB);
	if (check_mtu(skb, &rw))
		return pass(PASS_MTU);
	if (rewrite(skb, p, &rw))
		return pass(DROP_ERROR);
	c = bpf_map_lookup_elem(&entry_stats, &v->id);
	if (c) {
		c->rev_packets += 1;
		c->rev_bytes += rw.data_len;
	}
	return deliver(skb, &rw);
}

static __always_inline int forward(struct __sk_buff *skb, struct pkt *p)
{
	struct fwd_key k = {};
	struct fwd_val *v;
	struct rewrite rw = {};
	struct counters *c;
	__be16 hdr[2];

	if (p->udp_len < sizeof(struct udphdr) + CD_HLEN)
		return pass(PASS_NOT_CHANNELDATA);
	if (bpf_skb_load_bytes(skb, p->l4 + sizeof(struct udphdr), hdr, CD_HLEN))
		return pass(PASS_MALFORMED);
	__u16 ch = bpf_ntohs(hdr[0]);

	if (ch < CHANNEL_MIN || ch > CHANNEL_MAX)
		return pass(PASS_NOT_CHANNELDATA);
	rw.data_len = p->udp_len - sizeof(struct udphdr) - CD_HLEN;
	if (bpf_ntohs(hdr[1]) != rw.data_len)
		return pass(PASS_LENGTH);

	k.family = p->family;
	k.channel = hdr[0];
	k.client_port = p->sport;
	k.listener_port = p->dport;
	__builtin_memcpy(k.client_ip, p->saddr, 16);
	v = bpf_map_lookup_elem(&fwd_map, &k);
	if (!v)
		return pass(PASS_NO_ENTRY);
	if (rw.data_len > MAX_PAYLOAD)
		return pass(PASS_TOO_BIG);

	rw.delta = -CD_HLEN;
	rw.sport = v->relay_port;
	rw.dport = v->peer_port;
	__builtin_memcpy(rw.saddr, v->relay_ip, 16);
	__builtin_memcpy(rw.daddr, v->peer_ip, 16);
	__builtin_memcpy(&rw.cd, hdr, 4);
	__u32 id = v->id;

	if (route(skb, p, &rw))
		return pass(PASS_FIB);
	if (check_mtu(skb, &rw))
		return pass(PASS_MTU);
	if (rewrite(skb, p, &rw))
		return pass(DROP_ERROR);
	c = bpf_map_lookup_elem(&entry_stats, &id);
	if (c) {
		c->fwd_packets += 1;
		c->fwd_bytes += rw.data_len;
	}
	return deliver(skb, &rw);
}

SEC("tc")
int turn_offload(struct __sk_buff *skb)
{
	struct pkt p = {};
	struct rev_key rk = {};
	struct rev_val *rv;
	int reason;

	if (skb->gso_size)
		return pass(PASS_GSO);
	reason = parse(skb, &p);
	if (reason >= 0)
		return pass(reason);

	rk.family = p.family;
	rk.relay_port = p.dport;
	rk.peer_port = p.sport;
	__builtin_memcpy(rk.relay_ip, p.daddr, 16);
	__builtin_memcpy(rk.peer_ip, p.saddr, 16);
	rv = bpf_map_lookup_elem(&rev_map, &rk);
	if (rv)
		return reverse(skb, &p, rv);
	return forward(skb, &p);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";

// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
// fastedge's in-kernel split: when every output of the pipeline's one balance or duplicate
// stage is an interface, frames never reach userspace. The pre-filter runs first (prefilter.h).
// Balance: the frame's flow is hashed exactly as fastedge_wire::packet::flow_hash does
// (symmetric; fragments on the address pair; SipHash-1-3 under the configured key) and
// redirected through a DEVMAP to output
// way_of(hash, N). Duplicate: one broadcast redirect to every output. Frames this program does
// not parse the way userspace would (tunnels, IPv6 extension headers, anything malformed) go to
// the AF_XDP socket of their queue instead, and the userspace engine sends them to the same
// output, so the split is the same either way.
#include "prefilter.h"

// Keep in sync with `FAST_COUNTER_SLOTS` in lib.rs.
enum fast_counter {
	FAST_SEEN = 0,       // frames the program ran on
	FAST_IN_KERNEL = 1,  // frames redirected to an output in the kernel
	FAST_TO_USER = 2,    // frames handed to userspace (AF_XDP) for a full parse
	FAST_PASSED = 3,     // frames for userspace with no socket on their queue (XDP_PASS)
	FAST_DROPPED = 4,    // frames a `drop` rule dropped
	FAST_BYPASSED = 5,   // frames a `bypass` rule handed to the kernel
	FAST_NON_IP = 6,     // frames that are not IP (to the non-IP output)
	FAST_COUNTERS = 7,
};

// Keep in sync with `FastConfig` in lib.rs.
struct fast_config {
	__u32 outputs;   // number of outputs (DEVMAP entries 0..outputs-1)
	__u32 non_ip;    // output for frames that are not IP
	__u32 duplicate; // 1: every frame to every output
	__u32 hash_mode; // 2, 3 or 5 (tuple)
	__u64 k0, k1;    // the flow hash's SipHash key
};

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u32);
} outputs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fast_config);
} config SEC(".maps");

FASTEDGE_COUNTERS_MAP(FAST_COUNTERS)

// Frames sent per output in the kernel.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u64);
} output_frames SEC(".maps");

// The last flow hash this CPU computed (for the test comparing it with userspace's).
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} last_hash SEC(".maps");


static __always_inline void count_output(__u32 index)
{
	__u64 *value = bpf_map_lookup_elem(&output_frames, &index);

	if (value)
		*value += 1;
}

enum parsed {
	PARSED_IP = 0,
	PARSED_NOT_IP = 1,
	PARSED_TO_USER = 2, // userspace must parse it (tunnel, extension header, malformed)
};

struct fast_key {
	__u8 src[16];
	__u8 dst[16];
	__u8 protocol;
	__u8 fragment;
	__u16 sport, dport;
};

static __always_inline __u64 load_be64(const __u8 *p)
{
	__u64 v = 0;
	int i;

#pragma unroll
	for (i = 0; i < 8; i++)
		v = (v << 8) | p[i];
	return v;
}

// fastedge_wire::packet::parse for the frames it handles here.
static __always_inline int parse_fast(void *data, void *end, struct fast_key *key)
{
	struct ethhdr *eth = data;
	__u16 proto;
	__u8 *l4 = 0;
	__u8 *l4_end = end;
	int i, first = 1;

	if ((void *)(eth + 1) > end)
		return PARSED_TO_USER;
	proto = eth->h_proto;
	data = eth + 1;
#pragma unroll
	for (i = 0; i < 2; i++) {
		if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD) ||
		    proto == bpf_htons(0x9100)) {
			__u16 *tag = data;

			if ((void *)(tag + 2) > end)
				return PARSED_TO_USER;
			proto = tag[1];
			data = tag + 2;
		}
	}
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD) ||
	    proto == bpf_htons(0x9100))
		return PARSED_TO_USER; // more tags than handled here
	key->sport = key->dport = 0;
	key->fragment = 0;
	if (proto == bpf_htons(ETH_P_IP)) {
		__u8 *ip = data;
		__u32 ihl, total;
		__u16 frag;

		if ((void *)(ip + 20) > end || (ip[0] >> 4) != 4)
			return PARSED_TO_USER;
		ihl = (ip[0] & 0x0f) * 4;
		total = ((__u32)ip[2] << 8) | ip[3];
		if (ihl < 20 || total < ihl)
			return PARSED_TO_USER;
		if ((void *)(ip + ihl) > end)
			return PARSED_TO_USER;
		__builtin_memset(key->src, 0, 10);
		__builtin_memset(key->dst, 0, 10);
		key->src[10] = key->src[11] = 0xff;
		key->dst[10] = key->dst[11] = 0xff;
		__builtin_memcpy(&key->src[12], ip + 12, 4);
		__builtin_memcpy(&key->dst[12], ip + 16, 4);
		key->protocol = ip[9];
		frag = ((__u16)ip[6] << 8) | ip[7];
		key->fragment = (frag & 0x2000) || (frag & 0x1fff);
		first = (frag & 0x1fff) == 0;
		l4 = ip + ihl;
		// Ethernet may pad: the IP length bounds the payload.
		if ((void *)(ip + total) < end)
			l4_end = ip + total;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		__u8 *ip = data;
		__u8 next;

		if ((void *)(ip + 40) > end || (ip[0] >> 4) != 6)
			return PARSED_TO_USER;
		next = ip[6];
		// Extension headers (and jumbograms) are walked by userspace.
		if (next == 0 || next == 43 || next == 44 || next == 60 || next == 135 ||
		    next == 139 || next == 140 || next == 51 || (ip[4] == 0 && ip[5] == 0))
			return PARSED_TO_USER;
		__builtin_memcpy(key->src, ip + 8, 16);
		__builtin_memcpy(key->dst, ip + 24, 16);
		key->protocol = next;
		l4 = ip + 40;
		if ((void *)(ip + 40 + (((__u32)ip[4] << 8) | ip[5])) < end)
			l4_end = ip + 40 + (((__u32)ip[4] << 8) | ip[5]);
	} else {
		return PARSED_NOT_IP;
	}
	if (!first)
		return PARSED_IP;
	// Tunnels are opened by userspace (when it decapsulates, it hashes the inner flow).
	if (!key->fragment &&
	    (key->protocol == IPPROTO_IPIP || key->protocol == IPPROTO_IPV6 ||
	     key->protocol == IPPROTO_GRE))
		return PARSED_TO_USER;
	if (key->protocol == IPPROTO_TCP || key->protocol == IPPROTO_UDP) {
		if ((void *)(l4 + 4) > (void *)l4_end || (void *)(l4 + 4) > end)
			return PARSED_TO_USER;
		key->sport = ((__u16)l4[0] << 8) | l4[1];
		key->dport = ((__u16)l4[2] << 8) | l4[3];
		if (key->protocol == IPPROTO_UDP && key->dport == 4789 && !key->fragment)
			return PARSED_TO_USER; // VXLAN
	}
	return PARSED_IP;
}

static __always_inline __u64 rotl(__u64 x, int r)
{
	return (x << r) | (x >> (64 - r));
}

struct sip {
	__u64 v0, v1, v2, v3;
};

static __always_inline void sip_round(struct sip *s)
{
	s->v0 += s->v1;
	s->v1 = rotl(s->v1, 13);
	s->v1 ^= s->v0;
	s->v0 = rotl(s->v0, 32);
	s->v2 += s->v3;
	s->v3 = rotl(s->v3, 16);
	s->v3 ^= s->v2;
	s->v0 += s->v3;
	s->v3 = rotl(s->v3, 21);
	s->v3 ^= s->v0;
	s->v2 += s->v1;
	s->v1 = rotl(s->v1, 17);
	s->v1 ^= s->v2;
	s->v2 = rotl(s->v2, 32);
}

// One message word, one compression round (SipHash-1-3).
static __always_inline void sip_word(struct sip *s, __u64 m)
{
	s->v3 ^= m;
	sip_round(s);
	s->v0 ^= m;
}

// fastedge_wire::packet::flow_hash: the endpoints in order, then SipHash-1-3 under the key
// of two 64-bit words when both addresses are IPv4 (IPv4-mapped), of five otherwise.
static __always_inline __u64 flow_hash(struct fast_key *key, struct fast_config *cfg)
{
	__u32 mode = cfg->hash_mode;
	__u16 sport = 0, dport = 0;
	__u8 protocol = key->protocol;
	__u64 a0, a1, b0, b1, last, tail;
	struct sip s;
	int a_low;

	if (key->fragment)
		mode = 2;
	if (mode == 5) {
		sport = key->sport;
		dport = key->dport;
	}
	if (mode == 2)
		protocol = 0;
	a0 = load_be64(key->src);
	a1 = load_be64(key->src + 8);
	b0 = load_be64(key->dst);
	b1 = load_be64(key->dst + 8);
	// (address, port) pairs in order: the smaller first.
	a_low = a0 < b0 || (a0 == b0 && (a1 < b1 || (a1 == b1 && sport <= dport)));
	s.v0 = cfg->k0 ^ 0x736f6d6570736575ULL;
	s.v1 = cfg->k1 ^ 0x646f72616e646f6dULL;
	s.v2 = cfg->k0 ^ 0x6c7967656e657261ULL;
	s.v3 = cfg->k1 ^ 0x7465646279746573ULL;
	if (a0 == 0 && b0 == 0 && (a1 >> 32) == 0xffff && (b1 >> 32) == 0xffff) {
		// IPv4: the addresses are the low 32 bits; a1 vs b1 orders like the addresses.
		__u64 a4 = a1 & 0xffffffffULL, b4 = b1 & 0xffffffffULL;

		if (a_low) {
			sip_word(&s, (a4 << 32) | b4);
			last = ((__u64)protocol << 32) | ((__u64)sport << 16) | dport;
		} else {
			sip_word(&s, (b4 << 32) | a4);
			last = ((__u64)protocol << 32) | ((__u64)dport << 16) | sport;
		}
		tail = (__u64)16 << 56;
	} else {
		if (a_low) {
			sip_word(&s, a0);
			sip_word(&s, a1);
			sip_word(&s, b0);
			sip_word(&s, b1);
			last = ((__u64)protocol << 32) | ((__u64)sport << 16) | dport;
		} else {
			sip_word(&s, b0);
			sip_word(&s, b1);
			sip_word(&s, a0);
			sip_word(&s, a1);
			last = ((__u64)protocol << 32) | ((__u64)dport << 16) | sport;
		}
		tail = (__u64)40 << 56;
	}
	sip_word(&s, last);
	sip_word(&s, tail);
	s.v2 ^= 0xff;
	sip_round(&s);
	sip_round(&s);
	sip_round(&s);
	return s.v0 ^ s.v1 ^ s.v2 ^ s.v3;
}

// fastedge_wire::packet::way_of: the high 64 bits of hash × ways, without 128-bit arithmetic.
static __always_inline __u32 way_of(__u64 hash, __u32 ways)
{
	__u64 hi = hash >> 32, lo = hash & 0xffffffffULL;

	return (__u32)((hi * ways + ((lo * ways) >> 32)) >> 32);
}

static __always_inline int to_user(struct xdp_md *ctx)
{
	long action = bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);

	bump(action == XDP_REDIRECT ? FAST_TO_USER : FAST_PASSED);
	return action;
}

static __always_inline int to_output(__u32 index)
{
	long action = bpf_redirect_map(&outputs, index, 0);

	if (action == XDP_REDIRECT) {
		bump(FAST_IN_KERNEL);
		count_output(index);
	}
	return action;
}

// "frags": the program reads headers only, which lie in the first buffer of a multi-buffer
// (jumbo) frame; so declared, it attaches to interfaces whose MTU is above one page.
SEC("xdp.frags")
int split_fast(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct fast_config *cfg;
	struct fast_key key;
	__u32 zero = 0, index;
	__u64 hash, *last;
	int parsed;

	bump(FAST_SEEN);
	switch (prefilter(ctx)) {
	case ACTION_DROP:
		bump(FAST_DROPPED);
		return XDP_DROP;
	case ACTION_BYPASS:
		bump(FAST_BYPASSED);
		return XDP_PASS;
	default:
		break;
	}
	cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg || cfg->outputs == 0)
		return to_user(ctx);
	if (cfg->duplicate) {
		long action;
		__u32 i;

		// A multi-buffer (jumbo) frame: the kernel's broadcast clones only a frame's first
		// buffer, so such frames are duplicated in userspace.
		if (bpf_xdp_get_buff_len(ctx) > (__u64)(end - data))
			return to_user(ctx);
		action = bpf_redirect_map(&outputs, 0, BPF_F_BROADCAST);

		if (action == XDP_REDIRECT) {
			bump(FAST_IN_KERNEL);
			for (i = 0; i < 256; i++) {
				if (i >= cfg->outputs)
					break;
				count_output(i);
			}
		}
		return action;
	}
	parsed = parse_fast(data, end, &key);
	if (parsed == PARSED_TO_USER)
		return to_user(ctx);
	if (parsed == PARSED_NOT_IP) {
		bump(FAST_NON_IP);
		return to_output(cfg->non_ip);
	}
	hash = flow_hash(&key, cfg);
	last = bpf_map_lookup_elem(&last_hash, &zero);
	if (last)
		*last = hash;
	index = way_of(hash, cfg->outputs);
	return to_output(index);
}

// For the receiving end of a veth output: a frame redirected into a veth is only delivered
// when the peer has an XDP program; this one lets everything through to the stack (and so to
// the applications capturing there).
// "frags": the program reads headers only, which lie in the first buffer of a multi-buffer
// (jumbo) frame; so declared, it attaches to interfaces whose MTU is above one page.
SEC("xdp.frags")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

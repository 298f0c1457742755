// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
// The pre-filter shared by fastedge's XDP programs: rules keyed by a source or a destination
// prefix in two LPM tries (IPv4 as IPv4-mapped IPv6, so one trie holds both families). For a
// frame, the rules of every matching source prefix are tried, the most specific prefix first,
// then those of every matching destination prefix the same way; the first rule whose protocol,
// port ranges, second prefix and expiry match decides: drop, bypass (to the kernel, not the
// ways) or pass. So a global rule (::/0) still applies to an address that also has more
// specific rules. Each prefix holds a short chain of rules (at most MAX_CHAIN). Cost per
// frame: a trie lookup per matching prefix (usually one or two) and their chains, whatever the
// number of rules. The maps are replaced at load time by shared ones sized for the rule
// capacity; these small defaults cost nothing when no rules are used.
#ifndef FASTEDGE_PREFILTER_H
#define FASTEDGE_PREFILTER_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

enum fastedge_action {
	ACTION_PASS = 0,
	ACTION_DROP = 1,
	ACTION_BYPASS = 2,
};

// A program's per-CPU event counters: the `counters` map with `slots` entries (the program's
// own enum) and `bump(slot)`, which adds one to a slot on this CPU.
#define FASTEDGE_COUNTERS_MAP(slots)                                    \
	struct {                                                        \
		__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);                \
		__uint(max_entries, slots);                             \
		__type(key, __u32);                                     \
		__type(value, __u64);                                   \
	} counters SEC(".maps");                                        \
	static __always_inline void bump(__u32 slot)                    \
	{                                                               \
		__u64 *value = bpf_map_lookup_elem(&counters, &slot);   \
		if (value)                                              \
			*value += 1;                                    \
	}

#define MAX_CHAIN 8
#define NO_RULE 0xffffffffu
// As fastedge_wire::packet (MAX_VLAN_TAGS).
#define MAX_VLAN_TAGS 4
// Every prefix length 0..128 can match an address.
#define MAX_PREFIX_LEVELS 129

struct prefix_key {
	__u32 prefixlen; // 0..128; IPv4 /n is 96 + n
	__u8 addr[16];
};

// Keep in sync with `RawRule` in rules.rs.
struct rule {
	__u32 next;      // next rule of the same prefix, or NO_RULE
	__u8 action;
	__u8 protocol;   // 0: any
	__u8 other_len;  // length of the other-direction prefix (0: any)
	__u8 own_len;    // length of the prefix this rule hangs on (the trie key's)
	__u16 sport_lo, sport_hi, dport_lo, dport_hi;
	__u8 other[16];  // the other-direction prefix (destination for a source rule, and back)
	__u64 expires_ns; // CLOCK_MONOTONIC; 0: never
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct prefix_key);
	__type(value, __u32);
} src_prefixes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct prefix_key);
	__type(value, __u32);
} dst_prefixes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct rule);
} rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} hits SEC(".maps");

struct flow {
	__u8 src[16];
	__u8 dst[16];
	__u8 protocol;
	__u16 sport, dport;
};

// Fills `flow` from an Ethernet frame (up to MAX_VLAN_TAGS tags of 0x8100, 0x88a8 or 0x9100,
// as userspace reads them; IPv4 or IPv6 without extension headers walked); returns 0 when the
// frame is not IP.
static __always_inline int parse(void *data, void *end, struct flow *flow)
{
	struct ethhdr *eth = data;
	__u16 proto;
	__u8 *l4 = 0;
	int i;

	if ((void *)(eth + 1) > end)
		return 0;
	proto = eth->h_proto;
	data = eth + 1;
#pragma unroll
	for (i = 0; i < MAX_VLAN_TAGS; i++) {
		if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD) ||
		    proto == bpf_htons(0x9100)) {
			__u16 *tag = data;

			if ((void *)(tag + 2) > end)
				return 0;
			proto = tag[1];
			data = tag + 2;
		}
	}
	if (proto == bpf_htons(ETH_P_IP)) {
		__u8 *ip = data;
		__u32 ihl;

		if ((void *)(ip + 20) > end)
			return 0;
		ihl = (ip[0] & 0x0f) * 4;
		__builtin_memset(flow->src, 0, 10);
		__builtin_memset(flow->dst, 0, 10);
		flow->src[10] = flow->src[11] = 0xff;
		flow->dst[10] = flow->dst[11] = 0xff;
		__builtin_memcpy(&flow->src[12], ip + 12, 4);
		__builtin_memcpy(&flow->dst[12], ip + 16, 4);
		flow->protocol = ip[9];
		// Ports only in a first fragment (offset 0).
		if (ihl >= 20 && ihl <= 60 && (((ip[6] & 0x1f) | ip[7]) == 0))
			l4 = ip + ihl;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		__u8 *ip = data;

		if ((void *)(ip + 40) > end)
			return 0;
		__builtin_memcpy(flow->src, ip + 8, 16);
		__builtin_memcpy(flow->dst, ip + 24, 16);
		flow->protocol = ip[6];
		l4 = ip + 40;
	} else {
		return 0;
	}
	flow->sport = flow->dport = 0;
	if (l4 && (flow->protocol == IPPROTO_TCP || flow->protocol == IPPROTO_UDP) &&
	    (void *)(l4 + 4) <= end) {
		flow->sport = ((__u16)l4[0] << 8) | l4[1];
		flow->dport = ((__u16)l4[2] << 8) | l4[3];
	}
	return 1;
}

// True when the first `len` bits of `a` and `prefix` agree.
static __always_inline int in_prefix(const __u8 *a, const __u8 *prefix, __u32 len)
{
	int i;

#pragma unroll
	for (i = 0; i < 16; i++) {
		__u32 bits = len > (__u32)i * 8 ? len - (__u32)i * 8 : 0;
		__u8 mask;

		if (bits == 0)
			break;
		mask = bits >= 8 ? 0xff : (__u8)(0xff << (8 - bits));
		if ((a[i] ^ prefix[i]) & mask)
			return 0;
	}
	return 1;
}

// The action of the first matching rule of the chain starting at `id`, or -1.
static __always_inline int walk(__u32 id, struct flow *flow, int by_source, __u64 now)
{
	int i;

	for (i = 0; i < MAX_CHAIN; i++) {
		struct rule *rule;
		__u64 *hit;

		if (id == NO_RULE)
			return -1;
		rule = bpf_map_lookup_elem(&rules, &id);
		if (!rule)
			return -1;
		if ((rule->expires_ns == 0 || rule->expires_ns > now) &&
		    (rule->protocol == 0 || rule->protocol == flow->protocol) &&
		    flow->sport >= rule->sport_lo && flow->sport <= rule->sport_hi &&
		    flow->dport >= rule->dport_lo && flow->dport <= rule->dport_hi &&
		    in_prefix(by_source ? flow->dst : flow->src, rule->other, rule->other_len)) {
			hit = bpf_map_lookup_elem(&hits, &id);
			if (hit)
				*hit += 1;
			return rule->action;
		}
		id = rule->next;
	}
	return -1;
}

// The state of one walk over the prefixes of a trie that contain an address (bpf_loop's
// context: the verifier checks one step, whatever the number of prefixes).
struct prefix_walk {
	struct flow flow;
	struct prefix_key key; // the address, and the longest prefix length still to try
	__u64 now;
	int action;            // of the rule that matched, or -1
};

// One prefix: the longest in `trie` that contains the address within key.prefixlen bits; its
// chain is tried, then the walk goes on below that prefix's length. Returns 1 to stop.
static __always_inline long prefix_step(void *trie, struct prefix_walk *w, int by_source)
{
	struct rule *first;
	__u32 *head, id;
	int action;

	head = bpf_map_lookup_elem(trie, &w->key);
	if (!head)
		return 1;
	id = *head;
	action = walk(id, &w->flow, by_source, w->now);
	if (action >= 0) {
		w->action = action;
		return 1;
	}
	first = bpf_map_lookup_elem(&rules, &id);
	if (!first || first->own_len == 0 || first->own_len > w->key.prefixlen)
		return 1;
	w->key.prefixlen = first->own_len - 1;
	return 0;
}

static long source_step(__u64 index, void *ctx)
{
	return prefix_step(&src_prefixes, ctx, 1);
}

static long destination_step(__u64 index, void *ctx)
{
	return prefix_step(&dst_prefixes, ctx, 0);
}

static __always_inline int prefilter(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct prefix_walk w = {};

	if (!parse(data, end, &w.flow))
		return ACTION_PASS;
	w.now = bpf_ktime_get_ns();
	w.action = -1;
	w.key.prefixlen = 128;
	__builtin_memcpy(w.key.addr, w.flow.src, 16);
	bpf_loop(MAX_PREFIX_LEVELS, source_step, &w, 0);
	if (w.action < 0) {
		w.key.prefixlen = 128;
		__builtin_memcpy(w.key.addr, w.flow.dst, 16);
		bpf_loop(MAX_PREFIX_LEVELS, destination_step, &w, 0);
	}
	return w.action < 0 ? ACTION_PASS : w.action;
}

#endif

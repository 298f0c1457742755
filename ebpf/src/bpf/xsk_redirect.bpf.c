// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
// fastedge XDP entry point: count every frame per CPU, run the pre-filter (prefilter.h), then
// hand the frame to the AF_XDP socket registered for the receive queue it arrived on. A queue
// with no socket registered passes the frame on to the kernel stack unchanged.
#include "prefilter.h"

// Slots of the per-CPU counter array; keep in sync with `COUNTER_SLOTS` in lib.rs.
enum fastedge_counter {
	FASTEDGE_SEEN = 0,        // frames the program ran on
	FASTEDGE_REDIRECTED = 1,  // frames redirected into an AF_XDP socket
	FASTEDGE_PASSED = 2,      // frames with no socket on their queue (XDP_PASS)
	FASTEDGE_DROPPED = 3,     // frames a `drop` rule dropped
	FASTEDGE_BYPASSED = 4,    // frames a `bypass` rule handed to the kernel
	FASTEDGE_COUNTERS = 5,
};

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

FASTEDGE_COUNTERS_MAP(FASTEDGE_COUNTERS)

// "frags": the program reads headers only, which lie in the first buffer of a multi-buffer
// (jumbo) frame; so declared, it attaches to interfaces whose MTU is above one page.
SEC("xdp.frags")
int xsk_redirect(struct xdp_md *ctx)
{
	__u32 queue = ctx->rx_queue_index;
	long action;

	bump(FASTEDGE_SEEN);
	switch (prefilter(ctx)) {
	case ACTION_DROP:
		bump(FASTEDGE_DROPPED);
		return XDP_DROP;
	case ACTION_BYPASS:
		bump(FASTEDGE_BYPASSED);
		return XDP_PASS;
	default:
		break;
	}
	// The flags argument is the action taken when the lookup fails.
	action = bpf_redirect_map(&xsks, queue, XDP_PASS);
	bump(action == XDP_REDIRECT ? FASTEDGE_REDIRECTED : FASTEDGE_PASSED);
	return action;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

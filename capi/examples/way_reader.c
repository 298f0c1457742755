/*
 * way_reader: reads one way of a running `fastedge split` through libfastedge_ways, as an IDS
 * plugin (Zeek, Suricata, Snort) would: open the way, read frames in batches, sleep in
 * fastedge_way_wait while there is nothing to read.
 *
 * Usage: way_reader SPLIT-NAME WAY FRAMES [-v]
 *
 * Reads until FRAMES frames have arrived (or 10 s pass without one, or SIGINT/SIGTERM), then
 * prints `frames N bytes B checksum C stamps S`: C is the sum (mod 2^64) of each frame's 64-bit
 * FNV-1a hash and S the sum of their capture timestamps (ns), so two readers of the same frames
 * print the same line whatever order lanes gave them in. With -v, one line per frame first:
 * `frame LEN FLOW-HASH`. The way's counters go to stderr. Exit status 1 when the way cannot be
 * opened or read.
 *
 * Build: cc -I capi/include way_reader.c -L target/release -lfastedge_ways -o way_reader
 */

#define _POSIX_C_SOURCE 200809L

#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fastedge_ways.h"

struct tally {
    uint64_t frames;
    uint64_t bytes;
    uint64_t checksum;
    uint64_t stamps;
    int verbose;
};

static volatile sig_atomic_t stopping;

static void on_signal(int sig) {
    (void)sig;
    stopping = 1;
}

static uint64_t fnv1a(const uint8_t *data, uint32_t len) {
    uint64_t hash = 0xcbf29ce484222325ULL;
    for (uint32_t i = 0; i < len; i++) {
        hash ^= data[i];
        hash *= 0x100000001b3ULL;
    }
    return hash;
}

/* Called once per frame; `data` is valid only until this returns (nothing here keeps it). */
static void on_frame(void *user, const uint8_t *data, uint32_t len, uint64_t timestamp_ns,
                     uint64_t flow_hash) {
    struct tally *tally = user;
    tally->frames++;
    tally->bytes += len;
    tally->checksum += fnv1a(data, len);
    tally->stamps += timestamp_ns;
    if (tally->verbose)
        printf("frame %" PRIu32 " %016" PRIx64 "\n", len, flow_hash);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 4 || argc > 5 || (argc == 5 && strcmp(argv[4], "-v") != 0)) {
        fprintf(stderr, "usage: way_reader SPLIT-NAME WAY FRAMES [-v]\n");
        return 2;
    }
    if (fastedge_way_layout_version() != FASTEDGE_WAY_LAYOUT_VERSION) {
        fprintf(stderr, "way_reader: header and library disagree on the layout version\n");
        return 1;
    }
    const char *name = argv[1];
    uint32_t way = (uint32_t)strtoul(argv[2], NULL, 10);
    uint64_t want = strtoull(argv[3], NULL, 10);
    struct tally tally = {.verbose = argc == 5};

    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);

    fastedge_way *reader = fastedge_way_open(name, way);
    if (reader == NULL) {
        fprintf(stderr, "way_reader: %s\n", fastedge_way_last_error());
        return 1;
    }
    double last = now_s();
    while (tally.frames < want && !stopping && now_s() - last < 10.0) {
        int64_t read = fastedge_way_read_batch(reader, 256, on_frame, &tally);
        if (read < 0) {
            fprintf(stderr, "way_reader: %s\n", fastedge_way_last_error());
            fastedge_way_close(reader);
            return 1;
        }
        if (read > 0) {
            last = now_s();
            continue;
        }
        /* Nothing to read: asleep in the kernel until the split publishes the next frames. */
        if (fastedge_way_wait(reader, 500) < 0) {
            fprintf(stderr, "way_reader: %s\n", fastedge_way_last_error());
            fastedge_way_close(reader);
            return 1;
        }
    }

    fastedge_way_counters counters;
    if (fastedge_way_read_counters(reader, &counters) == 0)
        fprintf(stderr, "way %s:%" PRIu32 ": %" PRIu32 " lanes, %" PRIu64 " delivered, %" PRIu64
                        " dropped\n",
                name, way, counters.lanes, counters.delivered, counters.dropped);
    fastedge_way_close(reader);
    printf("frames %" PRIu64 " bytes %" PRIu64 " checksum %016" PRIx64 " stamps %" PRIu64 "\n",
           tally.frames, tally.bytes, tally.checksum, tally.stamps);
    return 0;
}

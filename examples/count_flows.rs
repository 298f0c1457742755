//! A consumer of one way of a running `fastedge split`: reads its frames and counts them and
//! the flows they belong to (the flow hash the splitter put on each record, and the flow key
//! `fastedge_wire` parses out of the frame).
//!
//! Usage: `count_flows SPLIT-NAME WAY FRAMES` — reads until FRAMES frames have arrived (or 10 s
//! without one), then prints `frames N flows M keys K` (M distinct flow hashes, K distinct
//! flows by their parsed addresses and ports, both directions counted as one) and exits.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use fastedge_rings::shm::Consumer;
use fastedge_wire::packet::{parse, Parsed};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, name, way, want] = args.as_slice() else {
        return Err("usage: count_flows SPLIT-NAME WAY FRAMES".into());
    };
    let want: u64 = want.parse()?;
    let mut consumer = Consumer::open(name, way.parse()?)?;
    let mut flows = HashSet::new();
    let mut keys = HashSet::new();
    let mut frames = 0u64;
    let mut last = Instant::now();
    while frames < want && last.elapsed() < Duration::from_secs(10) {
        let read = consumer.read_batch(256, |record| {
            frames += 1;
            flows.insert(record.flow_hash);
            if let Ok(Parsed::Ip(key)) = parse(record.data, true) {
                // Both directions of a connection are one flow.
                let (a, b) = ((key.src, key.src_port), (key.dst, key.dst_port));
                keys.insert((a.min(b), a.max(b), key.protocol));
            }
        });
        if read == 0 {
            // Asleep until the splitter publishes the next frames (no polling).
            consumer.wait_readable(Duration::from_millis(500));
        } else {
            last = Instant::now();
        }
    }
    println!("frames {frames} flows {} keys {}", flows.len(), keys.len());
    Ok(())
}

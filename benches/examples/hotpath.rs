//! A fixed amount of the split hot path over 2,048 generated 64-byte frames, N rounds, for
//! instruction counts that do not depend on a noisy machine:
//! `valgrind --tool=callgrind target/release/examples/hotpath 100 [parse|pipeline]`.
//! `parse`: parse + flow hash + way choice; `pipeline`: the whole push into 4 shm ways (drained
//! between rounds).

use fastedge_benches::{balance_pipeline, udp_frames_64b};
use fastedge_rings::{pipeline::Pipeline, shm::Consumer};
use fastedge_wire::packet::{flow_hash, parse, way_of, HashKey, HashMode, Parsed};

fn main() {
    let rounds: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let frames = udp_frames_64b();
    if std::env::args().nth(2).as_deref() == Some("pipeline") {
        let name = format!("hotpath-{}", std::process::id());
        let config = balance_pipeline(&name, 4);
        let mut pipeline = Pipeline::build(&config).expect("pipeline");
        let mut consumers: Vec<Consumer> = (0..4)
            .map(|w| Consumer::open(&name, w).expect("way"))
            .collect();
        let mut read = 0usize;
        for _ in 0..rounds {
            for frame in &frames {
                pipeline.push(std::hint::black_box(frame), 1);
            }
            for c in &mut consumers {
                read += c.read_batch(usize::MAX, |_| {});
            }
        }
        println!("{} packets pushed, {read} read", rounds * 2048);
        drop(consumers);
        drop(pipeline);
        fastedge_rings::shm::remove_ways(&name, 4);
        return;
    }
    let mut sum = 0u64;
    for _ in 0..rounds {
        for frame in &frames {
            if let Ok(Parsed::Ip(key)) = parse(std::hint::black_box(frame), true) {
                sum += u64::from(way_of(
                    flow_hash(&key, HashMode::FiveTuple, &HashKey { k0: 1, k1: 2 }),
                    4,
                ));
            }
        }
    }
    println!("{} packets, checksum {sum}", rounds * 2048);
}

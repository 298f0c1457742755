//! Hot path of `fastedge split` per packet: parse + flow hash + way choice + enqueue into a
//! shared-memory way (a pipeline of one LoadBalancer over 4 and 64 ways), and the shm ring alone
//! (enqueue, dequeue). Frames are 64-byte UDP/IPv4 frames of 1,024 flows, both directions, from
//! the generator's own frame writer. The ways are drained between timed batches, so every
//! timed push is a real enqueue (not a cheaper "way full" drop). A way's head is stored once
//! per batch: the plain variants publish each timed batch of up to 1,024 frames at its end; the
//! `batch_end` and `publish` variants end an engine batch every 64 frames (and every frame) —
//! the head store and waking sleeping consumers (none here, so the cost of looking).

use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use fastedge_benches::{balance_pipeline, udp_frames_64b};
use fastedge_rings::{
    pipeline::Pipeline,
    shm::{Consumer, Producer},
};

const BATCH: usize = 1024;

fn pipeline(c: &mut Criterion) {
    let frames = udp_frames_64b();
    let mut group = c.benchmark_group("split");
    group.throughput(Throughput::Elements(1));
    for ways in [4u32, 64] {
        let name = format!("bench-{}-{ways}", std::process::id());
        let config = balance_pipeline(&name, ways)
            .validate()
            .expect("a valid pipeline");
        let mut pipeline = Pipeline::build(&config).expect("building the pipeline");
        let mut consumers: Vec<Consumer> = (0..ways)
            .map(|w| Consumer::open(&name, w).expect("consumer"))
            .collect();
        group.bench_function(format!("parse+hash+enqueue/64B/{ways}_ways"), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut done = 0u64;
                let mut next = 0usize;
                while done < iters {
                    let n = (iters - done).min(BATCH as u64) as usize;
                    let start = Instant::now();
                    for _ in 0..n {
                        pipeline.push(black_box(&frames[next]), 1);
                        // Not `%`: a division per frame would be timed with it.
                        next += 1;
                        if next == frames.len() {
                            next = 0;
                        }
                    }
                    // One receive batch of up to 1,024 frames: published at its end.
                    pipeline.flush_outputs();
                    timed += start.elapsed();
                    done += n as u64;
                    for consumer in &mut consumers {
                        consumer.read_batch(usize::MAX, |r| {
                            black_box(r.data.len());
                        });
                    }
                }
                timed
            })
        });
        // The same with the end of an engine batch every 64 frames (`flush_outputs`: waking
        // sleeping consumers, none here, so the cost of looking).
        group.bench_function(
            format!("parse+hash+enqueue+batch_end/64B/{ways}_ways"),
            |b| {
                b.iter_custom(|iters| {
                    let mut timed = Duration::ZERO;
                    let mut done = 0u64;
                    let mut next = 0usize;
                    while done < iters {
                        let n = (iters - done).min(BATCH as u64) as usize;
                        let start = Instant::now();
                        for i in 0..n {
                            pipeline.push(black_box(&frames[next]), 1);
                            // Not `%`: a division per frame would be timed with it.
                            next += 1;
                            if next == frames.len() {
                                next = 0;
                            }
                            if i % 64 == 63 {
                                pipeline.flush_outputs();
                            }
                        }
                        pipeline.flush_outputs();
                        timed += start.elapsed();
                        done += n as u64;
                        for consumer in &mut consumers {
                            consumer.read_batch(usize::MAX, |r| {
                                black_box(r.data.len());
                            });
                        }
                    }
                    timed
                })
            },
        );
        let dropped: u64 = pipeline.way_stats().iter().map(|w| w.dropped_full).sum();
        assert_eq!(dropped, 0, "every timed push was an enqueue");
        drop(consumers);
        drop(pipeline);
        fastedge_rings::shm::remove_ways(&name, ways);
    }
    group.finish();
}

fn ring(c: &mut Criterion) {
    let frames = udp_frames_64b();
    // A way in a directory of its own: ways are not made where others may write (/tmp).
    let path = std::env::temp_dir()
        .join(format!("fastedge-bench-ring-{}", std::process::id()))
        .join("way");
    let mut producer = Producer::create(&path, 1 << 20).expect("way");
    let mut consumer = Consumer::open_path(&path).expect("consumer");
    let mut group = c.benchmark_group("shm");
    group.throughput(Throughput::Elements(1));
    group.bench_function("enqueue+dequeue/64B", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            let mut done = 0u64;
            while done < iters {
                let n = (iters - done).min(BATCH as u64) as usize;
                for frame in frames.iter().take(n) {
                    producer.push(black_box(frame), 1, 7);
                }
                producer.publish();
                consumer.read_batch(usize::MAX, |r| {
                    black_box(r.data.len());
                });
                done += n as u64;
            }
            start.elapsed()
        })
    });
    // The worst case of a batch end: one after every packet (a batch of one), nobody asleep.
    group.bench_function("enqueue+publish+dequeue/64B", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            let mut done = 0u64;
            while done < iters {
                let n = (iters - done).min(BATCH as u64) as usize;
                for frame in frames.iter().take(n) {
                    producer.push(black_box(frame), 1, 7);
                    producer.publish();
                }
                consumer.read_batch(usize::MAX, |r| {
                    black_box(r.data.len());
                });
                done += n as u64;
            }
            start.elapsed()
        })
    });
    group.finish();
    assert_eq!(producer.counters().1, 0, "no drops");
    drop(consumer);
    drop(producer);
    if let Some(dir) = path.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

criterion_group!(benches, pipeline, ring);
criterion_main!(benches);

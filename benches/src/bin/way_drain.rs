//! A minimal consumer application for the split benchmark: reads ways 0..N of NAME and counts
//! records; after SECONDS prints `received=…`. It sleeps while no way has anything to read
//! (`wait_any`), as a real consumer would.
//!
//! Usage: way_drain NAME N SECONDS

use std::time::{Duration, Instant};

use fastedge_rings::shm::{wait_any, Consumer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, name, ways, seconds] = args.as_slice() else {
        return Err("usage: way_drain NAME WAYS SECONDS".into());
    };
    let ways: u32 = ways.parse()?;
    let until = Instant::now() + Duration::from_secs(seconds.parse()?);
    let mut consumers = Vec::new();
    for way in 0..ways {
        loop {
            match Consumer::open(name, way) {
                Ok(c) => break consumers.push(c),
                Err(_) if Instant::now() < until => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(e.into()),
            }
        }
    }
    println!("ready");
    let mut count = 0u64;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        let mut got = 0;
        for consumer in &mut consumers {
            got += consumer.read_batch(usize::MAX, |r| {
                std::hint::black_box(r.data.len());
            });
        }
        count += got as u64;
        if got == 0 {
            wait_any(&consumers, left);
        }
    }
    println!("received={count}");
    Ok(())
}

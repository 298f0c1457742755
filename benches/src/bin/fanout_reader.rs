//! The kernel's own distributor, for the split benchmark: N AF_PACKET sockets with TPACKET_V3
//! rings in one PACKET_FANOUT_HASH group on IFACE, each read by a thread; after SECONDS prints
//! `received=… kernel_drops=…` (totals over the sockets).
//!
//! Usage: fanout_reader IFACE N SECONDS

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use fastedge_rings::afpacket::{Fanout, PacketReceiver, RingConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, interface, sockets, seconds] = args.as_slice() else {
        return Err("usage: fanout_reader IFACE SOCKETS SECONDS".into());
    };
    let sockets: u16 = sockets.parse()?;
    let seconds: u64 = seconds.parse()?;
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let drops = Arc::new(AtomicU64::new(0));
    let group = (std::process::id() & 0xffff) as u16;
    let ring = RingConfig {
        block_size: 1 << 18,
        blocks: 16,
        block_timeout_ms: 10,
    };
    let mut threads = Vec::new();
    for _ in 0..sockets {
        let mut receiver = PacketReceiver::open(
            interface,
            ring,
            Some(Fanout {
                group,
                mode: libc_fanout_hash(),
            }),
        )?;
        let (stop, received, drops) = (stop.clone(), received.clone(), drops.clone());
        threads.push(std::thread::spawn(move || {
            let mut count = 0u64;
            while !stop.load(Ordering::Relaxed) {
                count += receiver
                    .receive(Duration::from_millis(50), |frame, _| {
                        std::hint::black_box(frame.len());
                    })
                    .unwrap_or(0) as u64;
            }
            received.fetch_add(count, Ordering::Relaxed);
            if let Ok(s) = receiver.statistics() {
                drops.fetch_add(s.drops, Ordering::Relaxed);
            }
        }));
    }
    println!("ready");
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    println!(
        "received={} kernel_drops={}",
        received.load(Ordering::Relaxed),
        drops.load(Ordering::Relaxed)
    );
    Ok(())
}

/// PACKET_FANOUT_HASH (0): the kernel's flow hash picks the socket.
fn libc_fanout_hash() -> u32 {
    0
}

//! Helpers for the split suites: way files removed however a test ends, consumers attached
//! once the ways exist, what generated frames (`fastedge gen` markers) arrived where, and
//! `fastedge gen` itself in a namespace.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use fastedge_rings::shm::Consumer;

/// Removes the way files `/dev/shm/fastedge/NAME-*` (data and positions) when dropped.
#[derive(Debug)]
pub struct WayFiles(pub String);

impl Drop for WayFiles {
    fn drop(&mut self) {
        let prefix = format!("{}-", self.0);
        if let Ok(entries) = std::fs::read_dir(fastedge_rings::shm::WAY_DIR) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
}

/// Attaches a consumer to each of `ways` ways of `name` once they exist (15 s at most).
pub fn attach(name: &str, ways: std::ops::Range<u32>) -> Vec<Consumer> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut consumers = Vec::new();
    for way in ways {
        loop {
            match Consumer::open(name, way) {
                Ok(c) => break consumers.push(c),
                Err(e) => {
                    assert!(Instant::now() < deadline, "way {way} never appeared: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
    consumers
}

/// Where generated frames arrived: sequence number → (way index in `consumers`, flow) for
/// each copy.
pub type Arrivals = HashMap<u64, Vec<(usize, u32)>>;

/// Reads `consumers` until `expected` generated frames arrived or nothing came for `quiet`.
pub fn read_markers(consumers: &mut [Consumer], expected: usize, quiet: Duration) -> Arrivals {
    let mut seen: Arrivals = HashMap::new();
    let mut count = 0;
    let mut last = Instant::now();
    while count < expected && last.elapsed() < quiet {
        let mut got = 0;
        for (way, consumer) in consumers.iter_mut().enumerate() {
            got += consumer.read_batch(usize::MAX, |record| {
                if let Some((flow, seq)) = fastedge_wire::synth::marker(record.data) {
                    seen.entry(seq).or_default().push((way, flow));
                    count += 1;
                }
            });
        }
        if got > 0 {
            last = Instant::now();
        } else {
            fastedge_rings::shm::wait_any(consumers, quiet.saturating_sub(last.elapsed()));
        }
    }
    seen
}

/// Runs `fastedge gen DEV ARGS…` in namespace `ns` to completion (panics if it fails);
/// returns its log.
pub fn gen(ns: &str, dev: &str, args: &[&str]) -> String {
    run_gen(None, ns, dev, args)
}

/// One [`gen`] per (CPU, first sequence number) in `runs`, all at once, each pinned to its CPU
/// (`taskset`; on a veth, a sender's CPU picks the receive queue) and given `args` and
/// `--first-seq`; waits for all.
pub fn gen_per_cpu(ns: &str, dev: &str, runs: &[(&str, &str)], args: &[&str]) {
    std::thread::scope(|scope| {
        for &(cpu, first) in runs {
            scope.spawn(move || {
                let mut all = args.to_vec();
                all.extend(["--first-seq", first]);
                run_gen(Some(cpu), ns, dev, &all)
            });
        }
    });
}

fn run_gen(cpu: Option<&str>, ns: &str, dev: &str, args: &[&str]) -> String {
    let mut command = match cpu {
        Some(cpu) => {
            let mut taskset = std::process::Command::new("taskset");
            taskset.args(["-c", cpu, "ip"]);
            taskset
        }
        None => std::process::Command::new("ip"),
    };
    let out = command
        .args(["netns", "exec", ns])
        .arg(crate::process::fastedge_bin())
        .args(["gen", dev])
        .args(args)
        .env("FASTEDGE_LOG", "info")
        .output()
        .expect("running fastedge gen");
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "gen failed: {log}");
    assert!(log.contains("gen done: sent"), "{log}");
    log
}

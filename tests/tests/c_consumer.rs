//! Ways read from C: the example `capi/examples/way_reader.c`, compiled here with `cc` against
//! the generated header `capi/include/fastedge_ways.h` and the built `libfastedge_ways.so`,
//! reads one way of a running `fastedge dup` while `fastedge tap` streams the other way (the
//! same frames, duplicated) as pcap: both see every frame `fastedge gen` sent, byte for byte,
//! with the same capture timestamps, and the flow hashes reach C.

// Test code: an unwrap that fails is a failed test.
#![allow(clippy::unwrap_used)]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use fastedge_rings::shm::{position_path, way_path};
use fastedge_tests::{
    netns::VethPair,
    process::{fastedge_bin, Fastedge},
    require_tool,
    ways::{gen, WayFiles},
    TempDir,
};

/// A child process killed when the test ends, however it ends.
struct Killed(Option<Child>);

impl Killed {
    fn output(mut self) -> std::process::Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The hash `way_reader` sums into its checksum: 64-bit FNV-1a.
fn fnv1a(frame: &[u8]) -> u64 {
    frame.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The line `way_reader` prints for these (timestamp ns, frame) pairs: `frames N bytes B
/// checksum C stamps S` (C: the sum of the frames' hashes, S: of their timestamps, mod 2^64).
fn summary(frames: &[(u64, &[u8])]) -> String {
    let (mut bytes, mut checksum, mut stamps) = (0u64, 0u64, 0u64);
    for (timestamp_ns, frame) in frames {
        bytes += frame.len() as u64;
        checksum = checksum.wrapping_add(fnv1a(frame));
        stamps = stamps.wrapping_add(*timestamp_ns);
    }
    format!(
        "frames {} bytes {bytes} checksum {checksum:016x} stamps {stamps}",
        frames.len()
    )
}

/// The (timestamp ns, frame) records of a pcap stream as `fastedge tap` writes it
/// (little-endian, nanosecond magic).
fn pcap_frames(pcap: &[u8]) -> Vec<(u64, &[u8])> {
    assert!(pcap.len() >= 24, "a pcap global header");
    assert_eq!(pcap[..4], 0xa1b2_3c4d_u32.to_le_bytes(), "tap's pcap magic");
    let mut frames = Vec::new();
    let mut at = 24;
    while at < pcap.len() {
        let header = &pcap[at..at + 16];
        let word = |range: std::ops::Range<usize>| {
            u64::from(u32::from_le_bytes(header[range].try_into().unwrap()))
        };
        let timestamp_ns = word(0..4) * 1_000_000_000 + word(4..8);
        let captured = u32::from_le_bytes(header[8..12].try_into().unwrap()) as usize;
        let original = u32::from_le_bytes(header[12..16].try_into().unwrap()) as usize;
        assert_eq!(captured, original, "tap captures whole frames");
        frames.push((timestamp_ns, &pcap[at + 16..at + 16 + captured]));
        at += 16 + captured;
    }
    frames
}

/// Compiles the C example against the committed header and the built library.
fn build_way_reader(dir: &Path) -> PathBuf {
    require_tool("cc", "gcc");
    let profile = fastedge_bin().parent().unwrap().to_owned();
    let library = profile.join("libfastedge_ways.so");
    assert!(
        library.is_file(),
        "{} is missing: build it first (`cargo build --workspace`, or `make test`)",
        library.display()
    );
    let capi = Path::new(env!("CARGO_MANIFEST_DIR")).join("../capi");
    let reader = dir.join("way_reader");
    let out = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic"])
        .arg("-I")
        .arg(capi.join("include"))
        .arg(capi.join("examples/way_reader.c"))
        .arg("-L")
        .arg(&profile)
        .arg("-lfastedge_ways")
        .arg(format!("-Wl,-rpath,{}", profile.display()))
        .arg("-o")
        .arg(&reader)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cc failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    reader
}

/// Waits until a consumer process has attached to the way `path` (its pid in the position
/// file).
fn wait_attached(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let pid = std::fs::read(position_path(path))
            .ok()
            .filter(|bytes| bytes.len() >= 8)
            .map_or(0, |bytes| {
                u64::from_le_bytes(bytes[..8].try_into().unwrap())
            });
        if pid != 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no consumer attached to {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_c_reader_reads_the_frames_fastedge_tap_reads() {
    let state = TempDir::new("c-consumer");
    let reader = build_way_reader(state.path());

    let pair = VethPair::new();
    let _files = WayFiles(pair.dev_a.clone());
    let mut dup = Fastedge::start_in(
        Some(&pair.ns_a),
        &["dup", &pair.dev_a, "--ways", "2", "--way-kib", "1024"],
        &[("FASTEDGE_LOG", "info")],
    );
    dup.wait_for_logged("split running", Duration::from_secs(15));

    let frames = 1000;
    let c_reader = Killed(Some(
        Command::new(&reader)
            .args([&pair.dev_a, "0", &frames.to_string(), "-v"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let tap = Killed(Some(
        Command::new(fastedge_bin())
            .args(["tap", &format!("{}:1", pair.dev_a)])
            .args(["--count", &frames.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    wait_attached(&way_path(&pair.dev_a, 0));
    wait_attached(&way_path(&pair.dev_a, 1));

    gen(
        &pair.ns_b,
        &pair.dev_b,
        &[
            "--flows",
            "100",
            "--count",
            &frames.to_string(),
            "--rate",
            "20000",
        ],
    );

    let c_out = c_reader.output();
    let c_stderr = String::from_utf8_lossy(&c_out.stderr);
    assert!(c_out.status.success(), "way_reader failed: {c_stderr}");
    let c_stdout = String::from_utf8_lossy(&c_out.stdout);
    let (per_frame, summary_lines): (Vec<&str>, Vec<&str>) =
        c_stdout.lines().partition(|l| l.starts_with("frame "));
    let c_line = summary_lines.concat();
    let tap_out = tap.output();
    assert!(
        tap_out.status.success(),
        "tap failed: {}",
        String::from_utf8_lossy(&tap_out.stderr)
    );
    let tapped = pcap_frames(&tap_out.stdout);
    assert_eq!(tapped.len(), frames, "tap read every frame");
    assert!(
        c_line.starts_with(&format!("frames {frames} bytes ")),
        "the C reader read every frame: {c_line}; {c_stderr}"
    );
    assert_eq!(
        c_line,
        summary(&tapped),
        "the C reader and fastedge tap read the same frames, with the same timestamps"
    );
    // Every frame's flow hash reached the callback: gen's 100 flows (both directions of each
    // share a hash).
    assert_eq!(per_frame.len(), frames);
    let flows: std::collections::HashSet<&str> = per_frame
        .iter()
        .map(|l| l.split(' ').nth(2).unwrap())
        .collect();
    assert_eq!(flows.len(), 100, "{:?}", &per_frame[..5]);
    // The counters reached C too: everything the split put into way 0, nothing dropped.
    assert!(
        c_stderr.contains(&format!(" lanes, {frames} delivered, 0 dropped")),
        "{c_stderr}"
    );
    dup.terminate_cleanly(Duration::from_secs(10));
}

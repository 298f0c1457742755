//! `tls_flood` against a terminator of this process (its demo backend and certificate): full
//! handshakes, then `--resume`, whose handshakes the server must have resumed.

// Test code: an unwrap that fails is a failed test.
#![allow(clippy::unwrap_used)]

use std::{net::SocketAddr, process::Command};

use fastedge_runtime::CpuList;
use fastedge_tls::Terminator;

/// Runs `tls_flood` for a second with 4 handshakes in flight: (handshakes, failed, missed).
fn flood(addr: SocketAddr, resume: bool) -> (u64, u64, u64) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tls_flood"));
    if resume {
        command.arg("--resume");
    }
    let out = command
        .args([&addr.to_string(), "1", "4"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "handshakes N failed F missed M in S s; ..."
    let words: Vec<&str> = stdout.split_whitespace().collect();
    let count = |name: &str| -> u64 {
        let at = words.iter().position(|w| *w == name).unwrap();
        words[at + 1].parse().unwrap()
    };
    (count("handshakes"), count("failed"), count("missed"))
}

fn resumed(terminator: &fastedge_tls::TerminatorHandle) -> u64 {
    let metrics = terminator.metrics();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("fastedge_handshakes_resumed_total "))
        .unwrap();
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn resumed_floods_offer_the_first_session_and_count_only_resumptions() {
    let state = std::env::temp_dir().join(format!("fastedge-tls-flood-{}", std::process::id()));
    std::fs::create_dir_all(&state).unwrap();
    let cpu = CpuList::available().unwrap().cpus()[0];
    let terminator = Terminator::from_toml("[frontend]\nlisten = [\"127.0.0.1:0\"]\n")
        .unwrap()
        .on_cpus(cpu.to_string().parse().unwrap())
        .state_dir(&state)
        .start()
        .unwrap();
    let addr = terminator.listen_addrs()[0];

    let (full, failed, missed) = flood(addr, false);
    assert!(
        full > 0 && failed == 0 && missed == 0,
        "{full} {failed} {missed}"
    );
    assert_eq!(resumed(&terminator), 0, "full handshakes offer no session");

    let (handshakes, failed, missed) = flood(addr, true);
    assert!(handshakes > 0 && failed == 0, "{handshakes} {failed}");
    assert_eq!(missed, 0, "every offer of the session was resumed");
    // The server counts each (the first handshake, which got the session, was a full one);
    // the client's last Finished messages may still be on their way.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while resumed(&terminator) < handshakes && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        resumed(&terminator) >= handshakes,
        "{} resumed by the server, {handshakes} counted",
        resumed(&terminator)
    );
    terminator.stop().unwrap();
    let _ = std::fs::remove_dir_all(&state);
}

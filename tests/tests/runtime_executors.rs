//! Thread-per-core executors: one pinned executor per CPU of a CPU list (on the engine
//! `$FASTEDGE_ENGINE` names), each with its own SO_REUSEPORT listener; real TCP connections are
//! spread over more than one of them. And the facade's timers on that engine.

// Test code: an unwrap that fails is a failed test.
#![allow(clippy::unwrap_used)]

use std::{
    io::{BufRead, BufReader},
    net::TcpStream,
    time::Duration,
};

use fastedge_runtime::{bind_reuseport, pinned_cpu, CpuList, Executors, Shutdown};
use futures_lite::AsyncWriteExt;

const CONNECTIONS: usize = 64;
/// Listeners started and stopped by the stop test: dropped instead of closed, glommio left
/// one listening in about one round of fifty.
const RESTARTS: usize = 300;

#[test]
fn connections_spread_over_pinned_executors() {
    let available = CpuList::available().expect("affinity");
    if available.len() < 2 {
        eprintln!("SKIPPED: this test needs 2 CPUs, the process may use only {available}");
        return;
    }
    // The first two available CPUs, written as a CPU-list string as a user would.
    let text = format!("{},{}", available.cpus()[0], available.cpus()[1]);
    let cpus: CpuList = text.parse().expect("cpu list");
    cpus.check_within(&available).expect("available");

    let listeners = bind_reuseport("127.0.0.1:0".parse().unwrap(), cpus.len(), 128).expect("bind");
    let addr = listeners[0].local_addr();
    assert!(
        listeners.iter().all(|l| l.local_addr() == addr),
        "one port for the group"
    );
    let mut listeners = listeners.into_iter();
    let shutdown = Shutdown::new();

    let executors = {
        let shutdown = shutdown.clone();
        Executors::spawn_on(fastedge_tests::engine(), "test", &cpus, |core| {
            let listener = listeners.next().expect("one listener each");
            let shutdown = shutdown.clone();
            move || async move {
                let pinned = pinned_cpu();
                let listener = listener.into_listener().expect("listener");
                let mut accepted = 0usize;
                loop {
                    let next = shutdown.until(listener.accept()).await;
                    let Some(stream) = next else { break };
                    let mut stream = stream.expect("accept");
                    accepted += 1;
                    let line = format!("cpu={} pinned={:?}\n", core.cpu, pinned);
                    stream.write_all(line.as_bytes()).await.expect("write");
                    stream.close().await.expect("close");
                }
                (accepted, pinned)
            }
        })
        .expect("spawn executors")
    };

    let mut answered_by = Vec::new();
    for _ in 0..CONNECTIONS {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut line = String::new();
        BufReader::new(stream)
            .read_line(&mut line)
            .expect("read answer");
        answered_by.push(line.trim().to_owned());
    }
    shutdown.trigger();
    let results = executors.join().expect("join executors");

    let total: usize = results.iter().map(|(_, (accepted, _))| accepted).sum();
    assert_eq!(total, CONNECTIONS, "every connection accepted exactly once");
    for (core, (accepted, pinned)) in &results {
        assert_eq!(
            *pinned,
            Some(core.cpu),
            "executor {core:?} is pinned to its CPU"
        );
        eprintln!("cpu {}: accepted {accepted}", core.cpu);
    }
    let busy = results
        .iter()
        .filter(|(_, (accepted, _))| *accepted > 0)
        .count();
    assert!(
        busy >= 2,
        "connections went to more than one executor: {answered_by:?}"
    );
    for (core, _) in &results {
        let expected = format!("cpu={} pinned=Some({})", core.cpu, core.cpu);
        assert!(
            answered_by.contains(&expected),
            "{expected} among {answered_by:?}"
        );
    }
}

#[test]
fn bad_cpu_lists_are_rejected_with_a_reason() {
    for (text, reason) in [
        ("", "empty CPU list"),
        ("1-", "is not a CPU number or range"),
        ("3-1", "runs backwards"),
        ("0,0", "listed more than once"),
    ] {
        let err = text.parse::<CpuList>().unwrap_err().to_string();
        assert!(err.contains(reason), "{text:?}: {err}");
    }
    let available = CpuList::available().unwrap();
    let beyond = available.cpus().last().unwrap() + 1;
    let err = beyond
        .to_string()
        .parse::<CpuList>()
        .unwrap()
        .check_within(&available)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not available"), "{err}");
}

#[test]
fn binding_a_taken_address_fails_naming_it() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap();
    let err = bind_reuseport(addr, 1, 16).unwrap_err().to_string();
    assert!(err.contains(&addr.to_string()), "{err}");
}

#[test]
fn timers_complete_at_their_deadlines_in_order_and_not_before() {
    use std::time::Instant;

    let cpu = CpuList::available().unwrap().cpus()[0];
    let cpus: CpuList = cpu.to_string().parse().unwrap();
    let executors = Executors::spawn_on(fastedge_tests::engine(), "timers", &cpus, |_| {
        || async {
            let started = Instant::now();
            // A deadline already past completes at once.
            fastedge_runtime::sleep_until(started - Duration::from_millis(5)).await;
            let past = started.elapsed();
            // A timer tells its deadline (the pump re-arms by it).
            let at = started + Duration::from_millis(7);
            let told = fastedge_runtime::sleep_until(at).deadline() == at;
            // Two at once, in tasks of their own (the later one first): the earlier one
            // ends first, neither before its deadline; also when the thread is held past both
            // deadlines (a busy machine, a VM's vCPU descheduled: seen once under `make
            // test`), since timers due at the same wake wake their tasks in deadline order.
            // (In one task, a `zip`, they would end in poll order then.)
            let mut order = Vec::new();
            for held in [Duration::ZERO, Duration::from_millis(200)] {
                let base = Instant::now();
                let ended = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
                let timer = |ms: u64| {
                    let ended = ended.clone();
                    fastedge_runtime::spawn(async move {
                        fastedge_runtime::sleep_until(base + Duration::from_millis(ms)).await;
                        ended.borrow_mut().push((ms, base.elapsed()));
                    })
                };
                let (later, earlier) = (timer(150), timer(50));
                // Both register their timers before the thread is held.
                fastedge_runtime::sleep(Duration::from_millis(1)).await;
                std::thread::sleep(held);
                later.await;
                earlier.await;
                order.push(ended.take());
            }
            (past, told, order)
        }
    })
    .unwrap();
    let (_, (past, told, order)) = executors.join().unwrap().pop().unwrap();
    assert!(told, "a timer told another deadline than its own");
    assert!(
        past < Duration::from_millis(50),
        "a past deadline took {past:?}"
    );
    for ended in order {
        assert_eq!(
            ended.iter().map(|(ms, _)| *ms).collect::<Vec<_>>(),
            [50, 150],
            "{ended:?}"
        );
        for (ms, at) in ended {
            assert!(
                at >= Duration::from_millis(ms),
                "the {ms} ms timer ended at {at:?}"
            );
            assert!(
                at < Duration::from_secs(2),
                "the {ms} ms timer ended at {at:?}"
            );
        }
    }
}

#[test]
fn a_listener_stopped_with_an_accept_in_flight_listens_no_more() {
    // An accept in flight holds the socket in the kernel past the descriptor's close (on
    // glommio until the ring ends, after the executor): a closed listener must stop listening
    // at once, for a user who binds the address again (see RESTARTS for how often it did not).
    let cpu = CpuList::available().unwrap().cpus()[0];
    let cpus: CpuList = cpu.to_string().parse().unwrap();
    for round in 0..RESTARTS {
        let listener = bind_reuseport("127.0.0.1:0".parse().unwrap(), 1, 16)
            .unwrap()
            .pop()
            .unwrap();
        let addr = listener.local_addr();
        let mut listener = Some(listener);
        let stop = Shutdown::new();
        let executors = Executors::spawn_on(fastedge_tests::engine(), "stop", &cpus, |_| {
            let listener = listener.take().unwrap();
            let stop = stop.clone();
            move || async move {
                let listener = listener.into_listener().unwrap();
                // Nobody connects: the accept is in the kernel when the stop comes.
                assert!(stop.until(listener.accept()).await.is_none());
                listener.close().unwrap();
            }
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(3));
        // Bound listening already: this checks the table is read right, or the check after
        // the stop could not fail.
        assert!(listening_on(addr), "round {round}: {addr} listens");
        stop.trigger();
        executors.join().unwrap();
        // The kernel's socket table, not a connect: a connect to a free port of the ephemeral
        // range may pick that very port and connect to itself.
        assert!(
            !listening_on(addr),
            "round {round}: {addr} still listens after its listener was closed"
        );
    }
}

/// Whether a TCP socket listens on `addr` (IPv4) in this network namespace, from
/// `/proc/net/tcp` (`local_address` as hex `ADDR:PORT`, state `0A` for LISTEN).
fn listening_on(addr: std::net::SocketAddr) -> bool {
    let std::net::SocketAddr::V4(v4) = addr else {
        panic!("IPv4 only: {addr}")
    };
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    );
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"0A")
        })
}

//! The XDP pre-filter of a running `fastedge split`, fed by `fastedge gen` over veth: rules
//! from the config drop, pass and bypass exactly the frames they name (the ways, the counters
//! and the per-rule hits agree); rules added and removed with `fastedge ctl` under traffic lose
//! nothing; NetControl-shaped rules from the example client expire on time; a NetControl rule
//! aimed at one way keeps its flow from that way only.

// Test code: an unwrap that fails is a failed test.
#![allow(clippy::unwrap_used)]

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use fastedge_tests::{
    netns::VethPair,
    process::{fastedge_bin, Fastedge},
    ways::{attach, gen, read_markers, WayFiles},
    TempDir,
};

fn ctl_json(socket: &Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new(fastedge_bin())
        .arg("ctl")
        .arg("-s")
        .arg(socket)
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ctl {args:?}: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(text.trim()).unwrap()
}

/// `fastedge gen --one-way ARGS…` from the pair's far side.
fn send(pair: &VethPair, args: &[&str]) {
    let mut all = vec!["--one-way"];
    all.extend_from_slice(args);
    gen(&pair.ns_b, &pair.dev_b, &all);
}

/// Waits until `stats` (from ctl) satisfies `check`; returns them.
fn stats_until(
    socket: &Path,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = ctl_json(socket, &["stats"])["stats"].clone();
        if check(&stats) {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {stats}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Split {
    pair: VethPair,
    _dir: TempDir,
    _files: WayFiles,
    name: String,
    socket: PathBuf,
    process: Fastedge,
}

fn start(rules: &[&str]) -> Split {
    start_with(rules, "type = \"balance\"\nways = 2")
}

/// A split whose pipeline's `[output]` is `output` (TOML).
fn start_with(rules: &[&str], output: &str) -> Split {
    let pair = VethPair::new();
    let dir = TempDir::new("prefilter");
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("pf{}x{n}", std::process::id());
    let files = WayFiles(name.clone());
    let config = dir.path().join("pipeline.toml");
    let rules: Vec<String> = rules.iter().map(|r| format!("{r:?}")).collect();
    std::fs::write(
        &config,
        format!(
            "name = \"{name}\"\nway_kib = 1024\nrules = [{}]\n[[input]]\ninterface = \"{}\"\n[output]\n{output}\n",
            rules.join(", "),
            pair.dev_a
        ),
    )
    .unwrap();
    let socket = dir.path().join("ctl.sock");
    let process = Fastedge::start_in(
        Some(&pair.ns_a),
        &[
            "split",
            "--config",
            config.to_str().unwrap(),
            "--control",
            socket.to_str().unwrap(),
        ],
        &[("FASTEDGE_LOG", "info")],
    );
    process.wait_for_logged("split running", Duration::from_secs(15));
    Split {
        pair,
        _dir: dir,
        _files: files,
        name,
        socket,
        process,
    }
}

fn hits(socket: &Path) -> Vec<(String, u64)> {
    ctl_json(socket, &["rules", "list"])["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["rule"].as_str().unwrap().to_owned(),
                r["hits"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn config_rules_drop_pass_and_bypass_exactly_what_they_name() {
    // Flow k's client is 10.1.0.k: flows 0-63 dropped, 64-127 bypassed except 64-79 (a more
    // specific pass), 128-255 untouched.
    let split = start(&[
        "drop src 10.1.0.0/26",
        "bypass src 10.1.0.64/26",
        "pass src 10.1.0.64/28",
    ]);
    let mut consumers = attach(&split.name, 0..2);
    send(
        &split.pair,
        &["--flows", "256", "--count", "2560", "--rate", "20000"],
    );
    let arrivals = read_markers(&mut consumers, 1440, Duration::from_secs(2));
    let flows: HashSet<u32> = arrivals.values().map(|v| v[0].1).collect();
    let expected: HashSet<u32> = (64..80).chain(128..256).collect();
    assert_eq!(flows, expected, "exactly the passed flows reach the ways");
    assert_eq!(arrivals.len(), 1440, "every frame of them, once");
    let stats = stats_until(&split.socket, "the counters", |s| {
        s["inputs"][0]["prefilter_dropped"] == 640
    });
    assert_eq!(stats["inputs"][0]["prefilter_bypassed"], 480, "{stats}");
    assert_eq!(
        hits(&split.socket),
        vec![
            ("drop src 10.1.0.0/26".to_owned(), 640),
            ("bypass src 10.1.0.64/26".to_owned(), 480),
            ("pass src 10.1.0.64/28".to_owned(), 160),
        ]
    );
}

#[test]
fn rules_added_and_removed_under_traffic_lose_nothing() {
    let split = start(&[]);
    let mut consumers = attach(&split.name, 0..2);
    let pair = &split.pair;
    let socket = split.socket.clone();
    let total: u64 = 40_000;
    let (arrivals, added) = std::thread::scope(|s| {
        let reader =
            s.spawn(move || read_markers(&mut consumers, total as usize, Duration::from_secs(3)));
        let sender = s.spawn(|| {
            send(
                pair,
                &[
                    "--flows",
                    "512",
                    "--client",
                    "10.2.0.0",
                    "--count",
                    &total.to_string(),
                    "--rate",
                    "20000",
                ],
            )
        });
        std::thread::sleep(Duration::from_millis(600));
        let added = ctl_json(&socket, &["rules", "add", "drop", "src", "10.2.0.0/24"]);
        std::thread::sleep(Duration::from_millis(600));
        let id = added["id"].as_u64().unwrap().to_string();
        let removed = ctl_json(&socket, &["rules", "del", &id]);
        assert_eq!(removed["removed"], "drop src 10.2.0.0/24");
        sender.join().unwrap();
        (reader.join().unwrap(), added)
    });
    assert_eq!(added["rule"], "drop src 10.2.0.0/24");
    let stats = stats_until(&split.socket, "all frames counted", |s| {
        s["inputs"][0]["received"].as_u64().unwrap()
            + s["inputs"][0]["prefilter_dropped"].as_u64().unwrap()
            == total
    });
    let dropped = stats["inputs"][0]["prefilter_dropped"].as_u64().unwrap();
    assert!(dropped > 1000, "the rule dropped while it was in: {stats}");
    assert_eq!(
        arrivals.len() as u64 + dropped,
        total,
        "every frame delivered or dropped by the rule"
    );
    // Every frame missing from the ways is from the ruled /24 (flows 0-255 of 10.2.0.0).
    let spec_flows = 512u64;
    for seq in 0..total {
        if !arrivals.contains_key(&seq) {
            let flow = seq % spec_flows;
            assert!(
                flow < 256,
                "frame {seq} (flow {flow}) lost though no rule named it"
            );
        }
    }
}

#[test]
fn netcontrol_example_client_drops_a_flow_until_the_rule_expires() {
    let split = start(&[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/netcontrol-client.py");
    let client = |args: &[&str]| {
        let out = Command::new("python3")
            .arg(&script)
            .arg(&split.socket)
            .args(args)
            .output()
            .unwrap();
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.success(), answer)
    };
    let (ok, answer) = client(&["drop-address", "10.3.0.5", "--expire", "2"]);
    assert!(ok, "{answer}");
    assert_eq!(answer["result"], "added");
    let added_at = Instant::now();
    let mut consumers = attach(&split.name, 0..2);
    let send = |first: &str| {
        send(
            &split.pair,
            &[
                "--flows",
                "1",
                "--client",
                "10.3.0.5",
                "--count",
                "100",
                "--rate",
                "10000",
                "--first-seq",
                first,
            ],
        )
    };
    send("0");
    let during = read_markers(&mut consumers, 100, Duration::from_millis(700));
    assert!(
        during.is_empty(),
        "dropped while the rule holds: {} arrived",
        during.len()
    );
    stats_until(&split.socket, "100 dropped", |s| {
        s["inputs"][0]["prefilter_dropped"] == 100
    });
    std::thread::sleep(Duration::from_millis(2300).saturating_sub(added_at.elapsed()));
    send("1000");
    let after = read_markers(&mut consumers, 100, Duration::from_secs(2));
    assert_eq!(after.len(), 100, "passes again after expiry");
    assert!(
        ctl_json(&split.socket, &["rules", "list"])["rules"]
            .as_array()
            .unwrap()
            .is_empty(),
        "the expired rule is gone"
    );

    // A connection (both directions), removal by id, and errors with the reason.
    let (ok, conn) = client(&[
        "drop-connection",
        "10.4.0.1",
        "5555/tcp",
        "10.0.0.1",
        "80/tcp",
    ]);
    assert!(ok && conn["rules"].as_array().unwrap().len() == 2, "{conn}");
    let id = conn["id"].as_u64().unwrap().to_string();
    let (ok, removed) = client(&["remove", &id]);
    assert!(ok && removed["result"] == "removed", "{removed}");
    let (ok, error) = client(&["remove", &id]);
    assert!(!ok && error["result"] == "error", "{error}");
    let raw = fastedge_runtime::control::request(
        &split.socket,
        &serde_json::json!({"cmd": "netcontrol", "op": "add", "rule": {"ty": "drop", "entity": {"ty": "mac", "mac": "02:00:00:00:00:01"}}}),
    )
    .unwrap();
    assert_eq!(raw["result"], "error");
    assert!(raw["error"].as_str().unwrap().contains("MAC"), "{raw}");
    drop(split.process);
}

#[test]
fn a_netcontrol_rule_aimed_at_one_way_drops_its_flow_there_only() {
    // Every frame to both ways; the rule is for way 1.
    let split = start_with(&[], "type = \"dup\"\nways = 2");
    let netcontrol = |request: serde_json::Value| {
        fastedge_runtime::control::request(&split.socket, &request).unwrap()
    };
    let added = netcontrol(serde_json::json!({
        "cmd": "netcontrol", "op": "add",
        "rule": {"ty": "drop", "way": 1, "entity": {"ty": "address", "ip": "10.3.0.5"}},
    }));
    assert_eq!(added["result"], "added", "{added}");
    assert_eq!(added["way"], 1);
    let listed = ctl_json(&split.socket, &["rules", "list"]);
    assert!(listed["rules"].as_array().unwrap().is_empty(), "{listed}");
    assert_eq!(listed["way_rules"].as_array().unwrap().len(), 2, "{listed}");
    let mut consumers = attach(&split.name, 0..2);
    let send_from = |client: &str, first: &str| {
        send(
            &split.pair,
            &[
                "--flows",
                "1",
                "--client",
                client,
                "--count",
                "100",
                "--rate",
                "10000",
                "--first-seq",
                first,
            ],
        )
    };
    let ways_of = |arrivals: &std::collections::HashMap<u64, Vec<(usize, u32)>>,
                   seqs: std::ops::Range<u64>| {
        seqs.map(|s| {
            let mut ways: Vec<usize> = arrivals
                .get(&s)
                .map(|a| a.iter().map(|(w, _)| *w).collect())
                .unwrap_or_default();
            ways.sort_unstable();
            ways
        })
        .collect::<HashSet<Vec<usize>>>()
    };
    send_from("10.3.0.5", "0");
    send_from("10.3.0.6", "1000");
    let arrivals = read_markers(&mut consumers, 300, Duration::from_millis(700));
    assert_eq!(
        ways_of(&arrivals, 0..100),
        HashSet::from([vec![0]]),
        "10.3.0.5: way 0 only"
    );
    assert_eq!(
        ways_of(&arrivals, 1000..1100),
        HashSet::from([vec![0, 1]]),
        "another client: both ways"
    );
    let stats = stats_until(&split.socket, "100 kept from way 1", |s| {
        s["ways"][1]["filtered"] == 100
    });
    assert_eq!(stats["ways"][0]["filtered"], 0, "{stats}");
    assert_eq!(stats["inputs"][0]["prefilter_dropped"], 0, "not in XDP");

    // Removed: way 1 gets the address again.
    let removed = netcontrol(serde_json::json!({
        "cmd": "netcontrol", "op": "remove", "id": added["id"].clone(),
    }));
    assert_eq!(removed["result"], "removed", "{removed}");
    // The engine takes the change at the end of its next batch: send until it has.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut first = 2000u64;
    loop {
        send_from("10.3.0.5", &first.to_string());
        let arrivals = read_markers(&mut consumers, 200, Duration::from_millis(700));
        if ways_of(&arrivals, first + 50..first + 100) == HashSet::from([vec![0, 1]]) {
            break;
        }
        assert!(Instant::now() < deadline, "way 1 never got 10.3.0.5 back");
        first += 1000;
    }
    // A way the pipeline does not have is refused with the reason.
    let refused = netcontrol(serde_json::json!({
        "cmd": "netcontrol", "op": "add",
        "rule": {"ty": "drop", "way": 2, "entity": {"ty": "address", "ip": "10.3.0.5"}},
    }));
    assert_eq!(refused["result"], "error");
    assert!(
        refused["error"].as_str().unwrap().contains("ways 0 to 1"),
        "{refused}"
    );
    drop(split.process);
}

//! The split supervisor: runs a pipeline with the engine ([`crate::split::run`]) until told to
//! stop, and around it everything a long-running split needs: reloads (the pipeline stops,
//! the config file is read again, and the new pipeline starts on the same ways; when it cannot
//! start, the one before it runs again), the pre-filter rules and their expiry, the control
//! socket, veth outputs, and the counters as text for people.
//!
//! ```no_run
//! use fastedge_rings::{pipeline::PipelineConfig, supervisor::{Supervisor, SupervisorOptions}};
//!
//! let config = PipelineConfig::from_toml(
//!     "[[input]]\ninterface = \"eth1\"\n[output]\ntype = \"balance\"\nways = 4\n",
//! )?;
//! let supervisor = Supervisor::new(config, SupervisorOptions::default());
//! // SIGINT/SIGTERM stop it, SIGHUP reloads; `supervisor.handle()` does the same from code.
//! supervisor.handle().handle_signals()?;
//! let stats = supervisor.run(|now, _before| eprintln!("{} frames", now.received()))?;
//! println!("{}", stats.summary());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use fastedge_ebpf::rules::{Prefilter, RuleTable};
use fastedge_runtime::{
    control::{ControlError, ControlServer},
    signals::{Signal, SignalError},
};

use crate::{
    control::{self, ControlState},
    pipeline::{BrickConfig, PipelineConfig, PipelineError, ValidPipeline},
    rules::{Rules, RulesError, SharedRules},
    split::{self, EngineOptions, InputKind, SplitError, SplitStats},
    veth::{VethError, VethPairs},
};

/// Where the control socket goes and who may use it.
#[derive(Debug, Clone)]
pub struct ControlSocket {
    /// Its path; `None`: [`control::default_socket`] of the pipeline's name.
    pub path: Option<PathBuf>,
    /// Its permissions, e.g. 0o600.
    pub mode: u32,
}

/// How the supervisor runs the pipeline.
#[derive(Debug, Clone, Default)]
pub struct SupervisorOptions {
    /// CPUs to pin the engine threads to, in turn; empty: no pinning.
    pub cores: Vec<usize>,
    /// Run the pipeline in the kernel when it can ([`split::fast_plan`]).
    pub fast_path: bool,
    /// The file the pipeline came from: a reload reads it again. `None`: a reload restarts
    /// the same pipeline.
    pub config_path: Option<PathBuf>,
    /// Serve the control socket; `None`: no socket.
    pub control: Option<ControlSocket>,
    /// Make veth pairs PREFIX0/PREFIX0p … for the pipeline's interface outputs (as many as it
    /// has ways or interface outputs), deleted at the end.
    pub veth_prefix: Option<String>,
    /// Entries of each AF_XDP socket's receive ring ([`split::EngineOptions::xdp_ring`]);
    /// `None`: the default.
    pub xdp_ring: Option<u32>,
}

/// Why the split could not run.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The pipeline is not valid.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// The veth outputs could not be made.
    #[error(transparent)]
    Veth(#[from] VethError),
    /// The pre-filter's maps could not be made while the pipeline has rules.
    #[error(transparent)]
    Prefilter(#[from] fastedge_ebpf::EbpfError),
    /// The pipeline's rules were refused.
    #[error(transparent)]
    Rules(#[from] RulesError),
    /// The control socket could not be served.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// A thread of the supervisor could not start.
    #[error("starting the {what} thread: {source}")]
    Thread {
        /// Which one.
        what: &'static str,
        /// The system's answer.
        source: std::io::Error,
    },
    /// The pipeline could not start in the first place.
    #[error(transparent)]
    Start(SplitError),
    /// The engine failed while running (or after a reload, with nothing to go back to).
    #[error(transparent)]
    Engine(SplitError),
}

impl SupervisorError {
    /// True when the configuration (not the system) is at fault.
    pub fn is_config(&self) -> bool {
        match self {
            SupervisorError::Pipeline(_)
            | SupervisorError::Rules(_)
            | SupervisorError::Control(_) => true,
            SupervisorError::Veth(e) => e.is_config(),
            SupervisorError::Start(e) => e.is_config(),
            SupervisorError::Prefilter(_)
            | SupervisorError::Thread { .. }
            | SupervisorError::Engine(_) => false,
        }
    }
}

/// What was asked of a running split.
#[derive(Debug, Default)]
struct Requests {
    /// Stop the engine now (for a shutdown or a reload).
    engine_stop: AtomicBool,
    shutdown: AtomicBool,
    reload: AtomicBool,
}

/// Asks a running split to reload or stop; cheap to clone, usable from any thread.
#[derive(Debug, Clone, Default)]
pub struct SplitHandle(Arc<Requests>);

impl SplitHandle {
    /// A handle for a split not started yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stop: the engine stops, the ways are removed, [`Supervisor::run`] returns.
    pub fn shutdown(&self) {
        self.0.shutdown.store(true, Ordering::Relaxed);
        self.0.engine_stop.store(true, Ordering::Relaxed);
    }

    /// Reload: the engine stops and starts again with the config file read again.
    pub fn reload(&self) {
        self.0.reload.store(true, Ordering::Relaxed);
        self.0.engine_stop.store(true, Ordering::Relaxed);
    }

    /// True once a shutdown was asked for.
    pub fn is_shutting_down(&self) -> bool {
        self.0.shutdown.load(Ordering::Relaxed)
    }

    /// SIGINT and SIGTERM shut down, SIGHUP reloads: the signals are blocked in the calling
    /// thread and taken by a thread of their own. Call before other threads start.
    pub fn handle_signals(&self) -> Result<(), SignalError> {
        let handle = self.clone();
        fastedge_runtime::signals::handle(
            &[Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP],
            move |signal| {
                if signal == Signal::SIGHUP {
                    tracing::info!("SIGHUP: reloading the pipeline");
                    handle.reload();
                    true
                } else {
                    handle.shutdown();
                    false
                }
            },
        )
    }
}

/// A split pipeline with its options, ready to run.
#[derive(Debug)]
pub struct Supervisor {
    config: ValidPipeline,
    options: SupervisorOptions,
    handle: SplitHandle,
}

/// The pre-filter's maps and rule table, with the config's rules installed and a thread that
/// removes expired rules. `None` when BPF maps cannot be made (no CAP_BPF) and no rule is
/// configured: then the split runs without a pre-filter, and says so.
fn set_up_rules(
    config: &PipelineConfig,
) -> Result<Option<(Arc<Prefilter>, SharedRules)>, SupervisorError> {
    let prefilter = match Prefilter::create(config.rule_capacity) {
        Ok(p) => Arc::new(p),
        Err(error) if config.rules.is_empty() => {
            tracing::warn!(%error, "no XDP pre-filter: rules cannot be added");
            return Ok(None);
        }
        Err(error) => return Err(error.into()),
    };
    let mut rules = Rules::new(RuleTable::new(prefilter.clone()));
    rules.set_config_rules(&config.rules)?;
    if !config.rules.is_empty() {
        tracing::info!(rules = config.rules.len(), "pre-filter rules installed");
    }
    let rules = Arc::new(Mutex::new(rules));
    let sweeper = Arc::downgrade(&rules);
    std::thread::Builder::new()
        .name("rule-expiry".into())
        .spawn(move || {
            while let Some(rules) = sweeper.upgrade() {
                if let Ok(mut rules) = rules.lock() {
                    let gone = rules.expire();
                    if gone > 0 {
                        tracing::info!(rules = gone, "pre-filter rules expired");
                    }
                }
                drop(rules);
                std::thread::sleep(Duration::from_millis(200));
            }
        })
        .map_err(|source| SupervisorError::Thread {
            what: "rule expiry",
            source,
        })?;
    Ok(Some((prefilter, rules)))
}

/// How many interface outputs the pipeline's top brick has.
fn interface_outputs(config: &PipelineConfig) -> u32 {
    match &config.output {
        BrickConfig::Balance { to, .. } | BrickConfig::Dup { to, .. } => {
            to.iter()
                .filter(|b| matches!(b, BrickConfig::Interface { .. }))
                .count() as u32
        }
        _ => 0,
    }
}

/// The largest MTU of the pipeline's interface inputs (veth outputs get it, so that every
/// frame received can leave on them); `None` without interface inputs.
fn inputs_mtu(config: &PipelineConfig) -> Option<usize> {
    input_interfaces(config).filter_map(crate::sys::mtu).max()
}

/// The interfaces the pipeline reads.
fn input_interfaces(config: &PipelineConfig) -> impl Iterator<Item = &str> {
    config
        .inputs
        .iter()
        .filter_map(|input| input.interface.as_deref())
}

/// The most receive queues of the pipeline's interface inputs: an engine thread each, and
/// veth outputs get as many queues, so that each thread sends on one of its own.
fn inputs_queues(config: &PipelineConfig) -> u32 {
    input_interfaces(config)
        .map(crate::sys::rx_queues)
        .max()
        .unwrap_or(1)
}

/// The pipeline in `path`, read again (and validated) for a reload.
fn read_config(path: &Path) -> Result<ValidPipeline, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    PipelineConfig::from_toml(&text).map_err(|e| e.to_string())
}

impl Supervisor {
    /// A supervisor of `config` (checked when it was made); nothing starts until
    /// [`Supervisor::run`].
    pub fn new(config: ValidPipeline, options: SupervisorOptions) -> Self {
        Self {
            config,
            options,
            handle: SplitHandle::new(),
        }
    }

    /// The handle that reloads or stops this split.
    pub fn handle(&self) -> SplitHandle {
        self.handle.clone()
    }

    /// Runs until a shutdown (from the handle, a signal it handles, or the control socket) or
    /// until the pipeline's capture-file inputs end; returns the last counters. `tick` is
    /// called about once a second with the counters and those of the tick before (zero after
    /// each start of the pipeline).
    pub fn run(
        self,
        mut tick: impl FnMut(&SplitStats, &SplitStats),
    ) -> Result<SplitStats, SupervisorError> {
        let Supervisor {
            mut config,
            options,
            handle,
        } = self;
        let _veths = match &options.veth_prefix {
            Some(prefix) => Some(VethPairs::create(
                prefix,
                config.way_count().max(interface_outputs(&config)),
                inputs_mtu(&config),
                inputs_queues(&config),
            )?),
            None => None,
        };
        let (prefilter, rules) = match set_up_rules(&config)? {
            Some((prefilter, rules)) => (Some(prefilter), Some(rules)),
            None => (None, None),
        };
        let state = Arc::new(ControlState {
            handle: handle.clone(),
            config: Mutex::new(config.clone()),
            approved: Mutex::new(None),
            config_path: options.config_path.clone(),
            stats: Mutex::new(SplitStats::default()),
            started: Instant::now(),
            rules: rules.clone(),
        });
        let _control = match &options.control {
            Some(socket) => {
                let path = socket
                    .path
                    .clone()
                    .unwrap_or_else(|| control::default_socket(&config.name()));
                let state = state.clone();
                Some(ControlServer::start(
                    &path,
                    socket.mode,
                    move |cmd, request| control::answer(&state, cmd, request),
                )?)
            }
            None => None,
        };
        let requests = &handle.0;
        let mut reuse_ways = false;
        // One random key for the whole run (a pipeline's own `hash_key` wins), so that a reload
        // keeps flows on their ways.
        let hash_key = crate::pipeline::random_hash_key()?;
        // The pipeline that ran before a reload, to go back to if the new one cannot start.
        let mut fallback: Option<ValidPipeline> = None;
        // A service manager hears READY at each start of the pipeline, a status line and a
        // watchdog ping with every tick.
        let watchdog = fastedge_runtime::notify::watchdog_interval();
        let mut last_ping = None;
        // TAP outputs outlive each run of the pipeline: a reload keeps the devices (and what
        // captures on them); they go when the split stops.
        let taps = crate::afpacket::TapDevices::default();
        let way_filters = rules
            .as_ref()
            .and_then(|r| r.lock().ok().map(|r| r.way_filters()));
        loop {
            let mut previous = SplitStats::default();
            let mut announced = false;
            let engine = EngineOptions {
                cores: options.cores.clone(),
                reuse_ways,
                prefilter: prefilter.clone(),
                fast_path: options.fast_path,
                hash_key: Some(hash_key),
                prefilter_wanted: options.control.is_some() || !config.rules.is_empty(),
                taps: taps.clone(),
                way_filters: way_filters.clone(),
                xdp_ring: options.xdp_ring,
            };
            let result = split::run(&config, &engine, &requests.engine_stop, |stats| {
                let line = format!("{}: {}", config.name(), stats.summary());
                if announced {
                    fastedge_runtime::notify::status(&line);
                } else {
                    fastedge_runtime::notify::ready(&line);
                    announced = true;
                }
                fastedge_runtime::notify::watchdog_due(watchdog, &mut last_ping);
                tick(stats, &previous);
                previous = stats.clone();
                if let Ok(mut latest) = state.stats.lock() {
                    *latest = stats.clone();
                }
            });
            let stats = match result {
                Ok(stats) => stats,
                Err(error) => match fallback.take() {
                    // The reloaded pipeline cannot start: run the one before it again.
                    Some(previous) if !requests.shutdown.load(Ordering::Relaxed) => {
                        tracing::error!(%error, "reload: the new pipeline cannot start; going back to the previous one");
                        if let Ok(mut current) = state.config.lock() {
                            *current = previous.clone();
                        }
                        config = previous;
                        requests.engine_stop.store(false, Ordering::Relaxed);
                        continue;
                    }
                    _ if !reuse_ways => return Err(SupervisorError::Start(error)),
                    _ => return Err(SupervisorError::Engine(error)),
                },
            };
            fallback = None;
            if !requests.reload.swap(false, Ordering::Relaxed)
                || requests.shutdown.load(Ordering::Relaxed)
            {
                fastedge_runtime::notify::stopping("stopping: removing the ways");
                tracing::info!("split stopped: {}", stats.summary());
                crate::shm::remove_ways(&config.name(), config.way_count());
                return Ok(stats);
            }
            fastedge_runtime::notify::reloading();
            tracing::info!("reload: pipeline stopped: {}", stats.summary());
            if let Some(path) = &options.config_path {
                // A pipeline the control socket checked before asking for this reload is the
                // one to run; otherwise (SIGHUP, the handle) the file is read now.
                let approved = state.approved.lock().ok().and_then(|mut a| a.take());
                match approved.map_or_else(|| read_config(path), Ok) {
                    Ok(new) => {
                        if new.rule_capacity != config.rule_capacity {
                            tracing::warn!(
                                "reload: rule_capacity changes on restart only; keeping {}",
                                config.rule_capacity
                            );
                        }
                        if let Some(rules) = &rules {
                            let synced = rules
                                .lock()
                                .map_err(|_| "rules lock".to_owned())
                                .and_then(|mut r| {
                                    r.set_config_rules(&new.rules).map_err(|e| e.to_string())
                                });
                            if let Err(error) = synced {
                                tracing::error!("reload: rules: {error}");
                            }
                        }
                        fallback = Some(std::mem::replace(&mut config, new));
                    }
                    Err(error) => tracing::error!(
                        path = %path.display(),
                        "reload: {error}; keeping the pipeline in use"
                    ),
                }
            }
            if let Ok(mut current) = state.config.lock() {
                *current = config.clone();
            }
            // TAP outputs the new pipeline no longer has go now; the others stay.
            taps.retain(&crate::pipeline::Pipeline::tap_names(&config));
            requests.engine_stop.store(false, Ordering::Relaxed);
            if requests.shutdown.load(Ordering::Relaxed) {
                return Ok(stats);
            }
            reuse_ways = true;
            tracing::info!("reload: starting the pipeline again");
        }
    }
}

impl SplitStats {
    /// Every counter in one line: per input (kernel drops by cause), per way, per output
    /// interface and capture file.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        for input in &self.inputs {
            let kind = input.kind.map_or("-".to_owned(), |k| k.to_string());
            let drops = match input.kind {
                Some(InputKind::Xdp(_)) => format!(
                    "; pre-filter dropped {}, bypassed {}; kernel drops: ring full {}, fill ring empty {}, other {}, invalid {}; longer than 64 KiB {}",
                    input.prefilter_dropped,
                    input.prefilter_bypassed,
                    input.xsk.rx_ring_full,
                    input.xsk.rx_fill_ring_empty,
                    input.xsk.rx_dropped,
                    input.xsk.rx_invalid,
                    input.xsk.rx_too_long
                ),
                Some(InputKind::AfPacket) => format!(
                    "; kernel drops: ring full {} (ring frozen {} times)",
                    input.packet.drops, input.packet.freezes
                ),
                _ => String::new(),
            };
            let kernel = input.in_kernel.map_or(String::new(), |n| {
                format!("; in-kernel fast path: {n} frames")
            });
            parts.push(format!(
                "{} ({kind}, {} queue(s)): received {} ({} bytes){kernel}{drops}",
                input.name, input.queues, input.received, input.bytes
            ));
        }
        parts.push(format!(
            "non-IP {}, parse errors {}",
            self.non_ip, self.parse_errors
        ));
        if !self.ways.is_empty() {
            let ways: Vec<String> = self
                .ways
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    format!(
                        "{i}:{}/{}{}{}{}",
                        w.delivered,
                        w.dropped_full,
                        if w.consumer.is_some() {
                            ""
                        } else {
                            "(no consumer)"
                        },
                        if w.bad_positions > 0 {
                            format!("(bad consumer positions {})", w.bad_positions)
                        } else {
                            String::new()
                        },
                        if w.filtered > 0 {
                            format!("(kept back by way rules {})", w.filtered)
                        } else {
                            String::new()
                        }
                    )
                })
                .collect();
            parts.push(format!("ways delivered/dropped-full {}", ways.join(" ")));
        }
        for iface in &self.interfaces {
            parts.push(format!(
                "output {} ({}): sent {} (+{} in the kernel), dropped (queue full) {}",
                iface.name, iface.transmit, iface.sent, iface.sent_in_kernel, iface.dropped
            ));
        }
        for pcap in &self.pcaps {
            parts.push(format!(
                "{}: written {} ({} bytes) in {} file(s), write errors {}",
                pcap.path.display(),
                pcap.written,
                pcap.bytes,
                pcap.files,
                pcap.errors
            ));
        }
        parts.join("; ")
    }

    /// The live line: rates per second since `previous` (a second ago), and drops by cause.
    pub fn live_line(&self, previous: &SplitStats) -> String {
        let rate = self.received() - previous.received();
        let ways: Vec<String> = self
            .ways
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let before = previous.ways.get(i).copied().unwrap_or_default();
                format!("{}", w.delivered - before.delivered)
            })
            .collect();
        let full: u64 = self.ways.iter().map(|w| w.dropped_full).sum();
        let kernel: u64 = self
            .inputs
            .iter()
            .map(|i| {
                i.xsk.rx_ring_full + i.xsk.rx_fill_ring_empty + i.xsk.rx_dropped + i.packet.drops
            })
            .sum();
        let filtered: u64 = self
            .inputs
            .iter()
            .map(|i| i.prefilter_dropped + i.prefilter_bypassed)
            .sum();
        format!(
            "{rate} pps | per way/s [{}] | drops: way full {full}, kernel {kernel}, pre-filter {filtered}, non-IP {}, parse errors {}",
            ways.join(" "),
            self.non_ip,
            self.parse_errors
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use fastedge_runtime::control::request;
    use serde_json::json;

    use super::*;
    use crate::pcap::{CaptureFormat, PcapSink, Rotation};

    /// Waits up to ten seconds for `check`.
    fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn an_embedded_split_answers_its_socket_reloads_and_stops_from_it() {
        let dir = std::env::temp_dir().join(format!("fastedge-supervisor-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Two frames at once, a third half a minute later: replayed at recorded speed, the
        // pipeline runs until it is stopped.
        let capture = dir.join("in.pcap");
        let mut sink =
            PcapSink::create(&capture, CaptureFormat::Pcap, Rotation::default()).unwrap();
        let frame = [
            [0xff; 6].as_slice(),
            &[2, 0, 0, 0, 0, 1],
            &[0x88, 0xb5],
            &[0; 50],
        ]
        .concat();
        for seconds in [0, 0, 30] {
            sink.write(&frame, 1_000_000_000 * (1_000 + seconds));
        }
        drop(sink);
        let name = format!("supervised{}", std::process::id());
        let config = PipelineConfig::from_toml(&format!(
            "name = {name:?}\nway_kib = 64\n[[input]]\npcap = {capture:?}\nspeed = \"recorded\"\n[output]\ntype = \"balance\"\nways = 2\n"
        ))
        .unwrap();
        let socket = dir.join("control.sock");
        let options = SupervisorOptions {
            control: Some(ControlSocket {
                path: Some(socket.clone()),
                mode: 0o600,
            }),
            ..SupervisorOptions::default()
        };
        let supervisor = Supervisor::new(config, options);
        let handle = supervisor.handle();
        // Per start of the pipeline (its first tick follows zero counters): frames received.
        let runs = Arc::new(Mutex::new(Vec::<u64>::new()));
        let seen = runs.clone();
        let running = std::thread::spawn(move || {
            supervisor.run(move |now, before| {
                let mut runs = seen.lock().unwrap();
                if before.inputs.is_empty() {
                    runs.push(0);
                }
                if let Some(last) = runs.last_mut() {
                    *last = now.received();
                }
            })
        });

        let ask = |cmd: &str| request(&socket, &json!({ "cmd": cmd })).unwrap();
        // The file appears at bind(), a moment before listen().
        wait_until("the control socket", || {
            request(&socket, &json!({"cmd": "help"})).is_ok()
        });
        wait_until("both frames counted", || {
            ask("stats")["stats"]["inputs"][0]["received"] == 2
        });
        let status = ask("status");
        assert_eq!(status["name"], name.as_str(), "{status}");
        assert_eq!(status["ways"], 2, "{status}");
        assert_eq!(status["inputs"][0]["mode"], "capture file", "{status}");
        assert!(crate::shm::way_path(&name, 1).exists());

        // A reload starts the pipeline again: the capture replays from its start.
        assert_eq!(ask("reload")["reload"], "started");
        wait_until("the second run to read both frames", || {
            *runs.lock().unwrap() == [2, 2]
        });
        assert!(!handle.is_shutting_down());
        assert_eq!(ask("shutdown")["shutdown"], "started");
        let stats = running.join().unwrap().unwrap();
        assert_eq!(stats.received(), 2, "the run after the reload: {stats:?}");
        assert!(
            stats.summary().contains("received 2"),
            "{}",
            stats.summary()
        );
        assert!(!socket.exists(), "the socket goes with the supervisor");
        assert!(
            !crate::shm::way_path(&name, 0).exists(),
            "ways removed at the end"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

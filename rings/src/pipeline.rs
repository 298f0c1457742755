//! Pipelines of bricks, as in packet-bricks: inputs merged into one tree of LoadBalancer
//! (`balance`), Duplicator (`dup`), shared-memory ways (`way`) and PcapWriter (`pcap`) bricks.
//!
//! Declared in TOML (see docs/configuration.md, "`fastedge split` pipelines"):
//!
//! ```toml
//! name = "ids"                      # ways are /dev/shm/fastedge/ids-0 … (default: first input)
//! [[input]]
//! interface = "eth1"                # mode = "auto" | "xdp-native" | "xdp-skb" | "af-packet"
//!                                   #   ("netmap": only in builds with the `netmap` feature)
//! [[input]]
//! interface = "eth2"                # several inputs: merged into one pipeline
//! [output]
//! type = "dup"                      # every packet to each group …
//! [[output.to]]
//! type = "balance"                  # … balanced over the group's ways by flow
//! ways = 4
//! [[output.to]]
//! type = "pcap"
//! path = "/var/capture/all.pcapng"
//! rotate_mb = 1024
//! ```
//!
//! Ways are numbered depth-first in the order they are declared.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use fastedge_wire::{
    packet::{flow_hash, way_of, HashKey, HashMode, Parsed},
    rules::RuleSpec,
};
use serde::{Deserialize, Serialize};

use crate::{
    afpacket::{InterfaceSink, InterfaceStats, TapDevices, TapSink},
    pcap::{CaptureFormat, PcapSink, Rotation},
    rules::{kept_from_way, WayFilters},
    shm::Producer,
};

/// A pipeline as declared.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Name in the way files' names; default: the first input's interface (or file stem).
    pub name: Option<String>,
    /// The `[[input]]` tables: interfaces and capture files, merged into one pipeline.
    #[serde(rename = "input", default)]
    pub inputs: Vec<InputConfig>,
    /// The `[output]` table: the root brick.
    pub output: BrickConfig,
    /// Hash tunnelled traffic (IP-in-IP, GRE, VXLAN) on its inner flow.
    #[serde(default = "yes")]
    pub decapsulate: bool,
    /// Ring size of each way in KiB (a power of two, at least 64).
    #[serde(default = "default_way_kib")]
    pub way_kib: usize,
    /// XDP pre-filter rules, e.g. `"drop src 203.0.113.0/24"` (syntax in
    /// `fastedge_wire::rules`); they apply to interfaces read through XDP.
    #[serde(default)]
    pub rules: Vec<String>,
    /// Most pre-filter rules (config, `fastedge ctl rules add`, NetControl) at once.
    #[serde(default = "default_rule_capacity")]
    pub rule_capacity: u32,
    /// Key of the flow hash, 32 hexadecimal digits; default: a random key each start (kept
    /// across reloads). Set it where another process must compute the same ways.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_key: Option<String>,
    /// A group (name or number) whose members may consume the ways (data 0640, positions
    /// 0660); default: none, the ways are private to the distributor's user (0600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub way_group: Option<String>,
}

/// A random flow-hash key from the system's random source.
pub fn random_hash_key() -> Result<HashKey, PipelineError> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| PipelineError::Invalid(format!("no random hash key: {e}")))?;
    Ok(HashKey::from_bytes(bytes))
}

fn default_rule_capacity() -> u32 {
    65_536
}

fn yes() -> bool {
    true
}

fn default_way_kib() -> usize {
    4096
}

/// Most shm ways one pipeline may declare.
pub const MAX_WAYS: u32 = 4096;
/// Largest ring of a way lane, in KiB (1 GiB).
pub const MAX_WAY_KIB: usize = 1 << 20;

/// One input of a pipeline: an interface or a capture file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// An interface to read (exactly one of `interface` and `pcap`).
    pub interface: Option<String>,
    /// A pcap or pcapng file of Ethernet frames to read.
    pub pcap: Option<PathBuf>,
    /// For `interface`: how it is read.
    #[serde(default)]
    pub mode: InputMode,
    /// For `pcap`: `fast` (default) or `recorded`.
    #[serde(default)]
    pub speed: SpeedName,
}

impl InputConfig {
    /// An input reading `interface` in `mode`.
    pub fn interface(interface: &str, mode: InputMode) -> Self {
        Self {
            interface: Some(interface.to_owned()),
            pcap: None,
            mode,
            speed: SpeedName::Fast,
        }
    }

    /// An input reading the capture file `pcap` at `speed`.
    pub fn pcap(pcap: &Path, speed: SpeedName) -> Self {
        Self {
            interface: None,
            pcap: Some(pcap.to_owned()),
            mode: InputMode::Auto,
            speed,
        }
    }
}

/// Where the outputs of a stage declared by count go (`fastedge split --to`): shared-memory
/// ways, or interfaces or TAP devices named by a prefix and the output's number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputKind {
    /// Shared-memory ways.
    Ways,
    /// Interfaces PREFIX0, PREFIX1 … (veth pairs the supervisor can create,
    /// [`crate::supervisor::SupervisorOptions::veth_prefix`]).
    Veth(String),
    /// TAP devices PREFIX0, PREFIX1 …, made by the pipeline.
    Tap(String),
}

impl OutputKind {
    /// `count` outputs of this kind as the `ways` and `to` of a balance or dup brick:
    /// `ways = count` for shared-memory ways, else `count` interface or TAP bricks.
    pub fn outputs(&self, count: u32) -> (Option<u32>, Vec<BrickConfig>) {
        match self {
            OutputKind::Ways => (Some(count), Vec::new()),
            OutputKind::Veth(prefix) => (
                None,
                (0..count)
                    .map(|k| BrickConfig::Interface {
                        name: format!("{prefix}{k}"),
                    })
                    .collect(),
            ),
            OutputKind::Tap(prefix) => (
                None,
                (0..count)
                    .map(|k| BrickConfig::Tap {
                        name: format!("{prefix}{k}"),
                    })
                    .collect(),
            ),
        }
    }
}

/// How an interface is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputMode {
    /// From the driver's XDP features ([`crate::split::auto_choice`]): native XDP with
    /// zero-copy AF_XDP where offered, else native XDP in copy mode; without native XDP, SKB
    /// mode where XDP is needed, else AF_PACKET.
    #[default]
    Auto,
    /// XDP in native (driver) mode + AF_XDP; fails where the driver lacks it.
    XdpNative,
    /// XDP in generic (SKB) mode + AF_XDP.
    XdpSkb,
    /// An AF_PACKET TPACKET_V3 ring, no XDP (and no pre-filter).
    AfPacket,
    /// A netmap port (an interface named `netmap:IFACE` asks for the same). Refused with the
    /// reason ([`NETMAP_UNAVAILABLE`]): no build reads netmap ports yet; builds with the
    /// `netmap` feature have netmap's bindings only.
    Netmap,
}

/// Why a netmap input is refused in this build.
#[cfg(not(feature = "netmap"))]
pub const NETMAP_UNAVAILABLE: &str = "this build has no netmap support: netmap is behind the \
    `netmap` build feature (off by default; `cargo build --features fastedge-rings/netmap`, on a \
    kernel with the netmap module); read the interface with mode auto, xdp-native, xdp-skb or \
    af-packet instead";
/// Why a netmap input is refused in this build.
#[cfg(feature = "netmap")]
pub const NETMAP_UNAVAILABLE: &str = "netmap input is not implemented yet (this build has \
    netmap's bindings only); read the interface with mode auto, xdp-native, xdp-skb or \
    af-packet instead";

impl InputConfig {
    /// True when this input asks for netmap (`mode = "netmap"` or a `netmap:` interface).
    pub fn wants_netmap(&self) -> bool {
        self.mode == InputMode::Netmap
            || self
                .interface
                .as_deref()
                .is_some_and(|i| i.starts_with("netmap:"))
    }
}

/// How fast a capture file is replayed (`speed`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SpeedName {
    /// As fast as the pipeline takes the frames.
    #[default]
    Fast,
    /// With the gaps between the recorded timestamps.
    Recorded,
}

/// Flow hash of a balance brick. The default, `2-tuple`, is the only mode that keeps every
/// packet of a flow (IP fragments included) on one way; see [`HashMode`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum HashName {
    /// The address pair only: every packet of a flow (fragments included) on one output.
    #[default]
    #[serde(rename = "2-tuple")]
    Two,
    /// Addresses and protocol.
    #[serde(rename = "3-tuple")]
    Three,
    /// Addresses, protocol and ports: spreads more; packets without readable ports (fragments) may
    /// land elsewhere than the rest of their flow.
    #[serde(rename = "5-tuple")]
    Five,
}

impl From<HashName> for HashMode {
    fn from(h: HashName) -> Self {
        match h {
            HashName::Two => HashMode::TwoTuple,
            HashName::Three => HashMode::ThreeTuple,
            HashName::Five => HashMode::FiveTuple,
        }
    }
}

/// A brick as declared.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum BrickConfig {
    /// LoadBalancer: each flow (both directions, all fragments) to one output.
    Balance {
        /// Which fields of the flow are hashed.
        #[serde(default)]
        hash: HashName,
        /// Shorthand for `to` = this many ways.
        ways: Option<u32>,
        /// The outputs, when `ways` is not given.
        #[serde(default)]
        to: Vec<BrickConfig>,
        /// Output that frames which are not IP (or do not parse) go to.
        #[serde(default)]
        non_ip: u32,
    },
    /// Duplicator: every packet to every output.
    Dup {
        /// Shorthand for `to` = this many ways.
        ways: Option<u32>,
        /// The outputs, when `ways` is not given.
        #[serde(default)]
        to: Vec<BrickConfig>,
    },
    /// A shared-memory way for a consumer application.
    Way {},
    /// A network interface: every packet it gets is sent out of it (e.g. one end of a veth
    /// pair whose other end an unmodified application captures on).
    Interface {
        /// The interface's name; it must exist.
        name: String,
    },
    /// A TAP device fastedge creates (and removes at exit): every packet it gets arrives on
    /// the device, where an application captures it.
    Tap {
        /// The device's name.
        name: String,
    },
    /// PcapWriter: every packet into a capture file.
    Pcap {
        /// The file to write (rotated files get `-1`, `-2`, … before the extension).
        path: PathBuf,
        /// `pcap` or `pcapng`; default by the file's extension (`.pcapng` → pcapng).
        format: Option<FormatName>,
        /// Start a new file after this many MiB.
        rotate_mb: Option<u64>,
        /// Start a new file after this many seconds.
        rotate_secs: Option<u64>,
    },
}

/// A capture file format (`format` of a `pcap` brick).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FormatName {
    /// Classic pcap, nanosecond timestamps.
    Pcap,
    /// pcapng.
    Pcapng,
}

/// A pipeline that cannot be built, and why.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The document is not TOML or does not match the pipeline's shape (unknown key, wrong type).
    #[error("pipeline: {0}")]
    Toml(#[from] toml::de::Error),
    /// The pipeline is well-formed but not acceptable (e.g. `ways` and `to` both given, a `non_ip`
    /// beyond the outputs, more than 4096 ways).
    #[error("pipeline: {0}")]
    Invalid(String),
    /// A way could not be created.
    #[error(transparent)]
    Shm(#[from] crate::shm::ShmError),
    /// A capture file could not be opened or created.
    #[error(transparent)]
    Pcap(#[from] crate::pcap::PcapError),
    /// An interface output could not be opened.
    #[error("output interface: {0}")]
    Interface(#[from] crate::afpacket::PacketError),
}

/// A pipeline that passed [`PipelineConfig::validate`], with its flow-hash key parsed and its
/// way group resolved. `validate` is its only constructor, so what takes one (the engine,
/// [`Pipeline::build_lanes`], the supervisor) never checks again. Reads as the
/// [`PipelineConfig`] it came from; to change it, take that back with
/// [`ValidPipeline::into_config`] and validate again.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct ValidPipeline {
    config: PipelineConfig,
    #[serde(skip)]
    hash_key: Option<HashKey>,
    #[serde(skip)]
    access: crate::shm::WayAccess,
}

impl ValidPipeline {
    /// The configured flow-hash key, if any (`None`: the caller picks a random one).
    pub fn hash_key(&self) -> Option<HashKey> {
        self.hash_key
    }

    /// Who may open the ways: the configured `way_group` resolved to its id.
    pub fn way_access(&self) -> crate::shm::WayAccess {
        self.access
    }

    /// The declaration it was made from.
    pub fn into_config(self) -> PipelineConfig {
        self.config
    }
}

impl std::ops::Deref for ValidPipeline {
    type Target = PipelineConfig;

    fn deref(&self) -> &PipelineConfig {
        &self.config
    }
}

impl PipelineConfig {
    /// Parses and checks a TOML pipeline.
    pub fn from_toml(text: &str) -> Result<ValidPipeline, PipelineError> {
        let config: Self = toml::from_str(text)?;
        config.validate()
    }

    /// Checks everything that can be checked without opening anything, once: the pipeline
    /// comes back as a [`ValidPipeline`].
    pub fn validate(self) -> Result<ValidPipeline, PipelineError> {
        let invalid = |what: String| Err(PipelineError::Invalid(what));
        if self.inputs.is_empty() {
            return invalid("no [[input]]: give at least one interface or pcap file".into());
        }
        for (i, input) in self.inputs.iter().enumerate() {
            match (&input.interface, &input.pcap) {
                (Some(_), None) | (None, Some(_)) => {}
                _ => {
                    return invalid(format!(
                        "input {i}: give exactly one of `interface` or `pcap`"
                    ))
                }
            }
            if input.pcap.is_some() && input.mode != InputMode::Auto {
                return invalid(format!("input {i}: `mode` applies to interfaces only"));
            }
            if input.wants_netmap() {
                return invalid(format!("input {i}: netmap: {NETMAP_UNAVAILABLE}"));
            }
        }
        if !self.way_kib.is_power_of_two() || !(64..=MAX_WAY_KIB).contains(&self.way_kib) {
            return invalid(format!(
                "way_kib = {} must be a power of two from 64 to {MAX_WAY_KIB}",
                self.way_kib
            ));
        }
        for rule in &self.rules {
            rule.parse::<fastedge_wire::rules::RuleSpec>()
                .map_err(|e| PipelineError::Invalid(format!("rule {rule:?}: {e}")))?;
        }
        if self.rule_capacity == 0 || (self.rules.len() as u64) > u64::from(self.rule_capacity) {
            return invalid(format!(
                "rule_capacity = {} must be at least 1 and hold the {} rules given",
                self.rule_capacity,
                self.rules.len()
            ));
        }
        let hash_key = self.parse_hash_key()?;
        let access = self.resolve_way_access()?;
        if let Some(name) = &self.name {
            if name.is_empty() || name.contains('/') {
                return invalid(format!("name {name:?} must be non-empty and without '/'"));
            }
        }
        check_brick(&self.output, "output")?;
        let ways = self.way_count();
        if ways > MAX_WAYS {
            return invalid(format!(
                "the pipeline declares {} ways, at most {MAX_WAYS}",
                if ways == u32::MAX {
                    "over 4 billion".to_owned()
                } else {
                    ways.to_string()
                }
            ));
        }
        Ok(ValidPipeline {
            config: self,
            hash_key,
            access,
        })
    }

    /// Who may open the ways: the configured `way_group` resolved to its id.
    fn resolve_way_access(&self) -> Result<crate::shm::WayAccess, PipelineError> {
        let Some(group) = &self.way_group else {
            return Ok(crate::shm::WayAccess::default());
        };
        let gid = match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => nix::unistd::Group::from_name(group)
                .map_err(|e| PipelineError::Invalid(format!("way_group {group:?}: {e}")))?
                .ok_or_else(|| {
                    PipelineError::Invalid(format!("way_group {group:?}: no such group"))
                })?
                .gid
                .as_raw(),
        };
        Ok(crate::shm::WayAccess { group: Some(gid) })
    }

    /// The configured flow-hash key, if any.
    fn parse_hash_key(&self) -> Result<Option<HashKey>, PipelineError> {
        self.hash_key
            .as_deref()
            .map(|text| {
                text.parse()
                    .map_err(|e| PipelineError::Invalid(format!("hash_key: {e}")))
            })
            .transpose()
    }

    /// The name in way file names.
    pub fn name(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        match self.inputs.first() {
            Some(InputConfig {
                interface: Some(i), ..
            }) => i.clone(),
            Some(InputConfig { pcap: Some(p), .. }) => p
                .file_stem()
                .map_or_else(|| "pcap".to_owned(), |s| s.to_string_lossy().into_owned()),
            _ => "fastedge".to_owned(),
        }
    }

    /// Number of shm ways the pipeline declares.
    pub fn way_count(&self) -> u32 {
        count_ways(&self.output)
    }
}

fn children_of(brick: &BrickConfig) -> Option<(Option<u32>, &[BrickConfig])> {
    match brick {
        BrickConfig::Balance { ways, to, .. } | BrickConfig::Dup { ways, to } => {
            Some((*ways, to.as_slice()))
        }
        _ => None,
    }
}

fn check_brick(brick: &BrickConfig, at: &str) -> Result<(), PipelineError> {
    let invalid = |what: String| Err(PipelineError::Invalid(what));
    if let Some((ways, to)) = children_of(brick) {
        let outputs = match (ways, to.len()) {
            (Some(0), _) => return invalid(format!("{at}: ways must be at least 1")),
            (Some(n), 0) => n,
            (None, 0) => return invalid(format!("{at}: give `ways = N` or [[{at}.to]] outputs")),
            (None, n) => n as u32,
            (Some(_), _) => return invalid(format!("{at}: give either `ways` or `to`, not both")),
        };
        if let BrickConfig::Balance { non_ip, .. } = brick {
            if *non_ip >= outputs {
                return invalid(format!(
                    "{at}: non_ip = {non_ip} is beyond its {outputs} outputs"
                ));
            }
        }
        for (i, child) in to.iter().enumerate() {
            check_brick(child, &format!("{at}.to[{i}]"))?;
        }
    }
    if let BrickConfig::Pcap {
        rotate_mb: Some(0), ..
    }
    | BrickConfig::Pcap {
        rotate_secs: Some(0),
        ..
    } = brick
    {
        return invalid(format!("{at}: rotation limits must be above 0"));
    }
    Ok(())
}

fn count_ways(brick: &BrickConfig) -> u32 {
    match children_of(brick) {
        Some((Some(n), _)) => n,
        // Saturating: the sum of what a config declares must not overflow before it is refused.
        Some((None, to)) => to
            .iter()
            .map(count_ways)
            .fold(0, |sum, n| sum.saturating_add(n)),
        None => u32::from(matches!(brick, BrickConfig::Way {})),
    }
}

/// A built brick: the tree the engine pushes every packet through.
#[derive(Debug, Clone)]
enum Brick {
    Balance {
        hash: HashMode,
        /// How many balance bricks are above this one: each level takes other bits of the
        /// hash, so that nested balancers stay even.
        level: u32,
        non_ip: usize,
        to: Vec<Brick>,
    },
    Dup(Vec<Brick>),
    Way(usize),
    Pcap(usize),
    Iface(usize),
    Tap(usize),
}

/// Counters of one shm way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WayStats {
    /// Frames written to the way.
    pub delivered: u64,
    /// Dropped because the way was full (its consumer slow, stopped or absent).
    pub dropped_full: u64,
    /// pid of the attached consumer.
    pub consumer: Option<u64>,
    /// Read positions the consumer wrote that were ignored (behind its last one or past the
    /// head: a broken or hostile consumer; its way only).
    pub bad_positions: u64,
    /// Frames a rule aimed at this way kept from it ([`crate::rules::WayFilters`]).
    pub filtered: u64,
}

/// The built bricks of a pipeline and their outputs.
#[derive(Debug)]
pub struct Pipeline {
    root: Brick,
    ways: Vec<Producer>,
    pcaps: Vec<PcapSink>,
    ifaces: Vec<InterfaceSink>,
    taps: Vec<TapSink>,
    /// When the root is a balance stage whose outputs are all ways: those ways, in order.
    flat_ways: Option<Vec<usize>>,
    decapsulate: bool,
    hash_key: HashKey,
    /// Frames that are not IP, over the pipeline's life.
    pub non_ip: u64,
    /// Frames whose headers did not parse (sent to the non-IP output like non-IP frames).
    pub parse_errors: u64,
    /// Rules aimed at single ways, as the control socket changes them.
    way_filters: Option<Arc<WayFilters>>,
    /// The generation of `way_filters` that `filters` is a copy of.
    filters_seen: u64,
    /// Per way number, the rules aimed at it; empty when there are none at all (one test
    /// per frame).
    filters: Vec<Vec<RuleSpec>>,
    /// Per way, frames those rules kept from it.
    filtered: Vec<u64>,
}

impl Pipeline {
    /// Creates the ways (`/dev/shm/fastedge/NAME-K`) and capture files of `config`; the flow
    /// hash is keyed with the configured key, else a random one.
    pub fn build(config: &ValidPipeline) -> Result<Self, PipelineError> {
        let hash_key = match config.hash_key() {
            Some(key) => key,
            None => random_hash_key()?,
        };
        let mut lanes = Self::build_lanes(config, 1, false, hash_key)?;
        lanes
            .pop()
            .ok_or_else(|| PipelineError::Invalid("no lanes".into()))
    }

    /// The TAP devices the pipeline writes to, by name, in the order declared.
    pub fn tap_names(config: &PipelineConfig) -> Vec<String> {
        fn walk(brick: &BrickConfig, names: &mut Vec<String>) {
            match brick {
                BrickConfig::Tap { name } => names.push(name.clone()),
                BrickConfig::Balance { to, .. } | BrickConfig::Dup { to, .. } => {
                    to.iter().for_each(|b| walk(b, names))
                }
                _ => {}
            }
        }
        let mut names = Vec::new();
        walk(&config.output, &mut names);
        names
    }

    /// True when the pipeline writes capture files or TAP devices (which one thread must
    /// own).
    pub fn has_capture_files(config: &PipelineConfig) -> bool {
        fn walk(brick: &BrickConfig) -> bool {
            match brick {
                BrickConfig::Pcap { .. } | BrickConfig::Tap { .. } => true,
                BrickConfig::Balance { to, .. } | BrickConfig::Dup { to, .. } => {
                    to.iter().any(walk)
                }
                BrickConfig::Way {} | BrickConfig::Interface { .. } => false,
            }
        }
        walk(&config.output)
    }

    /// Builds `lanes` copies of the pipeline, one per engine thread: the same bricks, each
    /// copy writing its own lane of every way. Capture files need a single lane. With `reuse`
    /// (a reload), way files of the same geometry are kept with their consumers. Flows are
    /// hashed under `hash_key` (the caller resolves the configured or a random key once, so
    /// that every lane and the XDP program agree).
    pub fn build_lanes(
        config: &ValidPipeline,
        lanes: u32,
        reuse: bool,
        hash_key: HashKey,
    ) -> Result<Vec<Self>, PipelineError> {
        Self::build_lanes_with(config, lanes, reuse, hash_key, &TapDevices::default())
    }

    /// [`Pipeline::build_lanes`] whose TAP outputs come from `taps`: devices it keeps from an
    /// earlier pipeline are used again (a reload keeps them, and their captures), new ones
    /// are made and kept there.
    pub fn build_lanes_with(
        config: &ValidPipeline,
        lanes: u32,
        reuse: bool,
        hash_key: HashKey,
        taps: &TapDevices,
    ) -> Result<Vec<Self>, PipelineError> {
        if lanes > 1 && Self::has_capture_files(config) {
            return Err(PipelineError::Invalid(
                "capture-file outputs need a single engine thread".into(),
            ));
        }
        let mut builder = Builder {
            name: config.name(),
            capacity: config.way_kib * 1024,
            lanes,
            reuse,
            access: config.way_access(),
            ways: Vec::new(),
            pcaps: Vec::new(),
            ifaces: Vec::new(),
            taps: Vec::new(),
            tap_devices: taps,
        };
        let root = builder.brick(&config.output, 0)?;
        let mut copies: Vec<Self> = (0..lanes)
            .map(|_| Self {
                root: root.clone(),
                ways: Vec::with_capacity(builder.ways.len()),
                pcaps: Vec::new(),
                ifaces: Vec::new(),
                taps: Vec::new(),
                flat_ways: match &root {
                    Brick::Balance { to, .. } => to
                        .iter()
                        .map(|b| match b {
                            Brick::Way(i) => Some(*i),
                            _ => None,
                        })
                        .collect(),
                    _ => None,
                },
                decapsulate: config.decapsulate,
                hash_key,
                non_ip: 0,
                parse_errors: 0,
                way_filters: None,
                filters_seen: 0,
                filters: Vec::new(),
                filtered: vec![0; builder.ways.len()],
            })
            .collect();
        for way in builder.ways {
            for (copy, producer) in copies.iter_mut().zip(way) {
                copy.ways.push(producer);
            }
        }
        if let Some(first) = copies.first_mut() {
            first.pcaps = builder.pcaps;
            first.taps = builder.taps;
        }
        // Each engine thread sends through sockets of its own, on a queue of its own.
        for (lane, copy) in (0u32..).zip(&mut copies) {
            for name in &builder.ifaces {
                copy.ifaces.push(InterfaceSink::open_on_queue(name, lane)?);
            }
        }
        Ok(copies)
    }

    /// Pushes one frame through the bricks.
    #[inline]
    pub fn push(&mut self, frame: &[u8], timestamp_ns: u64) {
        let parsed = fastedge_wire::packet::parse(frame, self.decapsulate);
        // By reference: a copy of the key would be read back by wide loads over its narrow
        // fields just written (a store-forwarding stall per packet).
        let key = match &parsed {
            Ok(Parsed::Ip(key)) => Some(key),
            Ok(Parsed::NonIp { .. }) => {
                self.non_ip += 1;
                None
            }
            Err(_) => {
                self.parse_errors += 1;
                None
            }
        };
        // The common pipeline, one balance stage over ways, without the general dispatch.
        if let Brick::Balance {
            hash: mode,
            level: 0,
            non_ip,
            to,
        } = &self.root
        {
            if let Some(ways) = &self.flat_ways {
                let (child, hash) = match key {
                    Some(k) => {
                        let h = flow_hash(k, *mode, &self.hash_key);
                        (way_of(h, to.len() as u32) as usize, h)
                    }
                    None => (*non_ip, 0),
                };
                let way = ways[child];
                if !self.filters.is_empty() && filtered(&self.filters, way, key) {
                    self.filtered[way] += 1;
                    return;
                }
                self.ways[way].push(frame, timestamp_ns, hash);
                return;
            }
        }
        let hash_key = self.hash_key;
        let hash = key.map_or(0, |k| flow_hash(k, HashMode::FiveTuple, &hash_key));
        let mut outputs = Outputs {
            hash_key,
            ways: &mut self.ways,
            pcaps: &mut self.pcaps,
            ifaces: &mut self.ifaces,
            taps: &mut self.taps,
            filters: &self.filters,
            filtered: &mut self.filtered,
        };
        deliver(&self.root, &mut outputs, frame, timestamp_ns, key, hash);
    }

    /// Heartbeats the ways (consumers see a live producer), flushes capture files and
    /// interface outputs.
    pub fn housekeeping(&mut self) {
        for way in &self.ways {
            way.heartbeat();
        }
        for pcap in &mut self.pcaps {
            pcap.flush();
        }
        self.flush_outputs();
    }

    /// Ends a batch (the engine calls it after every batch): wakes the consumers of ways
    /// that got packets and sleep waiting for them ([`crate::shm::publish`]), sends what
    /// interface outputs gathered.
    #[inline]
    pub fn flush_outputs(&mut self) {
        crate::shm::publish(&mut self.ways);
        for iface in &mut self.ifaces {
            iface.flush();
        }
    }

    /// Has the kernel send what AF_XDP interface outputs still hold on their TX rings (a busy
    /// device can leave some after a flush). The engine calls it when no frame came, so the
    /// tail of a burst does not wait for the next frame.
    pub fn kick_outputs(&mut self) {
        for iface in &mut self.ifaces {
            iface.flush();
        }
    }

    /// Takes the rules aimed at single ways again if they changed (one atomic load when they
    /// did not). The engine calls it before each batch.
    #[inline]
    pub fn refresh_way_filters(&mut self) {
        if let Some(filters) = &self.way_filters {
            if filters.generation() != self.filters_seen {
                self.take_filters();
            }
        }
    }

    /// Applies `filters` (rules aimed at single ways) from the next frame on, and whenever
    /// they change (seen by [`Pipeline::refresh_way_filters`], before each batch).
    pub fn set_way_filters(&mut self, filters: Option<Arc<WayFilters>>) {
        self.way_filters = filters;
        self.take_filters();
    }

    #[cold]
    fn take_filters(&mut self) {
        match &self.way_filters {
            Some(filters) => {
                self.filters_seen = filters.generation();
                self.filters = filters.by_way();
            }
            None => self.filters.clear(),
        }
    }

    /// Interface outputs, then TAP outputs.
    pub fn interface_stats(&self) -> Vec<InterfaceStats> {
        self.ifaces
            .iter()
            .map(|i| i.stats().clone())
            .chain(self.taps.iter().map(|t| t.stats().clone()))
            .collect()
    }

    /// Counters of every way, in way order.
    pub fn way_stats(&self) -> Vec<WayStats> {
        self.ways
            .iter()
            .map(|p| {
                let (delivered, dropped_full) = p.counters();
                WayStats {
                    delivered,
                    dropped_full,
                    consumer: p.consumer(),
                    bad_positions: p.bad_positions(),
                    filtered: 0,
                }
            })
            .zip(&self.filtered)
            .map(|(stats, filtered)| WayStats {
                filtered: *filtered,
                ..stats
            })
            .collect()
    }

    /// Counters of every PcapWriter brick, in declaration order.
    pub fn pcap_stats(&self) -> Vec<crate::pcap::PcapSinkStats> {
        self.pcaps.iter().map(|p| p.stats().clone()).collect()
    }
}

/// Creates the outputs of a pipeline while walking its bricks.
struct Builder<'a> {
    name: String,
    capacity: usize,
    lanes: u32,
    reuse: bool,
    access: crate::shm::WayAccess,
    /// Per way, one producer per lane.
    ways: Vec<Vec<Producer>>,
    pcaps: Vec<PcapSink>,
    ifaces: Vec<String>,
    taps: Vec<TapSink>,
    /// Where TAP devices come from (and are kept).
    tap_devices: &'a TapDevices,
}

impl Builder<'_> {
    fn children(
        &mut self,
        ways: Option<u32>,
        to: &[BrickConfig],
        level: u32,
    ) -> Result<Vec<Brick>, PipelineError> {
        match ways {
            Some(n) => (0..n)
                .map(|_| self.brick(&BrickConfig::Way {}, level))
                .collect(),
            None => to.iter().map(|b| self.brick(b, level)).collect(),
        }
    }

    fn brick(&mut self, brick: &BrickConfig, level: u32) -> Result<Brick, PipelineError> {
        Ok(match brick {
            BrickConfig::Balance {
                hash,
                ways,
                to,
                non_ip,
            } => Brick::Balance {
                hash: (*hash).into(),
                level,
                non_ip: *non_ip as usize,
                to: self.children(*ways, to, level + 1)?,
            },
            BrickConfig::Dup { ways, to } => Brick::Dup(self.children(*ways, to, level)?),
            BrickConfig::Way {} => {
                let index = self.ways.len();
                let path = crate::shm::way_path(&self.name, index as u32);
                self.ways.push(if self.reuse {
                    Producer::reuse_lanes(&path, self.capacity, self.lanes, self.access)?
                } else {
                    Producer::create_lanes(&path, self.capacity, self.lanes, self.access)?
                });
                Brick::Way(index)
            }
            BrickConfig::Interface { name } => {
                self.ifaces.push(name.clone());
                Brick::Iface(self.ifaces.len() - 1)
            }
            BrickConfig::Tap { name } => {
                self.taps.push(self.tap_devices.open(name)?);
                Brick::Tap(self.taps.len() - 1)
            }
            BrickConfig::Pcap {
                path,
                format,
                rotate_mb,
                rotate_secs,
            } => {
                let format = match format {
                    Some(FormatName::Pcap) => CaptureFormat::Pcap,
                    Some(FormatName::Pcapng) => CaptureFormat::PcapNg,
                    None if has_extension(path, "pcapng") => CaptureFormat::PcapNg,
                    None => CaptureFormat::Pcap,
                };
                let rotation = Rotation {
                    max_bytes: rotate_mb.map(|mb| mb << 20),
                    max_age: rotate_secs.map(std::time::Duration::from_secs),
                };
                self.pcaps.push(PcapSink::create(path, format, rotation)?);
                Brick::Pcap(self.pcaps.len() - 1)
            }
        })
    }
}

fn has_extension(path: &Path, ext: &str) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

/// The outputs a frame may go to.
struct Outputs<'a> {
    hash_key: HashKey,
    ways: &'a mut [Producer],
    pcaps: &'a mut [PcapSink],
    ifaces: &'a mut [InterfaceSink],
    taps: &'a mut [TapSink],
    filters: &'a [Vec<RuleSpec>],
    filtered: &'a mut [u64],
}

/// Whether the rules aimed at way `way` keep a frame of flow `key` from it.
#[inline]
fn filtered(
    filters: &[Vec<RuleSpec>],
    way: usize,
    key: Option<&fastedge_wire::packet::FlowKey>,
) -> bool {
    filters
        .get(way)
        .is_some_and(|rules| kept_from_way(rules, key))
}

fn deliver(
    brick: &Brick,
    out: &mut Outputs<'_>,
    frame: &[u8],
    ts: u64,
    key: Option<&fastedge_wire::packet::FlowKey>,
    hash: u64,
) {
    match brick {
        Brick::Way(i) => {
            if filtered(out.filters, *i, key) {
                out.filtered[*i] += 1;
            } else {
                out.ways[*i].push(frame, ts, hash);
            }
        }
        Brick::Pcap(i) => out.pcaps[*i].write(frame, ts),
        Brick::Iface(i) => out.ifaces[*i].push(frame),
        Brick::Tap(i) => out.taps[*i].push(frame),
        Brick::Dup(to) => {
            for child in to {
                deliver(child, out, frame, ts, key, hash);
            }
        }
        Brick::Balance {
            hash: mode,
            level,
            non_ip,
            to,
        } => {
            let (child, hash) = match key {
                Some(key) => {
                    let h = if *mode == HashMode::FiveTuple {
                        hash
                    } else {
                        flow_hash(key, *mode, &out.hash_key)
                    };
                    (
                        way_of(h.rotate_left(21 * level), to.len() as u32) as usize,
                        h,
                    )
                }
                None => (*non_ip, hash),
            };
            deliver(&to[child], out, frame, ts, key, hash);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_pipeline_declared_in_toml() {
        let config = PipelineConfig::from_toml(
            r#"
            [[input]]
            interface = "eth1"
            [[input]]
            pcap = "old.pcapng"
            speed = "recorded"
            [output]
            type = "dup"
            [[output.to]]
            type = "balance"
            ways = 4
            [[output.to]]
            type = "balance"
            hash = "2-tuple"
            to = [{ type = "way" }, { type = "way" }, { type = "pcap", path = "x.pcap" }]
            non_ip = 2
            "#,
        )
        .unwrap();
        assert_eq!(config.name(), "eth1");
        assert_eq!(config.way_count(), 6);
        assert_eq!(config.inputs.len(), 2);
    }

    #[test]
    fn bad_pipelines_name_the_problem() {
        let cases = [
            ("[output]\ntype = \"way\"", "no [[input]]"),
            (
                "[[input]]\ninterface=\"a\"\npcap=\"b\"\n[output]\ntype=\"way\"",
                "exactly one of",
            ),
            (
                "[[input]]\ninterface=\"a\"\n[output]\ntype=\"balance\"",
                "give `ways = N`",
            ),
            (
                "[[input]]\ninterface=\"a\"\n[output]\ntype=\"balance\"\nways=2\nnon_ip=2",
                "non_ip = 2 is beyond",
            ),
            (
                "[[input]]\ninterface=\"a\"\n[output]\ntype=\"fork\"",
                "unknown variant `fork`",
            ),
            (
                "[[input]]\ninterface=\"a\"\n[output]\ntype=\"way\"\nspeed=1",
                "unknown field `speed`",
            ),
            (
                "[[input]]\ninterface=\"a\"\nmode=\"dpdk\"\n[output]\ntype=\"way\"",
                "unknown variant `dpdk`",
            ),
            (
                "[[input]]\ninterface=\"a\"\nway_kib=100\n[output]\ntype=\"way\"",
                "unknown field `way_kib`",
            ),
            (
                "way_kib=100\n[[input]]\ninterface=\"a\"\n[output]\ntype=\"way\"",
                "power of two",
            ),
            // Found while fuzzing: a ring size whose byte count overflows, and way counts that
            // overflow when summed (or would create billions of files).
            (
                "way_kib=18014398509481984\n[[input]]\ninterface=\"a\"\n[output]\ntype=\"way\"",
                "power of two from 64 to 1048576",
            ),
            (
                "[[input]]\ninterface=\"a\"\n[output]\ntype=\"dup\"\n[[output.to]]\n\
                 type=\"balance\"\nways=4294967295\n[[output.to]]\ntype=\"way\"",
                "over 4 billion ways, at most 4096",
            ),
            (
                "[[input]]\ninterface=\"a\"\n[output]\ntype=\"balance\"\nways=4097",
                "4097 ways, at most 4096",
            ),
            (
                "[[input]]\ninterface=\"a\"\nmode=\"netmap\"\n[output]\ntype=\"way\"",
                "input 0: netmap: ",
            ),
            (
                "[[input]]\ninterface=\"netmap:eth1\"\n[output]\ntype=\"way\"",
                "input 0: netmap: ",
            ),
        ];
        for (text, expected) in cases {
            let error = PipelineConfig::from_toml(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8];
        f[12] = 0x08;
        f[14] = 0x45;
        f[16..18].copy_from_slice(&28u16.to_be_bytes());
        f[22] = 64;
        f[23] = 17;
        f[26..30].copy_from_slice(&src);
        f[30..34].copy_from_slice(&dst);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f[38..40].copy_from_slice(&8u16.to_be_bytes());
        f
    }

    #[test]
    fn dup_of_two_balancers_gives_each_group_everything_evenly() {
        let name = format!("unit-pipeline-{}", std::process::id());
        let config = PipelineConfig::from_toml(&format!(
            "name = \"{name}\"\nway_kib = 1024\n[[input]]\ninterface = \"x\"\n[output]\ntype = \"dup\"\n[[output.to]]\ntype = \"balance\"\nways = 4\n[[output.to]]\ntype = \"balance\"\nto = [{{ type = \"balance\", ways = 2 }}, {{ type = \"balance\", ways = 2 }}]\n"
        ))
        .unwrap();
        let mut pipeline = Pipeline::build(&config).unwrap();
        for i in 0..4000u32 {
            let a = [10, 1, (i >> 8) as u8, i as u8];
            pipeline.push(&udp(a, [10, 0, 0, 1], 1000, 53), 1);
            pipeline.push(&udp([10, 0, 0, 1], a, 53, 1000), 2);
        }
        pipeline.push(&[0u8; 20], 3); // not IP: to output 0 of each balancer
        let stats = pipeline.way_stats();
        assert_eq!(stats.len(), 8);
        let group = |r: std::ops::Range<usize>| stats[r].iter().map(|w| w.delivered).sum::<u64>();
        assert_eq!(group(0..4), 8001, "group 1 gets every packet");
        assert_eq!(group(4..8), 8001, "group 2 gets every packet");
        for (i, w) in stats.iter().enumerate() {
            let share = w.delivered as f64 / 2000.0;
            assert!(
                (0.8..1.2).contains(&share),
                "way {i}: {} of 8000",
                w.delivered
            );
        }
        drop(pipeline);
        for way in 0..8 {
            let _ = std::fs::remove_file(crate::shm::way_path(&name, way));
        }
    }

    #[test]
    fn rules_aimed_at_one_way_keep_their_flows_from_it_only() {
        let name = format!("unit-way-filter-{}", std::process::id());
        let config = PipelineConfig::from_toml(&format!(
            "name = \"{name}\"\nway_kib = 256\n[[input]]\ninterface = \"x\"\n[output]\ntype = \"dup\"\nways = 2\n"
        ))
        .unwrap();
        let mut pipeline = Pipeline::build(&config).unwrap();
        // Rules go in through the bookkeeping (as from the control socket); the engine reads
        // its filters. (Its XDP table needs BPF maps: root.)
        let mut table = crate::rules::Rules::new(fastedge_ebpf::rules::RuleTable::new(Arc::new(
            fastedge_ebpf::rules::Prefilter::create(4).unwrap(),
        )));
        pipeline.set_way_filters(Some(table.way_filters()));
        let add = |table: &mut crate::rules::Rules, rule: serde_json::Value| {
            let answer = table.netcontrol(
                &crate::control::into_map(serde_json::json!({"op": "add", "rule": rule})),
                2,
            );
            assert_eq!(answer["result"], "added", "{answer:?}");
            answer["id"].as_u64().unwrap()
        };
        let dropped = add(
            &mut table,
            serde_json::json!({"ty": "drop", "way": 1,
                               "entity": {"ty": "address", "ip": "10.1.0.7"}}),
        );
        add(
            &mut table,
            serde_json::json!({"ty": "whitelist", "way": 1,
                               "entity": {"ty": "flow", "flow": {"src_h": "10.1.0.7", "dst_p": "53/udp"}}}),
        );
        let send = |pipeline: &mut Pipeline| {
            pipeline.push(&udp([10, 1, 0, 7], [10, 0, 0, 1], 1000, 80), 1);
            pipeline.push(&udp([10, 0, 0, 1], [10, 1, 0, 7], 80, 1000), 2);
            pipeline.push(&udp([10, 1, 0, 7], [10, 0, 0, 1], 1000, 53), 3);
            pipeline.push(&udp([10, 1, 0, 8], [10, 0, 0, 1], 1000, 80), 4);
            pipeline.push(&[0u8; 20], 5); // not IP: never kept back
            pipeline.flush_outputs();
        };
        pipeline.refresh_way_filters(); // as the engine does before each batch
        send(&mut pipeline);
        let stats = pipeline.way_stats();
        assert_eq!(
            (stats[0].delivered, stats[0].filtered),
            (5, 0),
            "way 0: all"
        );
        assert_eq!(
            (stats[1].delivered, stats[1].filtered),
            (3, 2),
            "way 1: not 10.1.0.7 either way, but its whitelisted DNS"
        );
        // Removed: seen before the next batch.
        let removed = table.netcontrol(
            &crate::control::into_map(serde_json::json!({"op": "remove", "id": dropped})),
            2,
        );
        assert_eq!(removed["result"], "removed");
        pipeline.refresh_way_filters();
        send(&mut pipeline);
        let stats = pipeline.way_stats();
        assert_eq!((stats[1].delivered, stats[1].filtered), (8, 2));
        drop(pipeline);
        crate::shm::remove_ways(&name, 2);
    }
}

//! fastedge's eBPF programs and their loaders.
//!
//! Owns: the XDP programs written in C under `src/bpf/` (compiled by libbpf-cargo in `build.rs`
//! and embedded in this crate), loading them with libbpf-rs, attaching them to interfaces in a
//! chosen XDP mode, and typed access to their maps: the XSKMAP that routes each receive queue to
//! its AF_XDP socket, per-CPU counters, and the pre-filter's prefix tries and rules
//! ([`rules`]).
//!
//! Does not own: userspace packet handling or the AF_XDP sockets themselves (`fastedge-rings`).
#![deny(missing_docs)]

pub mod fast;
pub mod rules;
mod sys;

use std::{
    fmt,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
};

use libbpf_rs::{MapCore, MapFlags, MapHandle, ObjectBuilder};

/// The compiled `xsk_redirect.bpf.c`.
static XSK_REDIRECT_OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/xsk_redirect.bpf.o"));

/// How an XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver, before an skb exists (`XDP_FLAGS_DRV_MODE`).
    Native,
    /// Generic XDP on the skb, for drivers without native support (`XDP_FLAGS_SKB_MODE`).
    Skb,
}

impl XdpMode {
    fn flags(self) -> u32 {
        match self {
            XdpMode::Native => libbpf_sys::XDP_FLAGS_DRV_MODE,
            XdpMode::Skb => libbpf_sys::XDP_FLAGS_SKB_MODE,
        }
    }
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpMode::Native => "native",
            XdpMode::Skb => "skb",
        })
    }
}

/// Errors of loading, attaching and map access, each naming the step.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    /// libbpf could not open or load an embedded object (verifier refusal, missing BTF, …).
    #[error("loading BPF object {object}: {source}")]
    Load {
        /// The object's name.
        object: &'static str,
        /// libbpf's error.
        source: libbpf_rs::Error,
    },
    /// The object lacks a program or map this crate expects (the C source and the loader disagree).
    #[error("BPF object {object} has no {kind} named {name}")]
    Missing {
        /// The object's name.
        object: &'static str,
        /// `program` or `map`.
        kind: &'static str,
        /// The name looked for.
        name: &'static str,
    },
    /// Attaching the program to an interface failed (e.g. no native XDP in the driver).
    #[error("attaching XDP program in {mode} mode to interface index {ifindex}: {source}")]
    Attach {
        /// The interface index.
        ifindex: u32,
        /// The mode asked for.
        mode: XdpMode,
        /// The kernel's error.
        source: std::io::Error,
    },
    /// Another XDP program is attached to the interface already.
    #[error("XDP program is already attached to interface index {ifindex}")]
    AlreadyAttached {
        /// The interface index.
        ifindex: u32,
    },
    /// Running the program on a test frame (`BPF_PROG_TEST_RUN`) failed.
    #[error("BPF_PROG_TEST_RUN: {source}")]
    TestRun {
        /// The kernel's error.
        source: std::io::Error,
    },
    /// Asking the kernel what an interface's XDP support offers failed.
    #[error("querying the XDP features of interface index {ifindex}: {source}")]
    Query {
        /// The interface index.
        ifindex: u32,
        /// libbpf's error.
        source: libbpf_rs::Error,
    },
    /// A map operation failed.
    #[error("{op} on map {map}: {source}")]
    Map {
        /// The operation (`creating`, `writing`, `reading`, …).
        op: &'static str,
        /// The map's name.
        map: &'static str,
        /// libbpf's error.
        source: libbpf_rs::Error,
    },
}

/// Counter slots of `xsk_redirect.bpf.c`'s `counters` map, in map order.
const COUNTER_SLOTS: u32 = 5;

/// Totals of the per-CPU counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XskRedirectCounters {
    /// Frames the program ran on.
    pub seen: u64,
    /// Frames redirected into an AF_XDP socket.
    pub redirected: u64,
    /// Frames passed to the kernel stack because their queue had no socket.
    pub passed: u64,
    /// Frames a pre-filter `drop` rule dropped.
    pub dropped: u64,
    /// Frames a pre-filter `bypass` rule handed to the kernel instead of the ways.
    pub bypassed: u64,
}

/// The `xsk_redirect` XDP program: counts every frame, then redirects it to the AF_XDP socket
/// registered for its receive queue (or passes it to the kernel when there is none).
pub struct XskRedirect {
    /// Our own fd of the loaded program (the object's maps and program stay loaded while the
    /// kernel objects have fds open).
    program: OwnedFd,
    xsks: MapHandle,
    counters: MapHandle,
    attachment: Option<Attachment>,
}

struct Attachment {
    _link: OwnedFd,
    ifindex: u32,
    mode: XdpMode,
}

impl fmt::Debug for XskRedirect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XskRedirect")
            .field(
                "attached",
                &self.attachment.as_ref().map(|a| (a.ifindex, a.mode)),
            )
            .finish_non_exhaustive()
    }
}

/// A loaded BPF object, to take maps and programs from.
pub(crate) struct Loaded {
    name: &'static str,
    object: libbpf_rs::Object,
}

impl Loaded {
    /// Opens `bytes` and loads it; with `prefilter`, the object's pre-filter maps are the
    /// pre-filter's own (shared).
    pub(crate) fn load(
        name: &'static str,
        bytes: &[u8],
        prefilter: Option<&rules::Prefilter>,
    ) -> Result<Self, EbpfError> {
        let load = |source| EbpfError::Load {
            object: name,
            source,
        };
        let mut open = ObjectBuilder::default().open_memory(bytes).map_err(load)?;
        if let Some(prefilter) = prefilter {
            for mut map in open.maps_mut() {
                let map_name = map.name().to_string_lossy().into_owned();
                if let Some(fd) = prefilter.fd_for(&map_name) {
                    map.reuse_fd(fd).map_err(load)?;
                }
            }
        }
        Ok(Self {
            name,
            object: open.load().map_err(load)?,
        })
    }

    pub(crate) fn map(&self, name: &'static str) -> Result<MapHandle, EbpfError> {
        let map = self
            .object
            .maps()
            .find(|m| m.name() == name)
            .ok_or(EbpfError::Missing {
                object: self.name,
                kind: "map",
                name,
            })?;
        MapHandle::try_from(&map).map_err(|source| EbpfError::Map {
            op: "duplicating fd",
            map: name,
            source,
        })
    }

    pub(crate) fn program(&self, name: &'static str) -> Result<OwnedFd, EbpfError> {
        self.object
            .progs()
            .find(|p| p.name() == name)
            .ok_or(EbpfError::Missing {
                object: self.name,
                kind: "program",
                name,
            })?
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| EbpfError::Load {
                object: self.name,
                source: source.into(),
            })
    }
}

/// Attaches `program` to `ifindex` in `mode` through a BPF link (detached when the returned fd
/// closes).
pub(crate) fn attach_xdp(
    program: BorrowedFd<'_>,
    ifindex: u32,
    mode: XdpMode,
) -> Result<OwnedFd, EbpfError> {
    sys::xdp_link_create(program, ifindex, mode.flags()).map_err(|source| EbpfError::Attach {
        ifindex,
        mode,
        source,
    })
}

/// Sums a per-CPU u64 slot over CPUs.
pub(crate) fn percpu_sum(map: &MapHandle, slot: u32, name: &'static str) -> Result<u64, EbpfError> {
    Ok(map
        .lookup_percpu(&slot.to_ne_bytes(), MapFlags::ANY)
        .map_err(|source| EbpfError::Map {
            op: "reading counters",
            map: name,
            source,
        })?
        .unwrap_or_default()
        .iter()
        .filter_map(|bytes| bytes.get(..8)?.try_into().ok())
        .map(u64::from_ne_bytes)
        .sum())
}

const OBJECT: &str = "xsk_redirect.bpf.o";
const PROGRAM: &str = "xsk_redirect";

impl XskRedirect {
    /// Loads the program and its maps into the kernel (not attached yet), with a pre-filter
    /// that lets every frame pass.
    pub fn load() -> Result<Self, EbpfError> {
        Self::load_with(None)
    }

    /// Loads the program; with `prefilter`, its rule maps are those of the pre-filter (shared
    /// by every program loaded with it, and kept when the program goes).
    pub fn load_with(prefilter: Option<&rules::Prefilter>) -> Result<Self, EbpfError> {
        let loaded = Loaded::load(OBJECT, XSK_REDIRECT_OBJECT, prefilter)?;
        Ok(Self {
            program: loaded.program(PROGRAM)?,
            xsks: loaded.map("xsks")?,
            counters: loaded.map("counters")?,
            attachment: None,
        })
    }

    /// Attaches the program to interface `ifindex` in `mode`, through a BPF link: it detaches
    /// when this value is dropped or the process dies.
    pub fn attach(&mut self, ifindex: u32, mode: XdpMode) -> Result<(), EbpfError> {
        if let Some(existing) = &self.attachment {
            return Err(EbpfError::AlreadyAttached {
                ifindex: existing.ifindex,
            });
        }
        let link = attach_xdp(self.program.as_fd(), ifindex, mode)?;
        self.attachment = Some(Attachment {
            _link: link,
            ifindex,
            mode,
        });
        Ok(())
    }

    /// Where and how the program is attached.
    pub fn attached(&self) -> Option<(u32, XdpMode)> {
        self.attachment.as_ref().map(|a| (a.ifindex, a.mode))
    }

    /// Detaches the program (a no-op when not attached).
    pub fn detach(&mut self) {
        self.attachment = None;
    }

    /// Routes receive queue `queue` to the AF_XDP socket `socket`.
    pub fn register_socket(&self, queue: u32, socket: BorrowedFd<'_>) -> Result<(), EbpfError> {
        let fd = socket.as_raw_fd() as u32;
        self.xsks
            .update(&queue.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| EbpfError::Map {
                op: "registering AF_XDP socket",
                map: "xsks",
                source,
            })
    }

    /// Stops routing queue `queue` to a socket; its frames go to the kernel again.
    pub fn unregister_socket(&self, queue: u32) -> Result<(), EbpfError> {
        self.xsks
            .delete(&queue.to_ne_bytes())
            .map_err(|source| EbpfError::Map {
                op: "unregistering AF_XDP socket",
                map: "xsks",
                source,
            })
    }

    /// Runs the program `repeat` times on `frame` in the kernel (BPF_PROG_TEST_RUN), without
    /// an interface: returns its XDP action (`XDP_DROP` = 1, `XDP_PASS` = 2, …) and the mean
    /// nanoseconds per run as the kernel measured them. For tests and cost measurements.
    pub fn test_run(&self, frame: &[u8], repeat: u32) -> Result<(u32, u32), EbpfError> {
        sys::prog_test_run(self.program.as_fd(), frame, repeat)
            .map_err(|source| EbpfError::TestRun { source })
    }

    /// Reads the per-CPU counters and sums them over CPUs.
    pub fn counters(&self) -> Result<XskRedirectCounters, EbpfError> {
        let mut totals = [0u64; COUNTER_SLOTS as usize];
        for (slot, total) in (0..COUNTER_SLOTS).zip(totals.iter_mut()) {
            *total = percpu_sum(&self.counters, slot, "counters")?;
        }
        let [seen, redirected, passed, dropped, bypassed] = totals;
        Ok(XskRedirectCounters {
            seen,
            redirected,
            passed,
            dropped,
            bypassed,
        })
    }
}

/// What a driver's XDP support offers (the kernel's `netdev` XDP feature bits, Linux 6.3+).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XdpFeatures(u64);

impl XdpFeatures {
    const BASIC: u64 = 1 << 0;
    const REDIRECT: u64 = 1 << 1;
    const XSK_ZEROCOPY: u64 = 1 << 3;

    /// Features from the kernel's bit set (`NETDEV_XDP_ACT_*`).
    pub fn from_bits(bits: u64) -> Self {
        Self(bits)
    }

    /// The kernel's bit set.
    pub fn bits(self) -> u64 {
        self.0
    }

    /// Native (driver) XDP programs run, with XDP_REDIRECT.
    pub fn native(self) -> bool {
        self.0 & (Self::BASIC | Self::REDIRECT) == Self::BASIC | Self::REDIRECT
    }

    /// AF_XDP sockets can bind in zero-copy mode: the NIC writes frames into the UMEM.
    pub fn zero_copy(self) -> bool {
        self.0 & Self::XSK_ZEROCOPY != 0
    }
}

/// The XDP features the driver of interface `ifindex` reports, or `None` where the kernel
/// reports none (before Linux 6.3, all bits read zero).
pub fn xdp_features(ifindex: u32) -> Result<Option<XdpFeatures>, EbpfError> {
    // libbpf's query reads the interface's state over netlink; the program fd an `Xdp` carries
    // is only used to attach, so any open file will do for it.
    let placeholder = std::fs::File::open("/dev/null").map_err(|source| EbpfError::Query {
        ifindex,
        source: source.into(),
    })?;
    let ifindex_arg = i32::try_from(ifindex).map_err(|_| EbpfError::Query {
        ifindex,
        source: libbpf_rs::Error::from(std::io::Error::from(std::io::ErrorKind::InvalidInput)),
    })?;
    let opts = libbpf_rs::Xdp::new(placeholder.as_fd())
        .query(ifindex_arg, libbpf_rs::XdpFlags::NONE)
        .map_err(|source| EbpfError::Query { ifindex, source })?;
    Ok((opts.feature_flags != 0).then_some(XdpFeatures(opts.feature_flags)))
}

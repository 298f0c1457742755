//! The in-kernel split (`split_fast.bpf.c`): the pre-filter, then each frame hashed by flow
//! (the same function as `fastedge_wire::packet::flow_hash`) and redirected through a DEVMAP
//! to an output interface, or broadcast to all of them; frames it does not parse as userspace
//! would go to the AF_XDP socket of their queue. Also the XDP_PASS program a veth output's far
//! end needs for redirected frames to arrive.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use fastedge_wire::packet::HashKey;
use libbpf_rs::{MapCore, MapFlags, MapHandle};

use crate::{attach_xdp, percpu_sum, rules::Prefilter, sys, EbpfError, Loaded, XdpMode};

static SPLIT_FAST_OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/split_fast.bpf.o"));
const OBJECT: &str = "split_fast.bpf.o";
const FAST_COUNTER_SLOTS: u32 = 7;
/// Most outputs of the in-kernel path (DEVMAP size).
pub const MAX_OUTPUTS: u32 = 256;

/// What the in-kernel path does with frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FastMode {
    /// Each flow to one output; `hash_tuple` 2, 3 or 5, keyed with `hash_key` (the key the
    /// userspace engine uses too); `non_ip`: the output for frames that are not IP.
    Balance {
        /// 2, 3 or 5: which fields of the flow are hashed (as userspace's `--hash`).
        hash_tuple: u32,
        /// The output index frames that are not IP go to.
        non_ip: u32,
        /// The flow-hash key, the same as the userspace engine's.
        hash_key: HashKey,
    },
    /// Every frame to every output.
    Duplicate,
}

/// Totals of the in-kernel path's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FastCounters {
    /// Frames the program ran on.
    pub seen: u64,
    /// Redirected to an output in the kernel.
    pub in_kernel: u64,
    /// Handed to userspace for a full parse.
    pub to_user: u64,
    /// For userspace, but no socket on the queue (passed to the kernel stack).
    pub passed: u64,
    /// Dropped by a pre-filter `drop` rule.
    pub dropped: u64,
    /// Handed to the kernel's stack by a pre-filter `bypass` rule.
    pub bypassed: u64,
    /// Not IP: sent to the non-IP output.
    pub non_ip: u64,
}

/// The loaded in-kernel split program.
pub struct SplitFast {
    program: OwnedFd,
    pass: OwnedFd,
    xsks: MapHandle,
    outputs: MapHandle,
    config: MapHandle,
    counters: MapHandle,
    output_frames: MapHandle,
    last_hash: MapHandle,
    links: Vec<OwnedFd>,
    attached: bool,
}

impl std::fmt::Debug for SplitFast {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SplitFast")
            .field("attached", &self.attached)
            .finish_non_exhaustive()
    }
}

fn map_error(op: &'static str, map: &'static str) -> impl FnOnce(libbpf_rs::Error) -> EbpfError {
    move |source| EbpfError::Map { op, map, source }
}

impl SplitFast {
    /// Loads the program for `outputs` (interface indexes, in output order) doing `mode`.
    pub fn load(
        prefilter: Option<&Prefilter>,
        outputs: &[u32],
        mode: FastMode,
    ) -> Result<Self, EbpfError> {
        let loaded = Loaded::load(OBJECT, SPLIT_FAST_OBJECT, prefilter)?;
        let fast = Self {
            program: loaded.program("split_fast")?,
            pass: loaded.program("xdp_pass")?,
            xsks: loaded.map("xsks")?,
            outputs: loaded.map("outputs")?,
            config: loaded.map("config")?,
            counters: loaded.map("counters")?,
            output_frames: loaded.map("output_frames")?,
            last_hash: loaded.map("last_hash")?,
            links: Vec::new(),
            attached: false,
        };
        for (index, ifindex) in (0u32..).zip(outputs) {
            fast.outputs
                .update(&index.to_ne_bytes(), &ifindex.to_ne_bytes(), MapFlags::ANY)
                .map_err(map_error("adding an output", "outputs"))?;
        }
        let (non_ip, duplicate, hash_tuple, hash_key) = match mode {
            FastMode::Balance {
                hash_tuple,
                non_ip,
                hash_key,
            } => (non_ip, 0u32, hash_tuple, hash_key),
            FastMode::Duplicate => (0, 1, 5, HashKey { k0: 0, k1: 0 }),
        };
        // `struct fast_config` in split_fast.bpf.c.
        let mut config = Vec::with_capacity(32);
        for word in [outputs.len() as u32, non_ip, duplicate, hash_tuple] {
            config.extend_from_slice(&word.to_ne_bytes());
        }
        config.extend_from_slice(&hash_key.k0.to_ne_bytes());
        config.extend_from_slice(&hash_key.k1.to_ne_bytes());
        fast.config
            .update(&0u32.to_ne_bytes(), &config, MapFlags::ANY)
            .map_err(map_error("writing", "config"))?;
        Ok(fast)
    }

    /// Attaches the split program to the input `ifindex` (BPF link: detached on drop or exit).
    pub fn attach(&mut self, ifindex: u32, mode: XdpMode) -> Result<(), EbpfError> {
        if self.attached {
            return Err(EbpfError::AlreadyAttached { ifindex });
        }
        let link = attach_xdp(self.program.as_fd(), ifindex, mode)?;
        self.links.push(link);
        self.attached = true;
        Ok(())
    }

    /// Attaches the XDP_PASS program (native mode) to `ifindex`: the far end of a veth output,
    /// which only delivers redirected frames when it runs an XDP program.
    pub fn attach_pass(&mut self, ifindex: u32) -> Result<(), EbpfError> {
        let link = attach_xdp(self.pass.as_fd(), ifindex, XdpMode::Native)?;
        self.links.push(link);
        Ok(())
    }

    /// Routes receive queue `queue`'s frames for userspace to the AF_XDP socket `socket`.
    pub fn register_socket(&self, queue: u32, socket: BorrowedFd<'_>) -> Result<(), EbpfError> {
        let fd = socket.as_raw_fd() as u32;
        self.xsks
            .update(&queue.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_error("registering AF_XDP socket", "xsks"))
    }

    /// The counters summed over every CPU.
    pub fn counters(&self) -> Result<FastCounters, EbpfError> {
        let mut t = [0u64; FAST_COUNTER_SLOTS as usize];
        for (slot, total) in (0..FAST_COUNTER_SLOTS).zip(t.iter_mut()) {
            *total = percpu_sum(&self.counters, slot, "counters")?;
        }
        let [seen, in_kernel, to_user, passed, dropped, bypassed, non_ip] = t;
        Ok(FastCounters {
            seen,
            in_kernel,
            to_user,
            passed,
            dropped,
            bypassed,
            non_ip,
        })
    }

    /// Frames sent to output `index` in the kernel.
    pub fn output_frames(&self, index: u32) -> Result<u64, EbpfError> {
        percpu_sum(&self.output_frames, index, "output_frames")
    }

    /// The flow hash the program last computed on this CPU (for tests: run the program with
    /// [`SplitFast::test_run`] pinned to one CPU, then read this).
    pub fn last_hash(&self) -> Result<u64, EbpfError> {
        let values = self
            .last_hash
            .lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_error("reading", "last_hash"))?
            .unwrap_or_default();
        let cpu = nix::sched::sched_getcpu().unwrap_or(0);
        Ok(values
            .get(cpu)
            .and_then(|b| b.get(..8)?.try_into().ok())
            .map(u64::from_ne_bytes)
            .unwrap_or(0))
    }

    /// Runs the split program on `frame` in the kernel (BPF_PROG_TEST_RUN); returns its XDP
    /// action.
    pub fn test_run(&self, frame: &[u8]) -> Result<u32, EbpfError> {
        sys::prog_test_run(self.program.as_fd(), frame, 1)
            .map(|(action, _)| action)
            .map_err(|source| EbpfError::TestRun { source })
    }
}

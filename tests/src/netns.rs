//! Network namespaces joined by a veth pair, for tests that need real interfaces.
//!
//! [`VethPair::new`] makes two namespaces with one end of a veth pair in each; dropping it (also
//! while a failed test unwinds) deletes both namespaces, which deletes the veth. Names carry the
//! pid, so parallel tests and parallel runs never collide; namespaces left by a killed run (whose
//! pid is gone) are removed by the next run.

use std::{
    fs::File,
    net::Ipv4Addr,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

use nix::sched::{setns, CloneFlags};

const PREFIX: &str = "fe-test-";

/// Runs `ip` with `args`; panics with its stderr on failure.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap_or_else(|e| {
        panic!(
            "running `ip {}`: {e} (apt-get install iproute2)",
            args.join(" ")
        )
    });
    assert!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a shell command inside namespace `ns`; panics on failure.
pub fn netns_exec(ns: &str, script: &str) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c", script])
        .output()
        .expect("running ip netns exec");
    assert!(
        out.status.success(),
        "`{script}` in {ns} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces, `a` and `b`, joined by a veth pair with IPv4 addresses, IPv6 off, and a
/// static neighbour entry on `b` for `a`'s address (so `b` can send without ARP).
#[derive(Debug)]
pub struct VethPair {
    pub ns_a: String,
    pub ns_b: String,
    pub dev_a: String,
    pub dev_b: String,
    pub addr_a: Ipv4Addr,
    pub addr_b: Ipv4Addr,
    pub mac_a: String,
}

impl VethPair {
    pub fn new() -> Self {
        Self::with_queues(1)
    }

    /// A pair whose ends have `queues` receive and transmit queues each. veth delivers a frame
    /// on the receive queue numbered like the sender's transmit queue, which for an AF_PACKET
    /// sender is its CPU modulo the queue count.
    pub fn with_queues(queues: u32) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        assert!(
            nix::unistd::geteuid().is_root(),
            "network-namespace tests need root (CAP_NET_ADMIN, CAP_BPF): run them as root, e.g. `sudo make test`"
        );
        remove_stale_namespaces();
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{pid}-{n}");
        let pair = VethPair {
            ns_a: format!("{PREFIX}{tag}-a"),
            ns_b: format!("{PREFIX}{tag}-b"),
            // Interface names are at most 15 bytes.
            dev_a: format!("fe{}x{n}a", pid % 1_000_000),
            dev_b: format!("fe{}x{n}b", pid % 1_000_000),
            // Addresses inside our own namespaces only; nothing here is routed anywhere.
            addr_a: Ipv4Addr::new(10, 254, (n % 250) as u8, 1),
            addr_b: Ipv4Addr::new(10, 254, (n % 250) as u8, 2),
            mac_a: format!("02:fe:00:00:{:02x}:01", n % 256),
        };
        // From here on, Drop cleans up whatever was made, even if a later step panics.
        ip(&["netns", "add", &pair.ns_a]);
        ip(&["netns", "add", &pair.ns_b]);
        for ns in [&pair.ns_a, &pair.ns_b] {
            // No IPv6: no router solicitations or DAD frames to disturb packet counts.
            netns_exec(
                ns,
                "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; \
                 echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6",
            );
        }
        // By default one queue each way, so every frame arrives on queue 0 (veth otherwise
        // makes one queue per CPU and picks the receive queue from the sender's transmit queue).
        let queues = queues.to_string();
        ip(&[
            "link",
            "add",
            &pair.dev_a,
            "netns",
            &pair.ns_a,
            "address",
            &pair.mac_a,
            "numtxqueues",
            &queues,
            "numrxqueues",
            &queues,
            "type",
            "veth",
            "peer",
            "name",
            &pair.dev_b,
            "netns",
            &pair.ns_b,
            "numtxqueues",
            &queues,
            "numrxqueues",
            &queues,
        ]);
        let cidr_a = format!("{}/24", pair.addr_a);
        let cidr_b = format!("{}/24", pair.addr_b);
        ip(&["-n", &pair.ns_a, "addr", "add", &cidr_a, "dev", &pair.dev_a]);
        ip(&["-n", &pair.ns_b, "addr", "add", &cidr_b, "dev", &pair.dev_b]);
        ip(&["-n", &pair.ns_a, "link", "set", &pair.dev_a, "up"]);
        ip(&["-n", &pair.ns_b, "link", "set", &pair.dev_b, "up"]);
        ip(&[
            "-n",
            &pair.ns_b,
            "neigh",
            "add",
            &pair.addr_a.to_string(),
            "lladdr",
            &pair.mac_a,
            "dev",
            &pair.dev_b,
            "nud",
            "permanent",
        ]);
        pair
    }

    /// Runs `f` on a thread that has joined namespace `ns`: sockets and netlink calls made there
    /// belong to that namespace.
    pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
        thread::scope(|scope| {
            scope
                .spawn(|| {
                    enter(ns);
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

/// Moves the calling thread into network namespace `ns`.
pub fn enter(ns: &str) {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    setns(file, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns into {ns}: {e}"));
}

impl Default for VethPair {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        for ns in [&self.ns_a, &self.ns_b] {
            let _ = Command::new("ip").args(["netns", "delete", ns]).output();
        }
    }
}

/// Deletes namespaces of earlier runs whose process no longer exists.
fn remove_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "delete", &name]).output();
        }
    }
}

/// Hosts on one Ethernet segment: a namespace each, joined to a bridge in a hub namespace, with
/// an IPv4 address each in one /24. Dropping it (also while a failed test unwinds) deletes every
/// namespace, which deletes the bridge and the veths with them; names carry the pid, so the
/// next run removes what a killed one left.
#[derive(Debug)]
pub struct Lan {
    hub: String,
    /// Each host's namespace and address, in the order they were asked for.
    pub hosts: Vec<(String, Ipv4Addr)>,
}

impl Lan {
    /// A segment with one host per name in `names` (the names become part of the namespaces').
    pub fn new(names: &[&str]) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        assert!(
            nix::unistd::geteuid().is_root(),
            "network-namespace tests need root: run them as root, e.g. `sudo make test`"
        );
        remove_stale_namespaces();
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{pid}-lan{n}");
        let mut lan = Lan {
            hub: format!("{PREFIX}{tag}-hub"),
            hosts: Vec::new(),
        };
        ip(&["netns", "add", &lan.hub]);
        ip(&["-n", &lan.hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &lan.hub, "link", "set", "br0", "up"]);
        for (i, name) in names.iter().enumerate() {
            let ns = format!("{PREFIX}{tag}-{name}");
            ip(&["netns", "add", &ns]);
            let addr = Ipv4Addr::new(10, 253, (n % 250) as u8, 10 + i as u8);
            lan.hosts.push((ns.clone(), addr));
            netns_exec(
                &ns,
                "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; ip link set lo up",
            );
            let port = format!("p{i}");
            ip(&[
                "-n", &lan.hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ]);
            ip(&["-n", &lan.hub, "link", "set", &port, "master", "br0"]);
            ip(&["-n", &lan.hub, "link", "set", &port, "up"]);
            let cidr = format!("{addr}/24");
            ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        }
        lan
    }

    /// The namespace and address of the host called `name`.
    pub fn host(&self, name: &str) -> (&str, Ipv4Addr) {
        self.hosts
            .iter()
            .find(|(ns, _)| ns.ends_with(&format!("-{name}")))
            .map(|(ns, addr)| (ns.as_str(), *addr))
            .unwrap_or_else(|| panic!("no host {name} on this LAN"))
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for (ns, _) in &self.hosts {
            let _ = Command::new("ip").args(["netns", "delete", ns]).output();
        }
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.hub])
            .output();
    }
}

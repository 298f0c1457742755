//! veth pairs as split outputs: way k leaves on PREFIXk, and unmodified applications capture
//! on its peer PREFIXkp. The pairs are made with iproute2's `ip` and deleted when the
//! [`VethPairs`] that made them is dropped.

use std::path::Path;

/// Longest interface name Linux takes (IFNAMSIZ - 1).
pub const MAX_NAME: usize = 15;

/// Why the pairs could not be made.
#[derive(Debug, thiserror::Error)]
pub enum VethError {
    /// The peer's name would be too long.
    #[error(
        "--veth-prefix {prefix:?}: {peer} is longer than an interface name may be ({MAX_NAME})"
    )]
    NameTooLong {
        /// The prefix asked for.
        prefix: String,
        /// The name it gives the last peer.
        peer: String,
    },
    /// An interface of that name is there already.
    #[error("interface {0} exists already: remove it or pick another --veth-prefix")]
    Exists(String),
    /// `ip` failed, or could not run.
    #[error("{0}")]
    Ip(String),
}

impl VethError {
    /// True when the names asked for are at fault, not the system.
    pub fn is_config(&self) -> bool {
        !matches!(self, VethError::Ip(_))
    }
}

/// veth pairs made for a split's outputs, deleted when dropped.
#[derive(Debug)]
pub struct VethPairs(Vec<String>);

/// Runs `ip ARGS…`; the error quotes the command and what it said.
fn ip(args: &[&str]) -> Result<(), VethError> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| {
            VethError::Ip(format!(
                "running ip {}: {e} (iproute2 installed?)",
                args.join(" ")
            ))
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(VethError::Ip(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl VethPairs {
    /// Makes `count` pairs PREFIXk / PREFIXkp, up, with IPv6 off (no router solicitations or
    /// address detection on capture interfaces), both ends with an MTU of `mtu` (the kernel's
    /// default, 1500, when `None`; give the inputs' MTU so that jumbo frames fit) and `queues`
    /// transmit and receive queues (one per engine thread, so that each sends through an
    /// AF_XDP socket of its own). Pairs made before a failure are deleted.
    pub fn create(
        prefix: &str,
        count: u32,
        mtu: Option<usize>,
        queues: u32,
    ) -> Result<Self, VethError> {
        let queues = queues.max(1).to_string();
        let mut shape = vec![
            "numtxqueues",
            queues.as_str(),
            "numrxqueues",
            queues.as_str(),
        ];
        let mtu = mtu.map(|m| m.to_string());
        if let Some(mtu) = &mtu {
            shape.extend(["mtu", mtu.as_str()]);
        }
        let mut made = Self(Vec::new());
        for k in 0..count {
            let name = format!("{prefix}{k}");
            let peer = format!("{name}p");
            if peer.len() > MAX_NAME {
                return Err(VethError::NameTooLong {
                    prefix: prefix.to_owned(),
                    peer,
                });
            }
            if Path::new("/sys/class/net").join(&name).exists() {
                return Err(VethError::Exists(name));
            }
            let mut args = vec!["link", "add", name.as_str()];
            args.extend(&shape);
            args.extend(["type", "veth", "peer", "name", peer.as_str()]);
            args.extend(&shape);
            ip(&args)?;
            made.0.push(name.clone());
            for dev in [&name, &peer] {
                let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6"), "1");
                ip(&["link", "set", dev, "up"])?;
            }
        }
        tracing::info!(
            pairs = made.0.len(),
            "veth outputs: frames of way k leave on {prefix}k; capture on {prefix}kp"
        );
        Ok(made)
    }

    /// The sending ends, PREFIX0 ….
    pub fn names(&self) -> &[String] {
        &self.0
    }
}

impl Drop for VethPairs {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = ip(&["link", "del", name]);
        }
    }
}

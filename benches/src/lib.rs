//! Benchmarks of fastedge.
//!
//! Owns: criterion benches of the hot paths (`benches/`, run with `cargo bench -p
//! fastedge-benches`); the harness against peers (haproxy, nginx, hitch, AF_PACKET fanout)
//! comes here too. Speed goals live here, never in timed unit tests.

use fastedge_rings::pipeline::{
    BrickConfig, HashName, InputConfig, InputMode, PipelineConfig, SpeedName,
};
use fastedge_tls::boring::{
    error::ErrorStack,
    ssl::{SslConnector, SslConnectorBuilder, SslMethod, SslVerifyMode, SslVersion},
};
use fastedge_wire::synth::{TrafficSpec, Transport, MAX_FRAME};

/// The benchmark clients' TLS setup: TLS 1.3 only, offering only `group` (X25519,
/// X25519MLKEM768, …), no certificate check (the peers use a throwaway certificate).
pub fn tls13_client(group: &str) -> Result<SslConnectorBuilder, ErrorStack> {
    let mut builder = SslConnector::builder(SslMethod::tls())?;
    builder.set_verify(SslVerifyMode::NONE);
    builder.set_min_proto_version(Some(SslVersion::TLS1_3))?;
    builder.set_curves_list(group)?;
    Ok(builder)
}

/// 2,048 generated 64-byte IPv4/UDP frames (60 bytes + FCS) of 1,024 flows, both directions:
/// the packet-rate worst case the split benches run on.
pub fn udp_frames_64b() -> Vec<Vec<u8>> {
    let spec = TrafficSpec {
        src_mac: [2, 0, 0, 0, 0, 1],
        dst_mac: [2, 0, 0, 0, 0, 2],
        client_base: std::net::Ipv4Addr::new(10, 1, 0, 0).into(),
        server: std::net::Ipv4Addr::new(10, 0, 0, 1).into(),
        server_port: 443,
        transport: Transport::Udp,
        flows: 1024,
        frame_len: 60,
        both_directions: true,
    };
    let mut buf = [0u8; MAX_FRAME];
    (0..2048u64)
        .map(|seq| {
            let n = spec.write(seq, &mut buf);
            buf[..n].to_vec()
        })
        .collect()
}

/// A pipeline of one 5-tuple balance stage over `ways` shm ways named `name` (1 MiB each);
/// its input is never opened by the benches.
pub fn balance_pipeline(name: &str, ways: u32) -> PipelineConfig {
    PipelineConfig {
        name: Some(name.to_owned()),
        inputs: vec![InputConfig {
            interface: Some("bench".into()),
            pcap: None,
            mode: InputMode::Auto,
            speed: SpeedName::Fast,
        }],
        output: BrickConfig::Balance {
            hash: HashName::Five,
            ways: Some(ways),
            to: Vec::new(),
            non_ip: 0,
        },
        decapsulate: true,
        way_kib: 1024,
        rules: Vec::new(),
        rule_capacity: 1,
        hash_key: None,
        way_group: None,
    }
}

//! Hot paths of `fastedge-wire`.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use fastedge_wire::{
    http1::{parse_request_head, DEFAULT_MAX_HEAD},
    packet::{flow_hash, parse, way_of, HashMode, Parsed},
};

/// A browser-like request head (about 500 bytes).
const BROWSER_GET: &[u8] = b"GET /static/app.js?v=1234 HTTP/1.1\r\n\
Host: www.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
Accept: */*\r\n\
Accept-Language: en-US,en;q=0.5\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Referer: https://www.example.com/\r\n\
Connection: keep-alive\r\n\
Cookie: session=0123456789abcdef0123456789abcdef; theme=dark\r\n\
Sec-Fetch-Dest: script\r\n\
Sec-Fetch-Mode: no-cors\r\n\
Sec-Fetch-Site: same-origin\r\n\
\r\n";

fn http1(c: &mut Criterion) {
    let mut group = c.benchmark_group("http1");
    group.throughput(Throughput::Bytes(BROWSER_GET.len() as u64));
    group.bench_function("parse_request_head/browser_get", |b| {
        b.iter(|| parse_request_head(black_box(BROWSER_GET), DEFAULT_MAX_HEAD))
    });
    group.finish();
}

/// A 64-byte Ethernet/IPv4/UDP frame, the packet-rate worst case.
fn udp_frame() -> Vec<u8> {
    let mut frame = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
    frame.extend_from_slice(&[
        0x45, 0, 0, 46, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ]);
    frame.extend_from_slice(&[0x04, 0xd2, 0x00, 0x35, 0, 26, 0, 0]);
    frame.resize(64, 0);
    frame
}

fn packet(c: &mut Criterion) {
    let frame = udp_frame();
    let mut group = c.benchmark_group("packet");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse+hash+way/ipv4_udp_64B", |b| {
        b.iter(|| match parse(black_box(&frame), true) {
            Ok(Parsed::Ip(key)) => way_of(flow_hash(&key, HashMode::FiveTuple), 30),
            _ => u32::MAX,
        })
    });
    group.finish();
}

criterion_group!(benches, http1, packet);
criterion_main!(benches);

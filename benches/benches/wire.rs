//! Hot paths of `fastedge-wire`.

use std::net::SocketAddr;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use fastedge_wire::{
    forwarded::{ClientFacts, ForwardedConfig, Injector},
    http1::{parse_request_head, DEFAULT_MAX_HEAD},
    packet::{flow_hash, parse, way_of, HashKey, HashMode, Parsed},
    proxy::{encode_v1, encode_v2, ConnectionAddrs, TlsFacts},
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
            Ok(Parsed::Ip(key)) => way_of(
                flow_hash(&key, HashMode::FiveTuple, &HashKey { k0: 1, k1: 2 }),
                30,
            ),
            _ => u32::MAX,
        })
    });
    group.finish();
}

fn addrs(client: &str, local: &str) -> ConnectionAddrs {
    let addr = |text: &str| text.parse::<SocketAddr>().expect("socket address literal");
    ConnectionAddrs {
        client: addr(client),
        local: addr(local),
    }
}

fn proxy(c: &mut Criterion) {
    let families = [
        ("ipv4", addrs("203.0.113.7:51234", "192.0.2.10:443")),
        (
            "ipv6",
            addrs("[2001:db8:85a3::8a2e:370:7334]:51234", "[2001:db8::10]:443"),
        ),
    ];
    // What a typical browser connection states: no client certificate.
    let tls = TlsFacts {
        alpn: Some(b"http/1.1".to_vec()),
        server_name: Some("www.example.com".into()),
        version: Some("TLSv1.3".into()),
        cipher: Some("TLS_AES_128_GCM_SHA256".into()),
        ..TlsFacts::default()
    };
    let mut group = c.benchmark_group("proxy");
    group.throughput(Throughput::Elements(1));
    // One output Vec, cleared per iteration: this measures encoding, not the Vec's allocation.
    let mut out = Vec::with_capacity(512);
    for (family, addrs) in &families {
        group.bench_function(format!("v1/{family}"), |b| {
            b.iter(|| {
                out.clear();
                encode_v1(black_box(addrs), &mut out);
                out.len()
            })
        });
        group.bench_function(format!("v2/{family}"), |b| {
            b.iter(|| {
                out.clear();
                encode_v2(black_box(addrs), None, &mut out);
                out.len()
            })
        });
        group.bench_function(format!("v2+tls/{family}"), |b| {
            b.iter(|| {
                out.clear();
                encode_v2(black_box(addrs), Some(black_box(&tls)), &mut out);
                out.len()
            })
        });
    }
    group.finish();
}

fn forwarded(c: &mut Criterion) {
    let config = ForwardedConfig {
        x_forwarded: true,
        forwarded: false,
        max_head: DEFAULT_MAX_HEAD,
    };
    let facts = ClientFacts {
        client: "203.0.113.7".parse().expect("IP literal"),
        local_port: 443,
        trusted: false,
    };
    // One injector fed request after request, as on a keep-alive connection: BROWSER_GET has no
    // body, so each feed starts at a fresh head.
    let mut injector = Injector::new(config, facts);
    let mut out = Vec::with_capacity(1024);
    injector
        .feed(BROWSER_GET, &mut out)
        .expect("injecting into BROWSER_GET");
    let xff: &[u8] = b"\r\nX-Forwarded-For: 203.0.113.7\r\n";
    assert!(out.windows(xff.len()).any(|w| w == xff), "no XFF injected");
    let mut group = c.benchmark_group("forwarded");
    group.throughput(Throughput::Elements(1));
    group.bench_function("xff/browser_get", |b| {
        b.iter(|| {
            out.clear();
            injector.feed(black_box(BROWSER_GET), &mut out)
        })
    });
    group.finish();
    // Every timed feed rewrote a whole head (a failed injector would refuse this one).
    let before = injector.requests();
    out.clear();
    injector
        .feed(BROWSER_GET, &mut out)
        .expect("injector still healthy after the bench");
    assert_eq!(injector.requests(), before + 1);
}

criterion_group!(benches, http1, packet, proxy, forwarded);
criterion_main!(benches);

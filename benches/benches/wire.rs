//! Hot paths of `fastedge-wire`.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use fastedge_wire::http1::{parse_request_head, DEFAULT_MAX_HEAD};

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

criterion_group!(benches, http1);
criterion_main!(benches);

//! The executor engine under `fastedge serve` (io_uring by default; `FASTEDGE_ENGINE=glommio`
//! runs the suite on glommio): out of descriptors, accepting pauses with one log line and
//! resumes by itself; uploads through many connections at once to a backend that reads slowly
//! arrive whole while the server's memory stays bounded.

// Test code: an unwrap that fails is a failed test.
#![allow(clippy::unwrap_used)]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use fastedge_tests::{
    process::{open_fds, rss_kib, Fastedge},
    TempDir,
};
use fastedge_tls::boring::ssl::{SslConnector, SslMethod, SslVerifyMode};

fn first_cpu() -> String {
    fastedge_runtime::CpuList::available().unwrap().cpus()[0].to_string()
}

#[test]
fn out_of_descriptors_accepting_pauses_once_and_resumes() {
    let state = TempDir::new("serve-emfile");
    let state_dir = state.path().to_str().unwrap().to_owned();
    let cpu = first_cpu();
    let args = [
        "serve",
        "--cores",
        &cpu,
        "--listen",
        "127.0.0.1:0",
        "--state-dir",
        &state_dir,
    ];
    // What a started server holds, measured on a first run; the second runs with room for a
    // few more descriptors only, from its start (an accept armed at start-up takes the limit
    // of that moment: io_uring reads RLIMIT_NOFILE when the operation is prepared).
    let baseline = {
        let mut probe = Fastedge::start(&args, &[("FASTEDGE_LOG", "info")]);
        probe.wait_listening();
        thread::sleep(Duration::from_millis(300));
        let open = open_fds(probe.pid());
        probe.terminate(Duration::from_secs(10));
        open
    };
    let server =
        Fastedge::start_with_nofile(&args, &[("FASTEDGE_LOG", "info")], baseline as u64 + 8);
    let addr = server.wait_listening();

    // Bare connections: each accepted one holds a descriptor until the client goes away.
    let held: Vec<TcpStream> = (0..40).map(|_| TcpStream::connect(addr).unwrap()).collect();
    server.wait_for_logged("pausing accepts", Duration::from_secs(10));
    thread::sleep(Duration::from_millis(500));
    drop(held);
    // The backlog drains in bursts that refill the table: still one pause. Once calm, the next
    // accept ends it.
    thread::sleep(Duration::from_millis(1500));

    // Serving works again.
    let out = Command::new("curl")
        .args(["--silent", "--insecure", "--max-time", "10"])
        .arg(format!("https://{addr}/after"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("GET /after"),
        "curl after the pause: {out:?}\n{}",
        server.log_text()
    );
    server.wait_for_logged("accepting again", Duration::from_secs(5));
    let pauses = server.log_text().matches("pausing accepts").count();
    assert_eq!(pauses, 1, "one log line per pause:\n{}", server.log_text());
}

/// A backend that reads each connection slowly (8 KiB every 5 ms) and answers with the byte
/// count and a checksum of what it got.
fn slow_reading_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            thread::spawn(move || {
                let mut buf = [0u8; 8192];
                let mut total = 0usize;
                let mut sum = 0u64;
                let mut head_end = None;
                let mut head = Vec::new();
                loop {
                    thread::sleep(Duration::from_millis(5));
                    let Ok(n) = stream.read(&mut buf) else { return };
                    if n == 0 {
                        return;
                    }
                    let mut body = &buf[..n];
                    if head_end.is_none() {
                        head.extend_from_slice(body);
                        match head.windows(4).position(|w| w == b"\r\n\r\n") {
                            Some(p) => {
                                head_end = Some(p + 4);
                                body = &[];
                                let rest = head.split_off(p + 4);
                                for &b in &rest {
                                    sum = sum.wrapping_mul(31).wrapping_add(u64::from(b));
                                }
                                total += rest.len();
                            }
                            None => continue,
                        }
                    }
                    for &b in body {
                        sum = sum.wrapping_mul(31).wrapping_add(u64::from(b));
                    }
                    total += body.len();
                    if total >= UPLOAD {
                        let answer = format!("{total} {sum}");
                        let _ = write!(
                            stream,
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                            answer.len()
                        );
                        return;
                    }
                }
            });
        }
    });
    addr
}

const UPLOAD: usize = 2 << 20;
const CLIENTS: usize = 48;

#[test]
fn slow_readers_behind_many_uploads_lose_nothing_and_memory_stays_bounded() {
    let backend = slow_reading_backend();
    let state = TempDir::new("serve-slow-readers");
    let cpu = first_cpu();
    let config = format!("cores = \"{cpu}\"\n[[backend]]\naddress = \"{backend}\"\n");
    let (server, addr) = Fastedge::serve_config(&state, &config);
    let upload: Vec<u8> = (0..UPLOAD).map(|i| (i * 131 + i / 4096) as u8).collect();
    let expected = {
        let sum = upload
            .iter()
            .fold(0u64, |s, &b| s.wrapping_mul(31).wrapping_add(u64::from(b)));
        format!("{UPLOAD} {sum}")
    };
    let body = state.path().join("upload.bin");
    std::fs::write(&body, &upload).unwrap();
    // Warm up (certificates, pools), then the baseline.
    let _ = Command::new("curl")
        .args([
            "--silent",
            "--insecure",
            "--max-time",
            "60",
            "--data-binary",
        ])
        .arg(format!("@{}", body.display()))
        .arg(format!("https://{addr}/warm"))
        .output()
        .unwrap();
    let baseline = rss_kib(server.pid());
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            Command::new("curl")
                .args([
                    "--silent",
                    "--insecure",
                    "--max-time",
                    "120",
                    "--data-binary",
                ])
                .arg(format!("@{}", body.display()))
                .arg(format!("https://{addr}/up"))
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut peak = baseline;
    let mut outputs = Vec::new();
    for mut client in clients {
        while client.try_wait().unwrap().is_none() {
            peak = peak.max(rss_kib(server.pid()));
            thread::sleep(Duration::from_millis(20));
        }
        let mut out = String::new();
        client
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        outputs.push(out);
    }
    for (i, out) in outputs.iter().enumerate() {
        assert_eq!(out, &expected, "client {i}: the backend got something else");
    }
    // 48 × 2 MiB went through in flight: what the server held at its peak must stay a
    // fraction of it (buffer pool, per-connection input and output bounds, TLS buffers), not
    // grow with the uploads. Measured 13–34 MiB at the peak (allocator slack varies): the bound
    // is half of each upload per connection; buffering whole uploads would take 96 MiB.
    let grew = peak.saturating_sub(baseline);
    assert!(
        grew < (CLIENTS * UPLOAD / 2 / 1024) as u64,
        "RSS grew {grew} KiB over {baseline} KiB during {CLIENTS} uploads of {UPLOAD} bytes ({:?})",
        started.elapsed()
    );
}

#[test]
fn an_idle_tls_connection_costs_little_memory() {
    // Idle: handshake done, nothing asked yet; its backend connection is open (the connect
    // starts once the ClientHello is in). What the server holds then is the TLS state (about
    // 2.7 KiB in BoringSSL once the session tickets it held until a first write are flushed,
    // 100 ms into the silence), the connection's task, the pump's state and the engine's two
    // streams: 3.8 KiB in a debug build (4.5 on glommio), 4.0 KiB in a release one. It was 4.9
    // KiB (debug) while the pump was an `async fn`, 7.0 KiB while the tickets waited in
    // BoringSSL and the phases before the pump kept their state allocated, 9.7 KiB before the
    // phases were boxed.
    const CONNECTIONS: usize = 1000;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = listener.local_addr().unwrap();
    thread::spawn(move || {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept() {
            held.push(stream);
        }
    });
    let state = TempDir::new("serve-idle-memory");
    let cpu = first_cpu();
    let (server, addr) = Fastedge::serve_config(
        &state,
        &format!("cores = \"{cpu}\"\n[[backend]]\naddress = \"{backend}\"\n"),
    );
    let mut builder = SslConnector::builder(SslMethod::tls()).unwrap();
    builder.set_verify(SslVerifyMode::NONE);
    let connector = builder.build();
    let connect = || {
        let tcp = TcpStream::connect(addr).unwrap();
        let mut config = connector.configure().unwrap();
        config.set_verify_hostname(false);
        config.connect("localhost", tcp).unwrap()
    };
    // Warm up (pools, allocator arenas), then the baseline.
    let warm: Vec<_> = (0..100).map(|_| connect()).collect();
    drop(warm);
    thread::sleep(Duration::from_millis(500));
    let baseline = rss_kib(server.pid());
    let held: Vec<_> = (0..CONNECTIONS).map(|_| connect()).collect();
    thread::sleep(Duration::from_millis(500));
    let per_connection = rss_kib(server.pid()).saturating_sub(baseline) * 1024 / CONNECTIONS as u64;
    eprintln!("resident memory per idle TLS connection: {per_connection} bytes");
    // The goal, 4 KiB, on io_uring (a debug build measures 3,842 bytes, ~200 below a release
    // one); about 10 % above the 4,653 bytes glommio measures. The pump as an `async fn` again
    // (+0.5 KiB), the pre-pump state kept (+1.3 KiB) or the tickets left in BoringSSL (+0.6
    // KiB) would cross it.
    let glommio = std::env::var("FASTEDGE_ENGINE").is_ok_and(|e| e == "glommio");
    let bound = if glommio { 5120 } else { 4096 };
    assert!(
        per_connection < bound,
        "{per_connection} bytes per idle TLS connection (bound {bound})"
    );
    drop(held);
}

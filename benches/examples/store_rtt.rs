//! The round trip of one shared-session-store lookup (`fastedge_tls::session_store`) without
//! TLS: what the store client and Redis cost alone, to set beside the handshake figures of
//! benches/peers/session_store.sh. `thread` asks from a plain thread (through the store's
//! client thread); `core` from a core of the io_uring engine (its own connection, as `serve`'s
//! cores do). Pin it and redis-server with taskset to see what crossing CPUs costs.
//!
//! Usage: store_rtt REDIS_URL LOOKUPS [thread|core]   (e.g. redis://127.0.0.1:6379 5000 core)
use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (url, n, mode) = match args.as_slice() {
        [_, url, n] => (url, n, "thread"),
        [_, url, n, mode] => (url, n, mode.as_str()),
        _ => return Err("usage: store_rtt REDIS_URL LOOKUPS [thread|core]".into()),
    };
    let client = fastedge_tls::session_store::StoreClient::for_url(url)?;
    let n: usize = n.parse()?;
    if n == 0 {
        return Err("LOOKUPS must be positive".into());
    }
    let mut times = match mode {
        "thread" => {
            let mut times = Vec::with_capacity(n);
            for i in 0..n {
                let id = format!("id{i}");
                let t = Instant::now();
                let _ = block_on(client.lookup(id.as_bytes(), Duration::from_millis(100)));
                times.push(t.elapsed());
            }
            times
        }
        "core" => {
            use fastedge_runtime::uring::{RingSettings, Runtime};
            Runtime::new(RingSettings::default())?.block_on(async move {
                let mut times = Vec::with_capacity(n);
                for i in 0..n {
                    let id = format!("id{i}");
                    let t = Instant::now();
                    let _ = client
                        .lookup(id.as_bytes(), Duration::from_millis(100))
                        .await;
                    times.push(t.elapsed());
                }
                times
            })
        }
        other => return Err(format!("unknown mode {other:?} (thread or core)").into()),
    };
    times.sort();
    println!(
        "lookups {n} ({mode}): p50 {:?} p99 {:?}",
        times[n / 2],
        times[n * 99 / 100]
    );
    Ok(())
}

struct Unpark(std::thread::Thread);
impl std::task::Wake for Unpark {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.unpark();
    }
}
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

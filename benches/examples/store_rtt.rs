//! The round trip of one shared-session-store lookup (`fastedge_tls::session_store`) from a
//! plain thread, without TLS: what the store client and Redis cost alone, to set beside the
//! handshake figures of benches/peers/session_store.sh. Pin it and redis-server with taskset
//! to see what crossing CPUs costs.
//!
//! Usage: store_rtt REDIS_URL LOOKUPS   (e.g. redis://127.0.0.1:6379 5000)
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, n] = args.as_slice() else {
        return Err("usage: store_rtt REDIS_URL LOOKUPS".into());
    };
    let client = fastedge_tls::session_store::StoreClient::for_url(url)?;
    let n: usize = n.parse()?;
    if n == 0 {
        return Err("LOOKUPS must be positive".into());
    }
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("id{i}");
        let t = std::time::Instant::now();
        let _ = block_on(client.lookup(id.as_bytes(), std::time::Duration::from_millis(100)));
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "lookups {n}: p50 {:?} p99 {:?}",
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

//! The engine decision, measured: one plain TCP forwarder written twice, on fastedge's io_uring
//! engine and on monoio, both with the same ring set-up (`SINGLE_ISSUER | DEFER_TASKRUN`, so
//! neither pays an interrupt per completion), so that a keep-alive load through each shows what
//! the engines cost and nothing else (no TLS, no HTTP parsing).
//!
//! `engine_proxy ENGINE LISTEN BACKEND` with ENGINE `fastedge` or `monoio`; runs on the CPU it
//! is started on (`taskset`). `benches/peers/engines.sh` drives both with h2load.

use std::{net::SocketAddr, process::ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match args.as_slice() {
        [engine, listen, backend] => listen
            .parse::<SocketAddr>()
            .ok()
            .zip(backend.parse::<SocketAddr>().ok())
            .map(|(listen, backend)| (engine.as_str(), listen, backend)),
        _ => None,
    };
    let Some((engine, listen, backend)) = parsed else {
        eprintln!("usage: engine_proxy fastedge|monoio LISTEN_ADDR BACKEND_ADDR");
        return ExitCode::from(2);
    };
    let result = match engine {
        "fastedge" => fastedge::run(listen, backend),
        "monoio" => on_monoio::run(listen, backend),
        other => Err(std::io::Error::other(format!(
            "unknown engine {other:?} (fastedge or monoio)"
        ))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("engine_proxy: {error}");
            ExitCode::FAILURE
        }
    }
}

mod fastedge {
    use std::{io, net::SocketAddr};

    use fastedge_runtime::uring::{
        net::{Stream, TcpListener},
        spawn, RingSettings, Runtime,
    };

    pub fn run(listen: SocketAddr, backend: SocketAddr) -> io::Result<()> {
        let listener = std::net::TcpListener::bind(listen)?;
        let runtime = Runtime::new(RingSettings::default())?;
        runtime.block_on(async move {
            let listener = TcpListener::from_fd(listener.into())?;
            loop {
                let client = listener.accept().await?;
                spawn(async move {
                    if let Ok(server) = Stream::connect(backend).await {
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        let (client_r, mut client_w) = futures_lite::io::split(client);
                        let (server_r, mut server_w) = futures_lite::io::split(server);
                        let up = futures_lite::io::copy(client_r, &mut server_w);
                        let down = futures_lite::io::copy(server_r, &mut client_w);
                        let _ = futures_lite::future::or(up, down).await;
                    }
                })
                .detach();
            }
        })
    }
}

mod on_monoio {
    use std::{io, net::SocketAddr};

    use monoio::{
        io::{AsyncReadRent, AsyncWriteRentExt, Splitable},
        net::{TcpListener, TcpStream},
        IoUringDriver, RuntimeBuilder,
    };

    pub fn run(listen: SocketAddr, backend: SocketAddr) -> io::Result<()> {
        let mut ring = io_uring_06::IoUring::builder();
        ring.setup_single_issuer().setup_defer_taskrun();
        let mut runtime = RuntimeBuilder::<IoUringDriver>::new()
            .uring_builder(ring)
            .with_entries(1024)
            .build()?;
        runtime.block_on(async move {
            let listener = TcpListener::bind(listen)?;
            loop {
                let (client, _) = listener.accept().await?;
                monoio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(backend).await {
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        let (client_r, client_w) = client.into_split();
                        let (server_r, server_w) = server.into_split();
                        futures_lite::future::or(
                            copy(client_r, server_w),
                            copy(server_r, client_w),
                        )
                        .await;
                    }
                });
            }
        })
    }

    /// Reads up to 16 KiB and writes it all, until either side ends (what `copy` does on the
    /// other engine, in monoio's owned-buffer style).
    async fn copy<R: AsyncReadRent, W: AsyncWriteRentExt>(mut from: R, mut to: W) {
        let mut buf = Vec::with_capacity(16 * 1024);
        loop {
            let (result, read) = from.read(buf).await;
            match result {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let (result, mut written) = to.write_all(read).await;
            if result.is_err() {
                return;
            }
            written.clear();
            buf = written;
        }
    }
}

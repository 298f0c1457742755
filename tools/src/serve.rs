//! `fastedge serve`: TLS termination in front of TCP backends.

use std::{net::SocketAddr, path::PathBuf};

use clap::Args;
use fastedge_tls::{
    config::{ServeOverrides, DEFAULT_CONFIG},
    service::{check, default_state_dir, ConfigSource, Service},
};

use crate::Failure;

/// Terminate TLS and forward the plain bytes to TCP backends.
///
/// One executor per CPU of `--cores`, each pinned to its CPU with its own SO_REUSEPORT listener
/// per listen address. The backend connect starts in parallel with the TLS handshake and is
/// retried over the backends; backends can be told about the client with PROXY v1/v2, bud's
/// JSON line, or X-Forwarded-* headers in every request. Each connection ends with one log line
/// giving the bytes moved and why it closed.
///
/// Settings come from `--config` (TOML; `--print-default-config` shows every key with its
/// default; a bud JSON configuration is also read, unchanged); the options below override it. With no backend configured, fastedge starts a
/// built-in demo backend on loopback that answers every request with the request head as it
/// reached the backend; with no certificate, it uses a self-signed one created once in the
/// state directory. So `fastedge serve` alone answers `curl -k https://127.0.0.1:8443/`.
///
/// SIGTERM or SIGINT: stop accepting, let open connections finish for `drain_timeout`, exit 0;
/// a second signal exits at once. SIGHUP: reload the configuration.
///
/// Binary upgrade without dropping a connection: start the running one with
/// `--upgrade-socket PATH`, then run the new binary with `--take-over PATH` (and the same
/// options). The new process receives every listening socket of the old one (the same sockets,
/// with the connections waiting in their accept queues), starts accepting on them, tells the
/// service manager it is the main process (MAINPID=, READY=1), and the old process stops
/// accepting, lets its open connections finish for `drain_timeout` and exits 0. SIGUSR2 does
/// both steps: the running process starts its own binary again (by the name it was started
/// with, so the upgraded file) with the same options and `--take-over`; under systemd
/// (`NotifyAccess=all`) that is `systemctl kill -s USR2 fastedge-serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file (TOML, or bud's JSON), or `-` for standard input.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,

    /// Print the default configuration, every key documented, and exit.
    #[arg(long)]
    print_default_config: bool,

    /// CPUs to run on, one executor each, as a Linux CPU list: `0-7`, `0,2,4`, `1-3,6`.
    /// Overrides `cores` of the config. Default: every CPU this process may run on.
    #[arg(long, value_name = "LIST")]
    cores: Option<String>,

    /// Executor engine: `uring` (fastedge's io_uring engine, the default) or `glommio`.
    /// Overrides `engine` of the config.
    #[arg(long, value_name = "ENGINE", env = "FASTEDGE_ENGINE")]
    engine: Option<fastedge_runtime::Engine>,

    /// Address to accept TLS connections on; repeat for several. Overrides `frontend.listen`
    /// (default 127.0.0.1:8443).
    #[arg(long, value_name = "ADDR")]
    listen: Vec<SocketAddr>,

    /// Backend to forward to, `host:port`; replaces the config's backends with this one.
    /// Default: the built-in demo backend.
    #[arg(long, value_name = "HOST:PORT")]
    backend: Option<String>,

    /// PEM certificate chain, leaf first; needs `--key`. Overrides `tls.cert`.
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,

    /// PEM private key of `--cert`. Overrides `tls.key`.
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,

    /// ALPN protocols to accept, most preferred first, comma-separated (e.g. `h2,http/1.1`).
    /// Overrides `tls.alpn`.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    alpn: Option<Vec<String>>,

    /// Listen on this UNIX socket (created mode 0600) for a new `fastedge serve --take-over`
    /// to hand the listening sockets to. Default: off.
    #[arg(long, value_name = "PATH")]
    upgrade_socket: Option<PathBuf>,

    /// Take the listening sockets over from the `fastedge serve` listening on the upgrade
    /// socket PATH instead of binding them, then tell it to drain (a binary upgrade).
    #[arg(long, value_name = "PATH", alias = "takeover")]
    take_over: Option<PathBuf>,

    /// Where the demo certificate is kept. Default: $FASTEDGE_STATE_DIR, else
    /// $XDG_STATE_HOME/fastedge, else ~/.local/state/fastedge.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

/// Check a configuration file and exit: 0 if `fastedge serve` would start with it, 2 with the
/// reason if not. Certificates are loaded (and keys decrypted) and backend names resolved. A
/// bud JSON configuration is shown as the TOML it amounts to, with what was not carried over.
#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// Configuration file (TOML, or bud's JSON), or `-` for standard input.
    #[arg(value_name = "FILE")]
    config: PathBuf,
}

impl ServeArgs {
    /// The options that replace configuration keys, applied before the configuration is
    /// validated.
    fn overrides(&self) -> ServeOverrides {
        ServeOverrides {
            cores: self.cores.clone(),
            engine: self.engine,
            listen: self.listen.clone(),
            backend: self.backend.clone(),
            certificate: self.cert.clone().zip(self.key.clone()),
            alpn: self.alpn.clone(),
        }
    }
}

pub fn check_config(args: CheckConfigArgs) -> Result<(), Failure> {
    let source = ConfigSource::from_arg(Some(&args.config));
    let (notes, report) = check(&source, &args.config.display().to_string())
        .map_err(|e| Failure::of(e.is_config(), e))?;
    for note in notes {
        eprintln!("note: {note}");
    }
    print!("{report}");
    Ok(())
}

pub fn run(args: ServeArgs) -> Result<(), Failure> {
    if args.print_default_config {
        print!("{DEFAULT_CONFIG}");
        return Ok(());
    }
    Service {
        source: ConfigSource::from_arg(args.config.as_deref()),
        overrides: args.overrides(),
        state_dir: args.state_dir.clone().or_else(default_state_dir),
        upgrade_socket: args.upgrade_socket.clone(),
        take_over: args.take_over.clone(),
    }
    .run()
    .map_err(|e| Failure::of(e.is_config(), e))
}

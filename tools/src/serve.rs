//! `fastedge serve`: TLS termination in front of TCP backends.

use std::{
    io::Read,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, Context as _};
use clap::Args;
use fastedge_tls::{
    bud::Translation,
    config::{ServeConfig, ServeOverrides, DEFAULT_CONFIG},
    scrape::{ServeRates, ServeSnapshot},
    Terminator, TerminatorError,
};
use nix::sys::signal::Signal;

use crate::Failure;

/// How often the status line a service manager shows is renewed.
const STATUS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

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

    /// The configuration: `--config` (or the defaults) with the options applied.
    fn load(&self) -> Result<ServeConfig, Failure> {
        let overrides = self.overrides();
        match &self.config {
            Some(path) => Ok(read_config(path, &overrides)?.0),
            None => ServeConfig::defaults_with(&overrides).map_err(Failure::config),
        }
    }

    /// Where the demo certificate is kept: `--state-dir`, else $FASTEDGE_STATE_DIR, else
    /// $XDG_STATE_HOME/fastedge, else ~/.local/state/fastedge.
    fn state_dir(&self) -> Option<PathBuf> {
        if let Some(dir) = &self.state_dir {
            return Some(dir.clone());
        }
        if let Some(dir) = std::env::var_os("FASTEDGE_STATE_DIR") {
            return Some(dir.into());
        }
        if let Some(dir) = std::env::var_os("XDG_STATE_HOME") {
            return Some(Path::new(&dir).join("fastedge"));
        }
        let home = std::env::var_os("HOME")?;
        Some(Path::new(&home).join(".local/state/fastedge"))
    }
}

/// A terminator failure with the exit code its kind calls for.
fn failure(error: TerminatorError) -> Failure {
    if error.is_config() {
        Failure::config(error)
    } else {
        Failure::runtime(error)
    }
}

/// Reads and validates a configuration file (`-`: standard input) with `overrides` applied;
/// for a bud JSON configuration, also its TOML translation.
fn read_config(
    path: &Path,
    overrides: &ServeOverrides,
) -> Result<(ServeConfig, Option<Translation>), Failure> {
    let (name, text) = if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the configuration from standard input")
            .map_err(Failure::config)?;
        ("standard input".to_owned(), text)
    } else {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading configuration {}", path.display()))
            .map_err(Failure::config)?;
        (path.display().to_string(), text)
    };
    let (config, translation) = fastedge_tls::bud::parse_any(&text, overrides)
        .map_err(|e| Failure::config(anyhow!("configuration {name}: {e}")))?;
    if let Some(translation) = &translation {
        tracing::info!(config = %name, "read as a bud JSON configuration");
        for note in &translation.notes {
            tracing::warn!(config = %name, "bud key not carried over: {note}");
        }
    }
    Ok((config, translation))
}

pub fn check_config(args: CheckConfigArgs) -> Result<(), Failure> {
    let (mut config, translation) = read_config(&args.config, &ServeOverrides::default())?;
    for key in config.leave_out_h2_where_injecting() {
        eprintln!("note: {key}: h2 left out, its backends get forwarding headers (HTTP/1 only)");
    }
    let terminator = Terminator::new(config);
    terminator.check().map_err(failure)?;
    let config = terminator.config();
    println!(
        "{}: OK ({} listen address(es), {} backend(s){}, {} SNI context(s))",
        args.config.display(),
        config.frontend.listen.len(),
        config.backends.len(),
        if config.backends.is_empty() {
            ": the demo backend"
        } else {
            ""
        },
        config.tls.contexts.len(),
    );
    if let Some(dynamic) = &config.tls.dynamic_sni {
        println!(
            "  dynamic SNI: {} (timeout {} ms, cache {} names per core)",
            dynamic.url,
            dynamic.timeout.as_millis(),
            dynamic.cache_size
        );
    }
    if let Some(translation) = translation.filter(|_| args.config != Path::new("-")) {
        println!("  read as a bud JSON configuration; in fastedge's TOML it reads:\n");
        for line in translation.toml.lines() {
            println!("    {line}");
        }
        println!();
        for note in &translation.notes {
            println!("  not carried over: {note}");
        }
    }
    for c in &config.tls.contexts {
        println!(
            "  context {}: {} certificate(s), alpn {:?}, client certificates {:?}, {}",
            c.names
                .iter()
                .map(|name| name.as_str())
                .collect::<Vec<_>>()
                .join(" "),
            c.certificates.len(),
            c.alpn,
            c.client_auth.verify,
            if c.backends.is_empty() {
                "global backends".to_owned()
            } else {
                format!("{} own backend(s)", c.backends.len())
            }
        );
    }
    Ok(())
}

pub fn run(args: ServeArgs) -> Result<(), Failure> {
    if args.print_default_config {
        print!("{DEFAULT_CONFIG}");
        return Ok(());
    }
    let config = args.load()?;
    let mut terminator = Terminator::new(config.clone());
    if let Some(dir) = args.state_dir() {
        terminator = terminator.state_dir(dir);
    }
    if let Some(path) = &args.upgrade_socket {
        terminator = terminator.upgrade_socket(path);
    }
    if let Some(path) = &args.take_over {
        terminator = terminator.take_over(path);
    }
    // Signals and the hand-over to a successor arrive on one channel.
    let (events, arrived) = std::sync::mpsc::channel();
    let handed_over = events.clone();
    terminator = terminator.on_handed_over(move || drop(handed_over.send(Event::HandedOver)));
    // The terminator's threads inherit the signal mask: block the signals so only `sigwait`
    // below sees them.
    let signals = crate::block_signals(&[
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGUSR2,
    ])?;
    let mut terminator = terminator.start().map_err(failure)?;
    std::thread::spawn(move || {
        while let Ok(signal) = signals.wait() {
            if events.send(Event::Signal(signal)).is_err() {
                return;
            }
        }
    });
    // A service manager (systemd, Type=notify) hears READY once every listener accepts, and
    // watchdog pings from a thread of their own for as long as the process runs.
    let addrs: Vec<String> = terminator
        .listen_addrs()
        .iter()
        .map(ToString::to_string)
        .collect();
    let (addrs, cores) = (addrs.join(" "), terminator.cpus().len());
    let serving = |generation: u64| {
        format!("serving on {addrs} with {cores} cores (configuration generation {generation})")
    };
    if terminator.predecessor_pid().is_some() {
        // Serving on the old process's sockets: this process is the service's main one now;
        // then the old one drains.
        fastedge_runtime::notify::ready_as_main(&serving(terminator.generation()));
        match terminator.release_predecessor() {
            Ok(pid) => tracing::info!(old = pid, "binary upgrade done: the old process drains"),
            Err(error) => tracing::warn!(%error, "telling the old process to drain"),
        }
    } else {
        fastedge_runtime::notify::ready(&serving(terminator.generation()));
    }
    if fastedge_runtime::notify::enabled() {
        // `systemctl status` shows what the server does now, renewed every STATUS_EVERY.
        let registry = terminator.registry().clone();
        let serving_now = format!("serving on {addrs} with {cores} cores");
        std::thread::spawn(move || {
            let mut before = ServeSnapshot::of_registry(&registry);
            loop {
                std::thread::sleep(STATUS_EVERY);
                let after = ServeSnapshot::of_registry(&registry);
                let rates = ServeRates::between(&before, &after, STATUS_EVERY);
                fastedge_runtime::notify::status(&format!("{serving_now}; {}", rates.summary()));
                before = after;
            }
        });
    }
    if let Some(interval) = fastedge_runtime::notify::watchdog_interval() {
        std::thread::spawn(move || loop {
            fastedge_runtime::notify::watchdog();
            std::thread::sleep(interval);
        });
    }
    let signal = loop {
        let event = arrived
            .recv()
            .context("waiting for signals")
            .map_err(Failure::runtime)?;
        let signal = match event {
            Event::Signal(signal) => signal,
            Event::HandedOver => {
                // The new process is the service's main one: no STOPPING=1 from here.
                tracing::info!("handed over to a new process: draining, then exiting");
                return terminator.join().map_err(failure);
            }
        };
        if signal == Signal::SIGUSR2 {
            start_successor(&args);
            continue;
        }
        if signal != Signal::SIGHUP {
            break signal;
        }
        // SIGHUP: the configuration file again (and the certificates it names); standard
        // input cannot be read twice, so a configuration from there is reloaded as it was.
        fastedge_runtime::notify::reloading();
        let reloaded = match &args.config {
            Some(path) if path != Path::new("-") => read_config(path, &args.overrides()),
            _ => Ok((config.clone(), None)),
        };
        match reloaded {
            // The terminator logs how the reload went.
            Ok((config, _)) => drop(terminator.reload(config)),
            Err(failure) => tracing::error!(
                "reload failed, keeping the running configuration: {:#}",
                failure.error
            ),
        }
        // Serving either way: the new configuration, or the one before it.
        fastedge_runtime::notify::ready(&serving(terminator.generation()));
    };
    tracing::info!(signal = %signal, "signal received");
    fastedge_runtime::notify::stopping(&format!(
        "draining open connections (at most {} s)",
        terminator.drain_timeout().as_secs()
    ));
    terminator.drain();
    std::thread::spawn(move || loop {
        match arrived.recv() {
            Ok(Event::Signal(signal @ (Signal::SIGHUP | Signal::SIGUSR2))) => {
                tracing::info!(signal = %signal, "ignored while stopping")
            }
            Ok(Event::Signal(signal)) => {
                tracing::warn!(signal = %signal, "second signal: exiting without draining");
                std::process::exit(1);
            }
            Ok(Event::HandedOver) => {}
            Err(_) => return,
        }
    });
    terminator.join().map_err(failure)
}

/// SIGUSR2: starts this binary again (by the name it was started with, so the upgraded one)
/// with the same options and `--take-over` the upgrade socket; this process drains once the
/// new one serves. Under systemd (`NotifyAccess=all`) the new process becomes the unit's main
/// one.
fn start_successor(args: &ServeArgs) {
    let Some(socket) = &args.upgrade_socket else {
        tracing::warn!("SIGUSR2: no --upgrade-socket, so no binary upgrade: ignored");
        return;
    };
    if args.config.as_deref() == Some(Path::new("-")) {
        tracing::warn!(
            "SIGUSR2: the configuration came from standard input and cannot be read again: ignored"
        );
        return;
    }
    // The same options, less a --take-over this process was started with.
    let mut argv: Vec<std::ffi::OsString> = Vec::new();
    let mut skip = false;
    for arg in std::env::args_os().skip(1) {
        if std::mem::take(&mut skip) {
            continue;
        }
        let text = arg.to_string_lossy();
        if text == "--take-over" || text == "--takeover" {
            skip = true;
            continue;
        }
        if text.starts_with("--take-over=") || text.starts_with("--takeover=") {
            continue;
        }
        argv.push(arg);
    }
    argv.push("--take-over".into());
    argv.push(socket.clone().into_os_string());
    match fastedge_runtime::spawn_successor(&argv) {
        Ok(pid) => tracing::info!(
            pid,
            "SIGUSR2: started the new binary; it takes the listening sockets over"
        ),
        Err(error) => tracing::error!(%error, "SIGUSR2: starting the new binary"),
    }
}

/// What the main thread of `serve` waits for.
enum Event {
    /// A signal arrived.
    Signal(Signal),
    /// A new process took the listening sockets over; the terminator drains.
    HandedOver,
}

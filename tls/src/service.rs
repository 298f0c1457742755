//! The terminator as a long-running system service, as `fastedge serve` runs it: where the
//! configuration comes from ([`ConfigSource`]: a file, TOML or bud's JSON, standard input, or
//! the defaults), the signals a service manager sends, its notifications, and binary upgrades.
//!
//! [`Service::run`] starts a [`Terminator`] and then, until it stops:
//! - SIGTERM or SIGINT: stop accepting, let open connections finish for `drain_timeout`, return;
//!   a second signal exits the process at once;
//! - SIGHUP: read the configuration again (and the certificates it names) and reload it; a
//!   configuration that fails keeps the running one (standard input, which cannot be read twice,
//!   is reloaded as it was);
//! - SIGUSR2: start this program again with the same arguments and `--take-over` the upgrade
//!   socket ([`successor_args`]); once the new process serves, this one drains and returns;
//! - the service manager (systemd, `Type=notify`) hears READY once every listener accepts (or
//!   MAINPID and READY after a take-over), a status line renewed every few seconds, and
//!   watchdog pings.
//!
//! Owns: signals, the service manager's protocol, reading the configuration file. Does not
//! own: what a terminator does ([`crate::terminator`]), flags, printing.

use std::{
    ffi::OsString,
    io::Read,
    path::{Path, PathBuf},
    sync::mpsc,
    time::Duration,
};

use fastedge_runtime::signals::{Signal, SignalError};

use crate::{
    bud::Translation,
    config::{ConfigError, ServeConfig, ServeOverrides},
    scrape::{ServeRates, ServeSnapshot},
    Terminator, TerminatorError,
};

/// How often the status line a service manager shows is renewed.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Where a configuration is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// A file: TOML, or bud's JSON (translated).
    File(PathBuf),
    /// Standard input (`-` on the command line); read once.
    Stdin,
    /// No file: the defaults ([`crate::config::DEFAULT_CONFIG`]).
    Defaults,
}

/// A configuration that could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file or standard input could not be read.
    #[error("reading {what}: {error}")]
    Read {
        /// `configuration PATH` or `the configuration from standard input`.
        what: String,
        /// The system's answer.
        error: std::io::Error,
    },
    /// The document is not a valid configuration.
    #[error("configuration {name}: {error}")]
    Invalid {
        /// The file's path or `standard input`.
        name: String,
        /// What is wrong with it.
        error: ConfigError,
    },
    /// The defaults with the overrides applied are not valid (a bad override).
    #[error(transparent)]
    Defaults(ConfigError),
}

impl ConfigSource {
    /// The source a command-line argument names: `-` is standard input, no argument the
    /// defaults.
    pub fn from_arg(path: Option<&Path>) -> Self {
        match path {
            None => ConfigSource::Defaults,
            Some(path) if path == Path::new("-") => ConfigSource::Stdin,
            Some(path) => ConfigSource::File(path.to_owned()),
        }
    }

    /// Reads and validates the configuration with `overrides` applied; for a bud JSON
    /// configuration, also its TOML translation (what was not carried over is logged).
    pub fn load(
        &self,
        overrides: &ServeOverrides,
    ) -> Result<(ServeConfig, Option<Translation>), LoadError> {
        let (name, text) = match self {
            ConfigSource::Defaults => {
                let config = ServeConfig::defaults_with(overrides).map_err(LoadError::Defaults)?;
                return Ok((config, None));
            }
            ConfigSource::Stdin => {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .map_err(|error| LoadError::Read {
                        what: "the configuration from standard input".into(),
                        error,
                    })?;
                ("standard input".to_owned(), text)
            }
            ConfigSource::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|error| LoadError::Read {
                    what: format!("configuration {}", path.display()),
                    error,
                })?;
                (path.display().to_string(), text)
            }
        };
        let (config, translation) =
            crate::bud::parse_any(&text, overrides).map_err(|error| LoadError::Invalid {
                name: name.clone(),
                error,
            })?;
        if let Some(translation) = &translation {
            tracing::info!(config = %name, "read as a bud JSON configuration");
            for note in &translation.notes {
                tracing::warn!(config = %name, "bud key not carried over: {note}");
            }
        }
        Ok((config, translation))
    }
}

/// Where the demo certificate is kept when no state directory is given: $FASTEDGE_STATE_DIR,
/// else $XDG_STATE_HOME/fastedge, else ~/.local/state/fastedge; `None` without a home.
pub fn default_state_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("FASTEDGE_STATE_DIR") {
        return Some(dir.into());
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME") {
        return Some(Path::new(&dir).join("fastedge"));
    }
    let home = std::env::var_os("HOME")?;
    Some(Path::new(&home).join(".local/state/fastedge"))
}

/// The arguments a successor starts with: `args` (this process's, without the program name)
/// less any `--take-over PATH` / `--take-over=PATH` (or `--takeover`), then `--take-over
/// socket`.
pub fn successor_args(args: impl IntoIterator<Item = OsString>, socket: &Path) -> Vec<OsString> {
    let mut argv = Vec::new();
    let mut skip = false;
    for arg in args {
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
    argv.push(socket.as_os_str().to_owned());
    argv
}

/// Why a service could not start or ended in error.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The configuration could not be read or is not valid.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The terminator could not start, or ended abnormally.
    #[error(transparent)]
    Terminator(#[from] TerminatorError),
    /// The signals could not be blocked, or their thread not started.
    #[error(transparent)]
    Signals(#[from] SignalError),
    /// Waiting for signals failed.
    #[error("waiting for signals: the signal thread ended")]
    SignalThread,
}

impl ServiceError {
    /// Whether the configuration is at fault (`fastedge serve` exits with 2), as opposed to the
    /// system (1).
    pub fn is_config(&self) -> bool {
        match self {
            ServiceError::Load(_) => true,
            ServiceError::Terminator(error) => error.is_config(),
            ServiceError::Signals(_) | ServiceError::SignalThread => false,
        }
    }
}

/// A terminator to run as a service: its configuration source and how it takes part in
/// binary upgrades.
#[derive(Debug, Clone)]
pub struct Service {
    /// Where the configuration is read from, at start and on SIGHUP.
    pub source: ConfigSource,
    /// Settings that replace the configuration's own, at start and on every reload.
    pub overrides: ServeOverrides,
    /// Where the demo certificate is kept ([`Terminator::state_dir`]).
    pub state_dir: Option<PathBuf>,
    /// Where to listen for a successor ([`Terminator::upgrade_socket`]); without it SIGUSR2 is
    /// ignored.
    pub upgrade_socket: Option<PathBuf>,
    /// The upgrade socket of a running process whose listening sockets to take over
    /// ([`Terminator::take_over`]).
    pub take_over: Option<PathBuf>,
}

/// What the main thread of a service waits for.
enum Event {
    /// A signal arrived.
    Signal(Signal),
    /// A new process took the listening sockets over; the terminator drains.
    HandedOver,
}

impl Service {
    /// Loads the configuration, starts the terminator and serves until a signal stops it or a
    /// successor took over (see the module's documentation); returns once the open
    /// connections finished or `drain_timeout` passed.
    pub fn run(self) -> Result<(), ServiceError> {
        let (config, _) = self.source.load(&self.overrides)?;
        let mut terminator = Terminator::new(config.clone());
        if let Some(dir) = &self.state_dir {
            terminator = terminator.state_dir(dir);
        }
        if let Some(path) = &self.upgrade_socket {
            terminator = terminator.upgrade_socket(path);
        }
        if let Some(path) = &self.take_over {
            terminator = terminator.take_over(path);
        }
        // Signals and the hand-over to a successor arrive on one channel.
        let (events, arrived) = mpsc::channel();
        let handed_over = events.clone();
        terminator = terminator.on_handed_over(move || drop(handed_over.send(Event::HandedOver)));
        // Before the terminator starts: its threads inherit the signal mask, so only the
        // signal thread sees these.
        fastedge_runtime::signals::handle(
            &[
                Signal::SIGINT,
                Signal::SIGTERM,
                Signal::SIGHUP,
                Signal::SIGUSR2,
            ],
            move |signal| events.send(Event::Signal(signal)).is_ok(),
        )?;
        let mut terminator = terminator.start()?;
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
            // Serving on the old process's sockets: this process is the service's main one
            // now; then the old one drains.
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
                    fastedge_runtime::notify::status(&format!(
                        "{serving_now}; {}",
                        rates.summary()
                    ));
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
            let event = arrived.recv().map_err(|_| ServiceError::SignalThread)?;
            let signal = match event {
                Event::Signal(signal) => signal,
                Event::HandedOver => {
                    // The new process is the service's main one: no STOPPING=1 from here.
                    tracing::info!("handed over to a new process: draining, then exiting");
                    return Ok(terminator.join()?);
                }
            };
            if signal == Signal::SIGUSR2 {
                self.start_successor();
                continue;
            }
            if signal != Signal::SIGHUP {
                break signal;
            }
            // SIGHUP: the configuration file again (and the certificates it names); standard
            // input cannot be read twice, so a configuration from there is reloaded as it was.
            fastedge_runtime::notify::reloading();
            let reloaded = match &self.source {
                ConfigSource::Stdin => Ok((config.clone(), None)),
                source => source.load(&self.overrides),
            };
            match reloaded {
                // The terminator logs how the reload went.
                Ok((config, _)) => drop(terminator.reload(config)),
                Err(error) => {
                    tracing::error!("reload failed, keeping the running configuration: {error}")
                }
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
        Ok(terminator.join()?)
    }

    /// SIGUSR2: starts this program again (by the name it was started with, so the upgraded
    /// one) with the same arguments and `--take-over` the upgrade socket; this process drains
    /// once the new one serves. Under systemd (`NotifyAccess=all`) the new process becomes the
    /// unit's main one.
    fn start_successor(&self) {
        let Some(socket) = &self.upgrade_socket else {
            tracing::warn!("SIGUSR2: no --upgrade-socket, so no binary upgrade: ignored");
            return;
        };
        if self.source == ConfigSource::Stdin {
            tracing::warn!(
                "SIGUSR2: the configuration came from standard input and cannot be read again: ignored"
            );
            return;
        }
        let argv = successor_args(std::env::args_os().skip(1), socket);
        match fastedge_runtime::spawn_successor(&argv) {
            Ok(pid) => tracing::info!(
                pid,
                "SIGUSR2: started the new binary; it takes the listening sockets over"
            ),
            Err(error) => tracing::error!(%error, "SIGUSR2: starting the new binary"),
        }
    }
}

/// Checks that a terminator would start with the configuration in `source` (certificates
/// loaded, keys decrypted, backend names resolved) without starting it. Returns, for people,
/// the ALPN lists `h2` is left out of ([`ServeConfig::leave_out_h2_where_injecting`]) and the
/// [`check_report`] (with `name` for the source; no bud translation for standard input).
pub fn check(source: &ConfigSource, name: &str) -> Result<(Vec<String>, String), ServiceError> {
    let (mut config, translation) = source.load(&ServeOverrides::default())?;
    let notes = config
        .leave_out_h2_where_injecting()
        .into_iter()
        .map(|key| format!("{key}: h2 left out, its backends get forwarding headers (HTTP/1 only)"))
        .collect();
    let terminator = Terminator::new(config);
    terminator.check()?;
    let translation = translation.filter(|_| *source != ConfigSource::Stdin);
    let report = check_report(name, terminator.config(), translation.as_ref());
    Ok((notes, report))
}

/// What `fastedge check-config` prints for a configuration that would start: the listen
/// addresses, backends and SNI contexts it amounts to, and for a bud JSON configuration
/// (`translation`) the TOML it reads as and what was not carried over. `name` is how the
/// source is shown.
pub fn check_report(name: &str, config: &ServeConfig, translation: Option<&Translation>) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "{name}: OK ({} listen address(es), {} backend(s){}, {} SNI context(s))",
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
        let _ = writeln!(
            out,
            "  dynamic SNI: {} (timeout {} ms, cache {} names per core)",
            dynamic.url,
            dynamic.timeout.as_millis(),
            dynamic.cache_size
        );
    }
    if let Some(translation) = translation {
        let _ = writeln!(
            out,
            "  read as a bud JSON configuration; in fastedge's TOML it reads:\n"
        );
        for line in translation.toml.lines() {
            let _ = writeln!(out, "    {line}");
        }
        let _ = writeln!(out);
        for note in &translation.notes {
            let _ = writeln!(out, "  not carried over: {note}");
        }
    }
    for c in &config.tls.contexts {
        let names: Vec<&str> = c.names.iter().map(|name| name.as_str()).collect();
        let _ = writeln!(
            out,
            "  context {}: {} certificate(s), alpn {:?}, client certificates {:?}, {}",
            names.join(" "),
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
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn a_successor_gets_the_same_arguments_and_takes_over_the_upgrade_socket() {
        let socket = Path::new("/run/fastedge/upgrade.sock");
        assert_eq!(
            successor_args(args(&["serve", "-c", "a.toml"]), socket),
            args(&[
                "serve",
                "-c",
                "a.toml",
                "--take-over",
                "/run/fastedge/upgrade.sock"
            ])
        );
        // A --take-over of its own (either spelling, either form) is left out.
        assert_eq!(
            successor_args(
                args(&[
                    "serve",
                    "--take-over",
                    "/old",
                    "--takeover=/x",
                    "--listen",
                    "[::1]:1"
                ]),
                socket
            ),
            args(&[
                "serve",
                "--listen",
                "[::1]:1",
                "--take-over",
                "/run/fastedge/upgrade.sock"
            ])
        );
    }

    #[test]
    fn a_source_is_named_by_its_argument() {
        assert_eq!(ConfigSource::from_arg(None), ConfigSource::Defaults);
        assert_eq!(
            ConfigSource::from_arg(Some(Path::new("-"))),
            ConfigSource::Stdin
        );
        assert_eq!(
            ConfigSource::from_arg(Some(Path::new("a.toml"))),
            ConfigSource::File("a.toml".into())
        );
    }

    #[test]
    fn an_unreadable_or_invalid_file_says_which_and_why() {
        let missing = ConfigSource::File("/nonexistent/fastedge.toml".into())
            .load(&ServeOverrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            missing.starts_with("reading configuration /nonexistent/fastedge.toml: "),
            "{missing}"
        );
        let path =
            std::env::temp_dir().join(format!("fastedge-service-{}.toml", std::process::id()));
        std::fs::write(&path, "no_such_key = 1\n").unwrap();
        let invalid = ConfigSource::File(path.clone())
            .load(&ServeOverrides::default())
            .unwrap_err()
            .to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(
            invalid.starts_with(&format!("configuration {}: ", path.display())),
            "{invalid}"
        );
    }
}

//! Logging set-up for a process: `tracing` events as text or JSON lines, on stderr or to the
//! local syslog daemon ([`crate::SyslogWriter`]), filtered by `FASTEDGE_LOG` (or `RUST_LOG`).

use tracing_subscriber::EnvFilter;

/// How each log line is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Human-readable text (coloured on a terminal).
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Installs the process's log subscriber: lines in `format` on stderr, or through the syslog
/// datagram socket `syslog` (e.g. `/dev/log`, facility daemon, without a timestamp of ours in
/// text lines: syslog adds its own). The filter comes from `FASTEDGE_LOG`, else `RUST_LOG`,
/// else `info`; an invalid filter is reported on stderr and `info` used. Call once, early.
pub fn init(format: Format, syslog: Option<&std::path::Path>) -> std::io::Result<()> {
    let filter = std::env::var("FASTEDGE_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".to_owned());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|error| {
        eprintln!("fastedge: ignoring invalid log filter {filter:?}: {error}; using `info`");
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match (syslog, format) {
        (Some(path), Format::Text) => {
            let writer = crate::SyslogWriter::connect(path, "fastedge")?;
            builder
                .without_time()
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(writer))
                .init();
        }
        (Some(path), Format::Json) => {
            let writer = crate::SyslogWriter::connect(path, "fastedge")?;
            builder
                .json()
                .flatten_event(true)
                .with_writer(std::sync::Mutex::new(writer))
                .init();
        }
        (None, Format::Text) => builder
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        (None, Format::Json) => builder
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            .init(),
    }
    Ok(())
}

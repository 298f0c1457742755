//! The `fastedge` command line. Reads arguments, files and the environment, then hands over to
//! the library crates; holds no logic that a library user would want.

mod ctl;
mod docs;
mod gen;
mod keyserver;
mod secret;
mod serve;
mod split;
mod top;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// fastedge: a kernel-bypass userspace runtime for the network edge.
///
/// It terminates TLS on a thread-per-core io_uring runtime with BoringSSL and forwards plain TCP
/// to backends (`fastedge serve`), and distributes an interface's traffic, flow-aware, over
/// shared-memory ways through XDP and AF_XDP (`fastedge split`, read with `fastedge tap`,
/// driven with `fastedge ctl`; `fastedge gen` makes test traffic). `fastedge top` watches
/// either live.
#[derive(Debug, Parser)]
#[command(name = "fastedge", version, about, long_about)]
struct Cli {
    /// Log line format on stderr: `text`, or `json` (one JSON object per line, for log
    /// collectors). The level comes from $FASTEDGE_LOG (or $RUST_LOG), `info` by default.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Send log lines to the local syslog daemon (facility daemon) instead of stderr, through
    /// this datagram socket, e.g. /dev/log.
    #[arg(long, global = true, value_name = "SOCKET")]
    syslog: Option<std::path::PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    Serve(serve::ServeArgs),
    CheckConfig(serve::CheckConfigArgs),
    Split(split::SplitArgs),
    Dup(split::DupArgs),
    Tap(split::TapArgs),
    Gen(gen::GenArgs),
    Ctl(ctl::CtlArgs),
    Keyserver(keyserver::KeyServerArgs),
    TicketSecret(secret::TicketSecretArgs),
    #[command(hide = true)]
    GenerateDocs(docs::GenerateDocsArgs),
    Top(top::TopArgs),
}

/// Exit code for bad arguments or configuration (as clap uses for usage errors).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(error) = init_logging(cli.log_format, cli.syslog.as_deref()) {
        eprintln!("fastedge: {error}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::CheckConfig(args) => serve::check_config(args),
        Command::Split(args) => split::run_split(args),
        Command::Dup(args) => split::run_dup(args),
        Command::Tap(args) => split::run_tap(args),
        Command::Gen(args) => gen::run(args),
        Command::Ctl(args) => ctl::run(args),
        Command::Keyserver(args) => keyserver::run(args),
        Command::TicketSecret(args) => secret::run(args),
        Command::GenerateDocs(args) => docs::run(args, <Cli as clap::CommandFactory>::command()),
        Command::Top(args) => top::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            tracing::error!("{:#}", failure.error);
            ExitCode::from(failure.exit_code)
        }
    }
}

/// An error with the exit code it should produce.
#[derive(Debug)]
struct Failure {
    error: anyhow::Error,
    exit_code: u8,
}

impl Failure {
    /// Bad input from the user: exit code 2.
    fn config(error: impl Into<anyhow::Error>) -> Self {
        Self {
            error: error.into(),
            exit_code: EXIT_CONFIG,
        }
    }

    /// A bad configuration when `is_config`, else a failure at run time.
    fn of(is_config: bool, error: impl Into<anyhow::Error>) -> Self {
        match is_config {
            true => Self::config(error),
            false => Self::runtime(error),
        }
    }

    /// A failure at run time: exit code 1.
    fn runtime(error: impl Into<anyhow::Error>) -> Self {
        Self {
            error: error.into(),
            exit_code: 1,
        }
    }
}

/// Logs go to stderr (or syslog); `FASTEDGE_LOG` (or `RUST_LOG`) sets the filter, `info` by
/// default.
fn init_logging(format: LogFormat, syslog: Option<&std::path::Path>) -> std::io::Result<()> {
    let format = match format {
        LogFormat::Text => fastedge_runtime::logging::Format::Text,
        LogFormat::Json => fastedge_runtime::logging::Format::Json,
    };
    fastedge_runtime::logging::init(format, syslog)
}

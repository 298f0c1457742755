//! `fastedge ticket-secret`: makes a fleet's shared secret.

use std::path::PathBuf;

use clap::Args;

use crate::Failure;

/// Create a fleet's shared secret: 48 random bytes, base64, in a new file.
///
/// Give the same file to every box of a fleet as `tls.ticket_secret_file`: each derives the
/// session ticket key of every rotation period from it (no traffic between boxes), and seals
/// sessions with it for a shared session store (`tls.session_store`). The file must not exist
/// yet; copy it to the other boxes with the same care as a private key. docs/fleet.md explains
/// how to change a fleet's secret without losing resumption.
#[derive(Debug, Args)]
pub struct TicketSecretArgs {
    /// Path of the secret file to create.
    #[arg(value_name = "FILE")]
    path: PathBuf,

    /// Permission bits of the file, in octal (e.g. 640 with a group that `serve` runs as).
    #[arg(long, default_value = "600", value_parser = fastedge_runtime::control::parse_mode)]
    mode: u32,
}

pub fn run(args: TicketSecretArgs) -> Result<(), Failure> {
    fastedge_tls::tickets::write_secret(&args.path, args.mode).map_err(Failure::config)?;
    println!("{}", args.path.display());
    Ok(())
}

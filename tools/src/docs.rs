//! `fastedge generate-docs`: man pages and shell completions from the command-line definitions,
//! for packages (`make deb`). Hidden from `--help`: users read what it writes.

use std::path::PathBuf;

use anyhow::Context;

use crate::Failure;

/// Write man pages (man/fastedge.1, man/fastedge-serve.1, …) and completions
/// (completions/fastedge.bash, _fastedge, fastedge.fish) under a directory.
#[derive(Debug, clap::Args)]
pub struct GenerateDocsArgs {
    /// Directory to write `man/` and `completions/` into (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

pub fn run(args: GenerateDocsArgs, mut command: clap::Command) -> Result<(), Failure> {
    let man = args.out.join("man");
    let completions = args.out.join("completions");
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating {}", dir.display()))
            .map_err(Failure::config)?;
    }
    // No pages for `fastedge help …`: `man fastedge-serve` is that help already.
    let mut pages = command.clone().disable_help_subcommand(true);
    pages.build();
    clap_mangen::generate_to(pages, &man)
        .with_context(|| format!("writing man pages to {}", man.display()))
        .map_err(Failure::runtime)?;
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut command, "fastedge", &completions)
            .with_context(|| format!("writing {shell} completions to {}", completions.display()))
            .map_err(Failure::runtime)?;
    }
    Ok(())
}

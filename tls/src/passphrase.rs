//! Passphrases of encrypted keys: inline, from an environment variable, a file, or a command.

use std::process::{Command, Stdio};

use crate::{config::Passphrase, TlsError};

/// The passphrase `source` yields: for a file or a command, its first line.
pub(crate) fn resolve(source: &Passphrase) -> Result<String, TlsError> {
    let first_line = |text: &str| text.lines().next().unwrap_or_default().to_owned();
    match source {
        Passphrase::Inline(text) => Ok(text.clone()),
        Passphrase::Env(var) => std::env::var(var).map_err(|e| {
            TlsError::Passphrase(format!(
                "tls.passphrase_env: environment variable {var}: {e}"
            ))
        }),
        Passphrase::File(path) => std::fs::read_to_string(path)
            .map(|text| first_line(&text))
            .map_err(|e| {
                TlsError::Passphrase(format!("tls.passphrase_file {}: {e}", path.display()))
            }),
        Passphrase::Command(command) => {
            let output = Command::new("sh")
                .args(["-c", command])
                .stdin(Stdio::null())
                .stderr(Stdio::inherit())
                .output()
                .map_err(|e| {
                    TlsError::Passphrase(format!("tls.passphrase_cmd: running sh: {e}"))
                })?;
            if !output.status.success() {
                return Err(TlsError::Passphrase(format!(
                    "tls.passphrase_cmd {command:?} exited with {}",
                    output.status
                )));
            }
            Ok(first_line(&String::from_utf8_lossy(&output.stdout)))
        }
    }
}

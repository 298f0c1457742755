use std::{io, path::PathBuf};

use boring::error::ErrorStack;

/// Errors of the TLS layer. Each names what it was doing; the text is what goes in the log.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file named in the configuration could not be read.
    #[error("reading {what} {path}: {source}")]
    ReadFile {
        /// What the file is (`certificate`, `private key`, `CA bundle`, …).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The error of the read.
        source: io::Error,
    },
    /// A file could not be written (the self-signed demo certificate).
    #[error("writing {what} {path}: {source}")]
    WriteFile {
        /// What the file is.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The error of the write.
        source: io::Error,
    },
    /// BoringSSL refused a setting (a cipher list, a group, a CA bundle, …).
    #[error("{what}: {stack}")]
    Config {
        /// The setting.
        what: &'static str,
        /// BoringSSL's errors.
        stack: ErrorStack,
    },
    /// A certificate file with no `CERTIFICATE` PEM block in it.
    #[error("certificate file {path} holds no PEM certificate")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The private key is not the key of the leaf certificate.
    #[error("private key does not match certificate: {0}")]
    KeyMismatch(ErrorStack),
    /// A value that cannot be used, with the reason (e.g. `no certificate`).
    #[error("{0}")]
    Invalid(String),
    /// An encrypted key's passphrase could not be had (missing variable, unreadable file, failed
    /// command). A passphrase that does not decrypt the key is a [`TlsError::Config`].
    #[error("passphrase: {0}")]
    Passphrase(String),
    /// BoringSSL failed while building a context or a connection.
    #[error("TLS setup failed: {0}")]
    Setup(ErrorStack),
    /// The TLS handshake with a client failed.
    #[error("TLS handshake failed: {reason}")]
    Handshake {
        /// What went wrong, in plain words (the close log line's reason).
        reason: String,
        /// The server name the client asked for, when it got that far.
        server_name: Option<String>,
    },
}

impl TlsError {
    pub(crate) fn config(what: &'static str) -> impl FnOnce(ErrorStack) -> Self {
        move |stack| Self::Config { what, stack }
    }

    /// A handshake failure with BoringSSL's reason, or the transport error that ended it.
    pub(crate) fn handshake(error: &crate::bio::SslFailure) -> Self {
        Self::Handshake {
            reason: describe_handshake_error(error),
            server_name: None,
        }
    }

    /// A failed server handshake on `ssl`, in plain words where we know the cause: a server
    /// name refused by `sni_strict`, a client certificate missing or rejected.
    pub(crate) fn server_handshake(
        ssl: &boring::ssl::SslRef,
        error: &crate::bio::SslFailure,
    ) -> Self {
        let server_name = ssl
            .servername(boring::ssl::NameType::HOST_NAME)
            .map(str::to_owned);
        let text = describe_handshake_error(error);
        let reason = if let Some(note) = crate::exdata::refusal(ssl) {
            note.to_owned()
        } else if text.contains("PEER_DID_NOT_RETURN_A_CERTIFICATE") {
            "client sent no certificate (client_verify = \"required\")".to_owned()
        } else if let (Some(_), Err(verify)) = (ssl.peer_certificate(), ssl.verify_result()) {
            format!("client certificate rejected: {}", verify.error_string())
        } else {
            text
        };
        Self::Handshake {
            reason,
            server_name,
        }
    }
}

fn describe_handshake_error(error: &crate::bio::SslFailure) -> String {
    if error.io.is_none()
        && error.code == boring::ssl::ErrorCode::SYSCALL
        && error
            .stack
            .as_ref()
            .is_none_or(|stack| stack.errors().is_empty())
    {
        return "peer closed the connection during the handshake".to_owned();
    }
    error.to_string()
}

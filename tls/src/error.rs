use std::{io, path::PathBuf};

use boring::error::ErrorStack;

/// Errors of the TLS layer. Each names what it was doing; the text is what goes in the log.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {what} {path}: {source}")]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("writing {what} {path}: {source}")]
    WriteFile {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{what}: {stack}")]
    Config {
        what: &'static str,
        stack: ErrorStack,
    },
    #[error("certificate file {path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("private key does not match certificate: {0}")]
    KeyMismatch(ErrorStack),
    #[error("{0}")]
    Invalid(String),
    #[error("passphrase: {0}")]
    Passphrase(String),
    #[error("TLS setup failed: {0}")]
    Setup(ErrorStack),
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    #[error("TLS handshake polled after it ended")]
    HandshakePolledAfterEnd,
}

impl TlsError {
    pub(crate) fn config(what: &'static str) -> impl FnOnce(ErrorStack) -> Self {
        move |stack| Self::Config { what, stack }
    }

    /// A handshake failure with BoringSSL's reason, or the transport error that ended it.
    pub(crate) fn handshake(error: boring::ssl::Error) -> Self {
        let text = match (error.io_error(), error.ssl_error()) {
            (Some(io), _) => format!("transport: {io}"),
            (None, Some(stack)) => stack.to_string(),
            (None, None) if error.code() == boring::ssl::ErrorCode::SYSCALL => {
                "peer closed the connection during the handshake".to_owned()
            }
            (None, None) => format!("{error}"),
        };
        Self::Handshake(text)
    }
}

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
    #[error("TLS handshake failed: {reason}")]
    Handshake {
        reason: String,
        /// The server name the client asked for, when it got that far.
        server_name: Option<String>,
    },
    #[error("TLS handshake polled after it ended")]
    HandshakePolledAfterEnd,
}

impl TlsError {
    pub(crate) fn config(what: &'static str) -> impl FnOnce(ErrorStack) -> Self {
        move |stack| Self::Config { what, stack }
    }

    /// A handshake failure with BoringSSL's reason, or the transport error that ended it.
    pub(crate) fn handshake(error: boring::ssl::Error) -> Self {
        Self::Handshake {
            reason: describe_handshake_error(&error),
            server_name: None,
        }
    }

    /// A failed server handshake on `ssl`, in plain words where we know the cause: a server
    /// name refused by `sni_strict`, a client certificate missing or rejected.
    pub(crate) fn server_handshake(ssl: &boring::ssl::SslRef, error: &boring::ssl::Error) -> Self {
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

fn describe_handshake_error(error: &boring::ssl::Error) -> String {
    {
        let text = match (error.io_error(), error.ssl_error()) {
            (Some(io), _) => format!("transport: {io}"),
            (None, Some(stack)) => stack.to_string(),
            (None, None) if error.code() == boring::ssl::ErrorCode::SYSCALL => {
                "peer closed the connection during the handshake".to_owned()
            }
            (None, None) => format!("{error}"),
        };
        text
    }
}

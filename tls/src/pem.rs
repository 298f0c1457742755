//! `cert`, `key`, CA and CRL values: a file path, or (as bud allowed) the PEM text itself.

use std::path::Path;

use crate::TlsError;

/// A `cert`/`key` value that is the PEM text itself rather than a file (as bud allowed).
pub(crate) fn inline_pem(value: &Path) -> Option<&str> {
    value
        .to_str()
        .filter(|text| text.trim_start().starts_with("-----BEGIN"))
}

/// The bytes of a `cert`/`key`/CA value: the inline PEM text, or the file's contents.
pub(crate) fn read_pem(what: &'static str, value: &Path) -> Result<Vec<u8>, TlsError> {
    if let Some(text) = inline_pem(value) {
        return Ok(text.as_bytes().to_vec());
    }
    std::fs::read(value).map_err(|source| TlsError::ReadFile {
        what,
        path: value.to_owned(),
        source,
    })
}

/// A `cert`/`key` value for logs: the path, or `(inline PEM)`.
pub(crate) fn describe_pem(value: &Path) -> String {
    match inline_pem(value) {
        Some(_) => "(inline PEM)".to_owned(),
        None => value.display().to_string(),
    }
}

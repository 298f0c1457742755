//! The layout of a TLS session sealed for a shared session store (Redis): what a box writes
//! under a session ID and what it accepts back. Whoever can read the store sees only this; the
//! session itself (its master secret among others) is encrypted and authenticated by the
//! sealing key, which is derived from the fleet's secret.
//!
//! ```text
//! u8 version (1) | 4 bytes key id | 12 bytes nonce | ciphertext | 16 bytes AEAD tag
//! ```
//!
//! The key id names which of a box's sealing keys sealed it (a fleet rotating its secret holds
//! two). What comes from the store is untrusted input: [`parse`] bounds it and checks its shape,
//! and only the AEAD's verdict makes the contents trusted.

/// The one layout version this code writes and reads.
pub const VERSION: u8 = 1;
/// Bytes naming the sealing key.
pub const KEY_ID_LEN: usize = 4;
/// Bytes of AEAD nonce.
pub const NONCE_LEN: usize = 12;
/// Bytes of AEAD tag, after the ciphertext.
pub const TAG_LEN: usize = 16;
/// Bytes before the ciphertext.
pub const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;
/// Longest sealed session accepted: a serialized TLS session with a certificate chain is a
/// few KiB; anything past this is refused unread.
pub const MAX_SEALED: usize = 16 * 1024;

/// A sealed session split into its parts (borrowed from the input).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sealed<'a> {
    /// Which sealing key sealed it.
    pub key_id: [u8; KEY_ID_LEN],
    /// The AEAD nonce.
    pub nonce: [u8; NONCE_LEN],
    /// The ciphertext, without the tag.
    pub ciphertext: &'a [u8],
    /// The AEAD tag.
    pub tag: [u8; TAG_LEN],
}

/// Why a value from the store is not a sealed session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealedError {
    /// Shorter than a header and a tag.
    TooShort,
    /// Longer than [`MAX_SEALED`].
    TooLong,
    /// A layout version this code does not know.
    Version(u8),
}

impl std::fmt::Display for SealedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SealedError::TooShort => write!(f, "sealed session shorter than its header and tag"),
            SealedError::TooLong => write!(f, "sealed session longer than {MAX_SEALED} bytes"),
            SealedError::Version(v) => write!(f, "sealed session of unknown version {v}"),
        }
    }
}

impl std::error::Error for SealedError {}

/// Splits a value read from the store into its parts, checking only its shape.
pub fn parse(value: &[u8]) -> Result<Sealed<'_>, SealedError> {
    if value.len() > MAX_SEALED {
        return Err(SealedError::TooLong);
    }
    if value.len() < HEADER_LEN + TAG_LEN {
        return Err(SealedError::TooShort);
    }
    let (header, rest) = value.split_at(HEADER_LEN);
    if header[0] != VERSION {
        return Err(SealedError::Version(header[0]));
    }
    let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
    let mut sealed = Sealed {
        key_id: [0; KEY_ID_LEN],
        nonce: [0; NONCE_LEN],
        ciphertext,
        tag: [0; TAG_LEN],
    };
    sealed.key_id.copy_from_slice(&header[1..1 + KEY_ID_LEN]);
    sealed.nonce.copy_from_slice(&header[1 + KEY_ID_LEN..]);
    sealed.tag.copy_from_slice(tag);
    Ok(sealed)
}

/// The header to write before a ciphertext sealed by key `key_id` with `nonce`.
pub fn header(key_id: [u8; KEY_ID_LEN], nonce: [u8; NONCE_LEN]) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[0] = VERSION;
    out[1..1 + KEY_ID_LEN].copy_from_slice(&key_id);
    out[1 + KEY_ID_LEN..].copy_from_slice(&nonce);
    out
}

/// The additional authenticated data of a session stored under `session_id`: the seal binds
/// the session to its ID, so an entry copied under another ID does not open.
pub fn associated_data(session_id: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(24 + session_id.len());
    aad.extend_from_slice(b"fastedge session v1\0");
    aad.extend_from_slice(session_id);
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_and_parts_round_trip() {
        let mut value = header([1, 2, 3, 4], [9; NONCE_LEN]).to_vec();
        value.extend_from_slice(b"ciphertext");
        value.extend_from_slice(&[7; TAG_LEN]);
        let sealed = parse(&value).unwrap();
        assert_eq!(sealed.key_id, [1, 2, 3, 4]);
        assert_eq!(sealed.nonce, [9; NONCE_LEN]);
        assert_eq!(sealed.ciphertext, b"ciphertext");
        assert_eq!(sealed.tag, [7; TAG_LEN]);
    }

    #[test]
    fn an_empty_ciphertext_is_still_a_shape() {
        let mut value = header([0; 4], [0; NONCE_LEN]).to_vec();
        value.extend_from_slice(&[0; TAG_LEN]);
        assert_eq!(parse(&value).unwrap().ciphertext, b"");
    }

    #[test]
    fn short_long_and_foreign_values_are_refused() {
        assert_eq!(parse(b""), Err(SealedError::TooShort));
        assert_eq!(
            parse(&[VERSION; HEADER_LEN + TAG_LEN - 1]),
            Err(SealedError::TooShort)
        );
        assert_eq!(
            parse(&vec![VERSION; MAX_SEALED + 1]),
            Err(SealedError::TooLong)
        );
        let mut value = vec![2u8; HEADER_LEN + TAG_LEN];
        value[0] = 2;
        assert_eq!(parse(&value), Err(SealedError::Version(2)));
    }

    #[test]
    fn the_associated_data_binds_the_id() {
        assert_ne!(associated_data(b"a"), associated_data(b"b"));
        assert!(associated_data(b"id").ends_with(b"id"));
    }
}

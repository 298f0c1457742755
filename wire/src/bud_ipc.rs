//! bud's ticket-key IPC message, as its master read it on standard input:
//! `0x03 | u32 BE size (52) | u32 BE context index | 48-byte ticket key`.

use crate::http1::Status;

/// The message type of a ticket key.
pub const SET_TICKET: u8 = 0x03;
/// Bytes of a ticket key.
pub const KEY_LEN: usize = 48;

/// One ticket-key message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TicketMessage {
    /// bud's context index (0: the frontend).
    pub context: u32,
    /// The 48-byte ticket key (16-byte name, 16-byte HMAC secret, 16-byte AES key), as
    /// `SSL_CTX_set_tlsext_ticket_keys` takes it.
    pub key: [u8; KEY_LEN],
}

/// Why a message was refused; the stream cannot be resynchronized after one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpcError {
    /// A type other than [`SET_TICKET`].
    UnknownType(u8),
    /// A size other than 52.
    BadSize(u32),
}

impl std::fmt::Display for IpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IpcError::UnknownType(t) => write!(f, "unknown message type {t:#04x} (expected 0x03)"),
            IpcError::BadSize(n) => write!(f, "ticket message of {n} bytes (expected 52)"),
        }
    }
}

impl std::error::Error for IpcError {}

/// Parses one message at the start of `buf`: complete (with the bytes used) or partial.
pub fn parse(buf: &[u8]) -> Result<Status<(TicketMessage, usize)>, IpcError> {
    let Some(&kind) = buf.first() else {
        return Ok(Status::Partial);
    };
    if kind != SET_TICKET {
        return Err(IpcError::UnknownType(kind));
    }
    let Some(size) = buf.get(1..5) else {
        return Ok(Status::Partial);
    };
    let size = u32::from_be_bytes([size[0], size[1], size[2], size[3]]);
    if size as usize != 4 + KEY_LEN {
        return Err(IpcError::BadSize(size));
    }
    let Some(body) = buf.get(5..5 + 4 + KEY_LEN) else {
        return Ok(Status::Partial);
    };
    let context = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    let mut key = [0u8; KEY_LEN];
    key.copy_from_slice(&body[4..]);
    Ok(Status::Complete((
        TicketMessage { context, key },
        5 + 4 + KEY_LEN,
    )))
}

/// Encodes one message (for tests and tools that feed fastedge as bud's master did).
pub fn encode(message: &TicketMessage, out: &mut Vec<u8>) {
    out.push(SET_TICKET);
    out.extend_from_slice(&((4 + KEY_LEN) as u32).to_be_bytes());
    out.extend_from_slice(&message.context.to_be_bytes());
    out.extend_from_slice(&message.key);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_partial_and_errors() {
        let message = TicketMessage {
            context: 2,
            key: [7; KEY_LEN],
        };
        let mut bytes = Vec::new();
        encode(&message, &mut bytes);
        assert_eq!(bytes.len(), 57);
        for cut in 0..bytes.len() {
            assert_eq!(parse(&bytes[..cut]), Ok(Status::Partial), "cut {cut}");
        }
        bytes.push(0x03);
        assert_eq!(parse(&bytes), Ok(Status::Complete((message, 57))));
        assert_eq!(parse(&[0x04]), Err(IpcError::UnknownType(4)));
        assert_eq!(parse(&[0x03, 0, 0, 0, 48]), Err(IpcError::BadSize(48)));
    }
}

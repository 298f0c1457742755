//! Frames of fastedge's keyless protocol (a signer over a UNIX stream socket; the client and the
//! reference signer live in `fastedge-tls`). All integers big-endian:
//!
//! ```text
//! request:  u32 length of what follows | u8 op (1 = sign) | u32 id | u16 TLS SignatureScheme
//!           | 32 bytes SHA-256 of the certificate's SubjectPublicKeyInfo (DER) | the input
//! response: u32 length of what follows | u32 id | u8 status | the signature
//! status:   0 ok, 1 unknown key, 2 unsupported algorithm, 3 signing failed, 4 bad request
//! ```

use crate::http1::Status;

/// Request operation: sign `input` with the key named by its SPKI hash.
pub const OP_SIGN: u8 = 1;
/// Answer status: signed, the signature follows.
pub const STATUS_OK: u8 = 0;
/// Answer status: the signer holds no key with that SPKI hash.
pub const STATUS_UNKNOWN_KEY: u8 = 1;
/// Answer status: the key cannot sign with that TLS SignatureScheme.
pub const STATUS_UNSUPPORTED: u8 = 2;
/// Answer status: the signing operation itself failed.
pub const STATUS_FAILED: u8 = 3;
/// Answer status: the request frame was malformed.
pub const STATUS_BAD_REQUEST: u8 = 4;
/// Largest frame (after its length field) either side accepts.
pub const MAX_FRAME: usize = 64 * 1024;
/// Bytes of a sign request before its input: op, id, scheme, key id.
const REQUEST_FIXED: usize = 1 + 4 + 2 + 32;
/// Bytes of an answer before its signature: id, status.
const ANSWER_FIXED: usize = 4 + 1;

/// A frame the stream cannot go on after: the connection must close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// A length field over [`MAX_FRAME`].
    TooLarge(usize),
    /// An answer too short to hold an id and a status.
    TooShort(usize),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge(n) => write!(f, "a frame of {n} bytes (at most {MAX_FRAME})"),
            FrameError::TooShort(n) => {
                write!(f, "a frame of {n} bytes (an answer needs {ANSWER_FIXED})")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// One request, as a signer reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    /// Sign `input` under TLS SignatureScheme `scheme` with the key whose SubjectPublicKeyInfo
    /// hashes (SHA-256) to `key_id`.
    Sign {
        /// Chosen by the client; the answer carries it back (requests are pipelined).
        id: u32,
        /// The TLS SignatureScheme code point (e.g. 0x0403 ecdsa_secp256r1_sha256).
        scheme: u16,
        /// SHA-256 of the key's SubjectPublicKeyInfo (DER).
        key_id: [u8; 32],
        /// The data TLS signs, not a digest: the signer hashes as `scheme` says.
        input: &'a [u8],
    },
    /// Not a sign request, or too short for one: answered with [`STATUS_BAD_REQUEST`] and the id
    /// if the frame holds one (else 0); the stream goes on.
    Bad {
        /// The request's id, or 0 when the frame is too short to hold one.
        id: u32,
    },
}

/// One answer, as the client reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer<'a> {
    /// The id of the request this answers.
    pub id: u32,
    /// One of the `STATUS_*` codes.
    pub status: u8,
    /// The signature when `status` is [`STATUS_OK`], else empty.
    pub signature: &'a [u8],
}

/// The length field of a frame: its bytes after the field, refused over [`MAX_FRAME`].
pub fn frame_len(header: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// The body of the frame at the start of `buf`, with the bytes the whole frame takes.
fn frame(buf: &[u8]) -> Result<Status<(&[u8], usize)>, FrameError> {
    let Some(header) = buf.first_chunk::<4>() else {
        return Ok(Status::Partial);
    };
    let len = frame_len(*header)?;
    match buf.get(4..4 + len) {
        Some(body) => Ok(Status::Complete((body, 4 + len))),
        None => Ok(Status::Partial),
    }
}

fn u32_at(body: &[u8], at: usize) -> Option<u32> {
    let bytes = body.get(at..at + 4)?;
    Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// A request's body (what follows its length field).
pub fn parse_request_body(body: &[u8]) -> Request<'_> {
    match body.first() {
        Some(&OP_SIGN) if body.len() >= REQUEST_FIXED => {
            let mut key_id = [0u8; 32];
            key_id.copy_from_slice(&body[7..REQUEST_FIXED]);
            Request::Sign {
                id: u32_at(body, 1).unwrap_or(0),
                scheme: u16::from_be_bytes([body[5], body[6]]),
                key_id,
                input: &body[REQUEST_FIXED..],
            }
        }
        _ => Request::Bad {
            id: u32_at(body, 1).unwrap_or(0),
        },
    }
}

/// Parses one request at the start of `buf`: complete (with the bytes used) or partial.
pub fn parse_request(buf: &[u8]) -> Result<Status<(Request<'_>, usize)>, FrameError> {
    Ok(match frame(buf)? {
        Status::Complete((body, used)) => Status::Complete((parse_request_body(body), used)),
        Status::Partial => Status::Partial,
    })
}

/// Parses one answer at the start of `buf`: complete (with the bytes used) or partial.
pub fn parse_answer(buf: &[u8]) -> Result<Status<(Answer<'_>, usize)>, FrameError> {
    // Judge the length before waiting for the body: a short frame is refused at once.
    if let Some(header) = buf.first_chunk::<4>() {
        let len = frame_len(*header)?;
        if len < ANSWER_FIXED {
            return Err(FrameError::TooShort(len));
        }
    }
    Ok(match frame(buf)? {
        Status::Complete((body, used)) => Status::Complete((
            Answer {
                id: u32_at(body, 0).unwrap_or(0),
                status: body[4],
                signature: &body[ANSWER_FIXED..],
            },
            used,
        )),
        Status::Partial => Status::Partial,
    })
}

/// Appends a sign request.
pub fn encode_request(id: u32, scheme: u16, key_id: &[u8; 32], input: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&((REQUEST_FIXED + input.len()) as u32).to_be_bytes());
    out.push(OP_SIGN);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&scheme.to_be_bytes());
    out.extend_from_slice(key_id);
    out.extend_from_slice(input);
}

/// Appends an answer.
pub fn encode_answer(id: u32, status: u8, signature: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&((ANSWER_FIXED + signature.len()) as u32).to_be_bytes());
    out.extend_from_slice(&id.to_be_bytes());
    out.push(status);
    out.extend_from_slice(signature);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip_partial_and_bad() {
        let mut bytes = Vec::new();
        encode_request(9, 0x0403, &[5; 32], b"to sign", &mut bytes);
        for cut in 0..bytes.len() {
            assert_eq!(
                parse_request(&bytes[..cut]),
                Ok(Status::Partial),
                "cut {cut}"
            );
        }
        let want = Request::Sign {
            id: 9,
            scheme: 0x0403,
            key_id: [5; 32],
            input: b"to sign",
        };
        assert_eq!(
            parse_request(&bytes),
            Ok(Status::Complete((want, bytes.len())))
        );
        // Too short for a sign request, or another op: bad, with the id when it is there.
        assert_eq!(
            parse_request(&[0, 0, 0, 5, 1, 0, 0, 0, 7]),
            Ok(Status::Complete((Request::Bad { id: 7 }, 9)))
        );
        assert_eq!(
            parse_request(&[0, 0, 0, 2, 9, 9]),
            Ok(Status::Complete((Request::Bad { id: 0 }, 6)))
        );
        assert_eq!(
            parse_request(&[0, 0, 0, 0]),
            Ok(Status::Complete((Request::Bad { id: 0 }, 4)))
        );
        assert_eq!(
            parse_request(&[0, 1, 0, 1]),
            Err(FrameError::TooLarge(MAX_FRAME + 1))
        );
    }

    #[test]
    fn answer_round_trip_partial_and_errors() {
        let mut bytes = Vec::new();
        encode_answer(3, STATUS_OK, b"sig", &mut bytes);
        for cut in 0..bytes.len() {
            assert_eq!(
                parse_answer(&bytes[..cut]),
                Ok(Status::Partial),
                "cut {cut}"
            );
        }
        let want = Answer {
            id: 3,
            status: STATUS_OK,
            signature: b"sig",
        };
        assert_eq!(parse_answer(&bytes), Ok(Status::Complete((want, 12))));
        assert_eq!(parse_answer(&[0, 0, 0, 4]), Err(FrameError::TooShort(4)));
        assert_eq!(
            parse_answer(&[0xff, 0, 0, 0]),
            Err(FrameError::TooLarge(0xff00_0000))
        );
    }
}

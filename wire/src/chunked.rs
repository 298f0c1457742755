//! The chunked transfer coding (RFC 9112 §7.1), stepped byte by byte so that a body split over
//! any number of reads is framed exactly: requests in [`crate::forwarded`], responses in
//! [`crate::response`].

/// Why a chunked body cannot be framed.
pub type ChunkError = &'static str;

/// Position inside the chunked coding (RFC 9112 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// Reading hex digits of a chunk size; `digits` so far.
    Size {
        size: u64,
        digits: u8,
    },
    /// After the size: extensions until the end of the line.
    Extension {
        size: u64,
    },
    /// Saw CR after a size line; expecting LF.
    SizeLf {
        size: u64,
    },
    Data {
        remaining: u64,
    },
    /// After chunk data: expecting CR LF.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// Inside a trailer field line.
    TrailerLine,
    /// Saw CR at the start of a line: expecting the final LF.
    EndLf,
}

/// Advances the chunked-coding state over `input`; returns the bytes used and the next state
/// (`None` when the body ended).
pub(crate) fn chunked_step(
    mut state: Chunk,
    input: &[u8],
) -> Result<(usize, Option<Chunk>), ChunkError> {
    let mut i = 0;
    while i < input.len() {
        if let Chunk::Data { remaining } = state {
            let n = usize::try_from(remaining)
                .unwrap_or(usize::MAX)
                .min(input.len() - i);
            i += n;
            let remaining = remaining - n as u64;
            state = if remaining == 0 {
                Chunk::DataCr
            } else {
                Chunk::Data { remaining }
            };
            continue;
        }
        let b = input[i];
        i += 1;
        state = match state {
            Chunk::Size { size, digits } => match b {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                    if digits >= 15 {
                        return Err("chunk size too large");
                    }
                    let digit = u64::from((b as char).to_digit(16).unwrap_or(0));
                    Chunk::Size {
                        size: size * 16 + digit,
                        digits: digits + 1,
                    }
                }
                _ if digits == 0 => return Err("missing chunk size"),
                b';' | b' ' | b'\t' => Chunk::Extension { size },
                b'\r' => Chunk::SizeLf { size },
                b'\n' => after_size_line(size),
                _ => return Err("invalid character in chunk size"),
            },
            Chunk::Extension { size } => match b {
                b'\r' => Chunk::SizeLf { size },
                b'\n' => after_size_line(size),
                _ => Chunk::Extension { size },
            },
            Chunk::SizeLf { size } => match b {
                b'\n' => after_size_line(size),
                _ => return Err("CR without LF after chunk size"),
            },
            Chunk::DataCr => match b {
                b'\r' => Chunk::DataLf,
                b'\n' => Chunk::Size { size: 0, digits: 0 },
                _ => return Err("chunk data longer than its size"),
            },
            Chunk::DataLf => match b {
                b'\n' => Chunk::Size { size: 0, digits: 0 },
                _ => return Err("CR without LF after chunk data"),
            },
            Chunk::TrailerStart => match b {
                b'\r' => Chunk::EndLf,
                b'\n' => return Ok((i, None)),
                _ => Chunk::TrailerLine,
            },
            Chunk::TrailerLine => match b {
                b'\n' => Chunk::TrailerStart,
                _ => Chunk::TrailerLine,
            },
            Chunk::EndLf => match b {
                b'\n' => return Ok((i, None)),
                _ => return Err("CR without LF at end of body"),
            },
            Chunk::Data { .. } => state,
        };
    }
    Ok((i, Some(state)))
}

fn after_size_line(size: u64) -> Chunk {
    if size == 0 {
        Chunk::TrailerStart
    } else {
        Chunk::Data { remaining: size }
    }
}

//! A minimal DER reader and writer: enough for OCSP requests and responses and the certificate
//! fields they need. Single-byte tags only (every tag in those structures is one).

/// Why DER could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DerError {
    /// Input ended inside an element.
    Truncated,
    /// A multi-byte tag, an indefinite or over-long length.
    Unsupported,
    /// A different tag than the structure requires here; names what was expected.
    Unexpected(&'static str),
}

impl std::fmt::Display for DerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DerError::Truncated => f.write_str("DER ends inside an element"),
            DerError::Unsupported => f.write_str("unsupported DER (long tag or length)"),
            DerError::Unexpected(what) => write!(f, "malformed DER: expected {what}"),
        }
    }
}

impl std::error::Error for DerError {}

/// Universal tag of an INTEGER.
pub const INTEGER: u8 = 0x02;
/// Universal tag of a BIT STRING.
pub const BIT_STRING: u8 = 0x03;
/// Universal tag of an OCTET STRING.
pub const OCTET_STRING: u8 = 0x04;
/// Universal tag of NULL.
pub const NULL: u8 = 0x05;
/// Universal tag of an OBJECT IDENTIFIER.
pub const OID: u8 = 0x06;
/// Universal tag of an ENUMERATED.
pub const ENUMERATED: u8 = 0x0a;
/// Universal tag of a GeneralizedTime.
pub const GENERALIZED_TIME: u8 = 0x18;
/// Tag of a SEQUENCE (constructed).
pub const SEQUENCE: u8 = 0x30;

/// Context-specific constructed tag `[n]`.
pub const fn explicit(n: u8) -> u8 {
    0xa0 | n
}

/// One element: its tag, its content, and all its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    /// The identifier octet (one-byte tags only: high tag numbers are refused).
    pub tag: u8,
    /// The content octets, after the tag and length.
    pub value: &'a [u8],
    /// The whole element: tag, length and content (what a signature covers).
    pub raw: &'a [u8],
}

/// Reads the element at the start of `input`; returns it and what follows.
pub fn read(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), DerError> {
    let (&tag, rest) = input.split_first().ok_or(DerError::Truncated)?;
    if tag & 0x1f == 0x1f {
        return Err(DerError::Unsupported);
    }
    let (&first, mut rest) = rest.split_first().ok_or(DerError::Truncated)?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return Err(DerError::Unsupported);
        }
        let bytes = rest.get(..n).ok_or(DerError::Truncated)?;
        rest = &rest[n..];
        bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    let value = rest.get(..len).ok_or(DerError::Truncated)?;
    let header = input.len() - rest.len();
    Ok((
        Tlv {
            tag,
            value,
            raw: &input[..header + len],
        },
        &rest[len..],
    ))
}

/// Reads an element that must have `tag`.
pub fn expect<'a>(
    input: &'a [u8],
    tag: u8,
    what: &'static str,
) -> Result<(Tlv<'a>, &'a [u8]), DerError> {
    let (tlv, rest) = read(input)?;
    if tlv.tag != tag {
        return Err(DerError::Unexpected(what));
    }
    Ok((tlv, rest))
}

/// The elements of a constructed value, in order.
pub fn elements(mut content: &[u8]) -> impl Iterator<Item = Result<Tlv<'_>, DerError>> {
    std::iter::from_fn(move || {
        if content.is_empty() {
            return None;
        }
        match read(content) {
            Ok((tlv, rest)) => {
                content = rest;
                Some(Ok(tlv))
            }
            Err(e) => {
                content = &[];
                Some(Err(e))
            }
        }
    })
}

/// Appends one element.
pub fn write(tag: u8, content: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = (len as u32).to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (4 - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
}

/// An element built from parts written by `build`.
pub fn nested(tag: u8, out: &mut Vec<u8>, build: impl FnOnce(&mut Vec<u8>)) {
    let mut content = Vec::new();
    build(&mut content);
    write(tag, &content, out);
}

/// Seconds since the Unix epoch of a GeneralizedTime (`YYYYMMDDHHMMSS[.fff]Z`).
pub fn generalized_time(value: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(value).ok()?;
    let text = text.strip_suffix('Z')?;
    let main = text.split('.').next()?;
    if main.len() != 14 || !main.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = |r: std::ops::Range<usize>| main[r].parse::<i64>().ok();
    let (y, mo, d) = (n(0..4)?, n(4..6)?, n(6..8)?);
    let (h, mi, s) = (n(8..10)?, n(10..12)?, n(12..14)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_long_lengths() {
        for len in [0usize, 1, 127, 128, 255, 256, 70_000] {
            let content = vec![7u8; len];
            let mut out = Vec::new();
            write(OCTET_STRING, &content, &mut out);
            out.push(0xff);
            let (tlv, rest) = read(&out).unwrap();
            assert_eq!(tlv.tag, OCTET_STRING);
            assert_eq!(tlv.value, &content[..]);
            assert_eq!(rest, &[0xff]);
            assert_eq!(tlv.raw.len(), out.len() - 1);
        }
    }

    #[test]
    fn bad_input() {
        assert_eq!(read(&[]), Err(DerError::Truncated));
        assert_eq!(read(&[0x30]), Err(DerError::Truncated));
        assert_eq!(read(&[0x30, 0x05, 1]), Err(DerError::Truncated));
        assert_eq!(read(&[0x1f, 0x01, 0]), Err(DerError::Unsupported));
        assert_eq!(read(&[0x30, 0x80]), Err(DerError::Unsupported));
        assert_eq!(
            read(&[0x30, 0x85, 1, 1, 1, 1, 1]),
            Err(DerError::Unsupported)
        );
        assert_eq!(
            expect(&[0x02, 0x01, 0x00], SEQUENCE, "a SEQUENCE").unwrap_err(),
            DerError::Unexpected("a SEQUENCE")
        );
        let items: Vec<_> = elements(&[0x02, 0x01, 0x05, 0x30]).collect();
        assert_eq!(items.len(), 2);
        assert!(items[1].is_err());
    }

    #[test]
    fn times() {
        assert_eq!(generalized_time(b"19700101000000Z"), Some(0));
        assert_eq!(generalized_time(b"20261125170000Z"), Some(1_795_626_000));
        assert_eq!(generalized_time(b"20000301000000.123Z"), Some(951_868_800));
        assert_eq!(generalized_time(b"2026112517000Z"), None);
        assert_eq!(generalized_time(b"20261325170000Z"), None);
        assert_eq!(generalized_time(b"20261125170000"), None);
    }
}

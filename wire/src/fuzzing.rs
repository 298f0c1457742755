//! Fuzz entry points, called by the three-line targets in `fuzz/`. Each checks invariants that
//! must hold for any input, so a fuzzer finds logic errors as well as panics.

use crate::http1::{parse_request_head, Status, DEFAULT_MAX_HEAD};

/// Request-head parsing: never panics; a complete head lies within the input; feeding the same
/// bytes in a shorter prefix never completes earlier nor changes the result.
pub fn http1_request_head(data: &[u8]) {
    let whole = parse_request_head(data, DEFAULT_MAX_HEAD);
    if let Ok(Status::Complete(head)) = &whole {
        assert!(head.head_len <= data.len());
        let exact = parse_request_head(&data[..head.head_len], DEFAULT_MAX_HEAD);
        assert_eq!(exact, whole);
        if head.head_len > 0 {
            let short = parse_request_head(&data[..head.head_len - 1], DEFAULT_MAX_HEAD);
            assert!(
                !matches!(short, Ok(Status::Complete(_))),
                "completed before its end"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fuzz_entry_points_accept_samples() {
        for sample in [
            &b""[..],
            b"GET / HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            b"\xff\xfe",
        ] {
            super::http1_request_head(sample);
        }
    }
}

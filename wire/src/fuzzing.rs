//! Fuzz entry points, called by the three-line targets in `fuzz/`. Each checks invariants that
//! must hold for any input, so a fuzzer finds logic errors as well as panics.

use crate::{
    bud_config, bud_ipc, control,
    forwarded::{ClientFacts, ForwardedConfig, Injector},
    http1::{parse_request_head, Status, DEFAULT_MAX_HEAD},
    keyless, netcontrol,
    packet::{self, flow_hash, way_of, HashKey, HashMode, Parsed},
    prometheus, proxy,
    response::{RequestKind, ResponseReader},
    sni_answer,
};

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

/// Forwarding-header injection, driven in both directions (a backend answers whenever the
/// injector waits for it): never panics, and what it emits does not depend on how the
/// input is split into reads. Smaller reads may notice a malformed head later (a head is only
/// re-parsed once a line ends), never miss it, and never emit anything different. The first byte
/// picks the read size; the second the settings.
pub fn forwarded_injector(data: &[u8]) {
    let [a, b, input @ ..] = data else { return };
    let config = ForwardedConfig {
        x_forwarded: b & 1 == 0,
        forwarded: b & 2 != 0,
        max_head: 256 + usize::from(b >> 2) * 16,
    };
    let facts = ClientFacts {
        client: std::net::IpAddr::from([192, 0, 2, *a]),
        local_port: 443,
        trusted: b & 4 != 0,
    };
    // How the backend answers whatever the injector waits for (an upgrade, a full queue).
    let answer: &[u8] = if b & 8 != 0 {
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n"
    } else {
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    };
    let run = |step: usize| {
        let mut injector = Injector::new(config, facts);
        let mut out = Vec::new();
        let mut result = Ok(());
        'feeding: for mut piece in input.chunks(step.max(1)) {
            while !piece.is_empty() {
                match injector.feed(piece, &mut out) {
                    Ok(used) => piece = &piece[used..],
                    Err(error) => {
                        result = Err(error);
                        break 'feeding;
                    }
                }
                // It stopped taking bytes: when it waits for the backend, that answers; else
                // it emitted enough for one call and takes the rest in the next.
                if !piece.is_empty() && injector.waits_for_backend() {
                    injector.observe_response(answer);
                }
            }
        }
        (result.map(|()| injector.requests()), out)
    };
    let step = usize::from(*a % 17) + 1;
    let (whole, whole_out) = run(input.len());
    let (pieces, pieces_out) = run(step);
    match (&whole, &pieces) {
        (Ok(w), Ok(p)) => {
            assert_eq!(w, p, "request count depends on read sizes ({step})");
            assert!(
                whole_out == pieces_out,
                "output depends on read sizes ({step})"
            );
        }
        (Ok(_), Err(e)) => panic!("pieces of {step} failed where one read did not: {e}"),
        _ => {
            let n = whole_out.len().min(pieces_out.len());
            assert!(
                whole_out[..n] == pieces_out[..n],
                "outputs diverge before the error"
            );
        }
    }
}

/// PROXY header parsing: never panics; a complete header lies within the input, and no
/// shorter prefix of it is complete.
pub fn proxy_header(data: &[u8]) {
    if let Ok(Status::Complete((_, used))) = proxy::parse(data) {
        assert!(used <= data.len() && used > 0);
        assert!(!matches!(
            proxy::parse(&data[..used - 1]),
            Ok(Status::Complete(_))
        ));
    }
}

/// Frame parsing: never panics; the flow hash of every parsed flow is symmetric (the reversed
/// flow hashes the same in every mode) and maps into range.
pub fn packet_flow(data: &[u8]) {
    for decapsulate in [false, true] {
        if let Ok(Parsed::Ip(key)) = packet::parse(data, decapsulate) {
            let reversed = packet::FlowKey {
                src: key.dst,
                dst: key.src,
                src_port: key.dst_port,
                dst_port: key.src_port,
                ..key
            };
            for mode in [
                HashMode::TwoTuple,
                HashMode::ThreeTuple,
                HashMode::FiveTuple,
            ] {
                let hash_key = HashKey { k0: 7, k1: 9 };
                let hash = flow_hash(&key, mode, &hash_key);
                assert_eq!(hash, flow_hash(&reversed, mode, &hash_key));
                assert!(way_of(hash, 30) < 30);
            }
        }
    }
}

/// OCSP and DER: parsing a response or a certificate never panics; a parsed response's signed
/// bytes lie within the input; every CertID found re-encodes and parses back the same.
pub fn ocsp_response(data: &[u8]) {
    if let Ok(parsed) = crate::ocsp::parse_response(data) {
        let start = parsed.signed.as_ptr() as usize;
        let input = data.as_ptr() as usize;
        assert!(start >= input && start + parsed.signed.len() <= input + data.len());
        for single in &parsed.responses {
            let mut encoded = Vec::new();
            single.cert_id.encode(&mut encoded);
            let (tlv, rest) = crate::der::read(&encoded).expect("our own CertID reads back");
            assert!(rest.is_empty());
            let back = crate::ocsp::CertId::parse(tlv).expect("our own CertID parses back");
            assert_eq!(back, single.cert_id);
        }
    }
    let _ = crate::ocsp::cert_fields(data);
    let _ = crate::der::generalized_time(data);
}

/// The backend side on its own: a [`ResponseReader`] told of some requests (the first byte: how
/// many; the next four: their kinds, two bits each) follows the backend's bytes (the rest) the
/// same whatever the read sizes (the sixth byte), and never counts a switch it was not asked for.
pub fn response_reader(data: &[u8]) {
    let [count, k0, k1, k2, k3, step, backend @ ..] = data else {
        return;
    };
    let kinds = u32::from_le_bytes([*k0, *k1, *k2, *k3]);
    let requests: Vec<RequestKind> = (0..usize::from(count % 16))
        .map(|i| match (kinds >> (2 * i)) & 3 {
            0 => RequestKind::Plain,
            1 => RequestKind::Head,
            2 => RequestKind::Upgrade,
            _ => RequestKind::Connect,
        })
        .collect();
    let run = |step: usize| {
        let mut reader = ResponseReader::new(256 + usize::from(*k3) * 8);
        for kind in &requests {
            reader.request_sent(*kind);
        }
        for piece in backend.chunks(step.max(1)) {
            reader.feed(piece);
        }
        (reader.switched(), reader.is_tracking(), reader.pending())
    };
    let whole = run(backend.len());
    assert_eq!(
        whole,
        run(usize::from(*step % 17) + 1),
        "depends on read sizes"
    );
    let (switched, _, pending) = whole;
    if switched {
        assert_eq!(pending, 0);
        assert!(
            requests
                .iter()
                .any(|k| matches!(k, RequestKind::Upgrade | RequestKind::Connect)),
            "switched though no request asked to"
        );
    }
    assert!(pending <= requests.len() as u64);
}

/// Keyless frames, both ways: a stream of requests (or, after the first byte's low bit, of
/// answers) parses frame by frame without panicking; each frame re-encodes to the bytes it came
/// from (sign requests and answers), and no shorter prefix of a frame is complete.
pub fn keyless_frames(data: &[u8]) {
    let [mode, stream @ ..] = data else { return };
    let mut rest = stream;
    while !rest.is_empty() {
        let used = if mode & 1 == 0 {
            let Ok(Status::Complete((request, used))) = keyless::parse_request(rest) else {
                return;
            };
            if let keyless::Request::Sign {
                id,
                scheme,
                key_id,
                input,
            } = request
            {
                let mut again = Vec::new();
                keyless::encode_request(id, scheme, &key_id, input, &mut again);
                assert_eq!(again, rest[..used]);
            }
            assert!(!matches!(
                keyless::parse_request(&rest[..used - 1]),
                Ok(Status::Complete(_))
            ));
            used
        } else {
            let Ok(Status::Complete((answer, used))) = keyless::parse_answer(rest) else {
                return;
            };
            let mut again = Vec::new();
            keyless::encode_answer(answer.id, answer.status, answer.signature, &mut again);
            assert_eq!(again, rest[..used]);
            assert!(!matches!(
                keyless::parse_answer(&rest[..used - 1]),
                Ok(Status::Complete(_))
            ));
            used
        };
        assert!(used >= 4 && used <= rest.len());
        rest = &rest[used..];
    }
}

/// bud's ticket-key messages: a stream parses message by message; each re-encodes to its bytes
/// and no shorter prefix of one is complete.
pub fn bud_ipc(data: &[u8]) {
    let mut rest = data;
    while let Ok(Status::Complete((message, used))) = bud_ipc::parse(rest) {
        let mut again = Vec::new();
        bud_ipc::encode(&message, &mut again);
        assert_eq!(again, rest[..used]);
        assert_eq!(bud_ipc::parse(&rest[..used - 1]), Ok(Status::Partial));
        rest = &rest[used..];
    }
}

/// bud JSON configuration: translating never panics, and what it yields is a TOML document
/// (which the serve config then reads) that translates the same way each time.
pub fn bud_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = bud_config::is_bud_json(text);
    if let Ok(translation) = bud_config::translate(text) {
        if let Err(e) = translation.toml.parse::<toml::Table>() {
            panic!("the translation is not TOML ({e}):\n{}", translation.toml);
        }
        assert_eq!(bud_config::translate(text), Ok(translation));
    }
}

/// Control-socket request lines: parsing never panics; a request's command is its `"cmd"`, and
/// the request written back as JSON parses to the same request. A NetControl rule in it
/// translates without panicking into one or two pre-filter rules, or a refusal.
pub fn control_request(data: &[u8]) {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(request) = control::parse_request(line) {
        assert_eq!(
            request
                .fields
                .get("cmd")
                .and_then(serde_json::Value::as_str),
            Some(request.cmd.as_str())
        );
        let rule = request
            .fields
            .get("rule")
            .unwrap_or(&serde_json::Value::Null);
        if let Ok(specs) = netcontrol::rule_specs(rule) {
            assert!(matches!(specs.len(), 1 | 2));
        }
        let again = serde_json::Value::Object(request.fields.clone()).to_string();
        assert_eq!(control::parse_request(&again), Ok(request));
    }
}

/// Dynamic SNI answers: parsing never panics; an accepted answer holds at least one certificate
/// with its key, and only usable ALPN names.
pub fn sni_answer(data: &[u8]) {
    if let Ok(answer) = sni_answer::parse(data) {
        assert!(!answer.pairs.is_empty());
        if let Some(npn) = &answer.npn {
            assert!(npn.iter().all(|p| !p.is_empty() && p.len() < 256));
        }
    }
}

/// Prometheus text: never panics; a sample count within the limits; every sample's labels
/// within the limits.
pub fn prometheus_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let limits = prometheus::Limits {
        max_text: 1 << 16,
        max_samples: 64,
        max_labels: 4,
        max_token: 64,
    };
    if let Ok(scrape) = prometheus::parse(text, limits) {
        assert!(scrape.samples.len() <= limits.max_samples);
        for sample in &scrape.samples {
            assert!(sample.labels.len() <= limits.max_labels);
            assert!(sample.name.len() <= limits.max_token);
        }
    }
}

/// Binary-upgrade handover batches: parsing never panics; a batch that parses re-encodes to its
/// bytes, and the inventory of it never panics either.
pub fn takeover_batch(data: &[u8]) {
    if let Ok(batch) = crate::takeover::Batch::parse(data) {
        assert_eq!(batch.encode().as_deref(), Ok(data));
        let mut inventory = crate::takeover::Inventory::new();
        if inventory.push(&batch, batch.entries.len()).is_ok() {
            let _ = inventory.finish();
        }
    }
}

/// Sealed sessions read back from a shared session store: parsing never panics, and a value
/// that parses is rebuilt from its parts byte for byte.
pub fn sealed_session(data: &[u8]) {
    if let Ok(sealed) = crate::sealed_session::parse(data) {
        let mut rebuilt = crate::sealed_session::header(sealed.key_id, sealed.nonce).to_vec();
        rebuilt.extend_from_slice(sealed.ciphertext);
        rebuilt.extend_from_slice(&sealed.tag);
        assert_eq!(rebuilt, data);
    }
}

/// A stream of Redis replies: parsing never panics, never reads past the input, always makes
/// progress, and a bulk reply is never longer than the limit.
pub fn resp_replies(data: &[u8]) {
    let mut at = 0;
    while let Ok(Some((reply, used))) = crate::resp::parse_reply(&data[at..], 64) {
        assert!(used > 0 && at + used <= data.len());
        if let crate::resp::Reply::Bulk(bytes) = reply {
            assert!(bytes.len() <= 64);
        }
        at += used;
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
            b"\x05\x00POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
            br#"{"cmd": "stats"}"#,
            br#"{"cmd": "netcontrol", "rule": {"ty": "drop", "entity": {"ty": "address", "ip": "10.0.0.1"}}}"#,
            br#"{"frontend": {"port": 443, "keys": [{"cert": "c.pem", "key": "k.pem"}]}}"#,
            br#"{"cert": "PEM", "key": ["PEM"], "npn": ["h2", ""]}"#,
            b"\x04\x02\x00\x00\x00HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"\x01\x00\x00\x00\x0a\x00\x00\x00\x01\x00sig!!",
        ] {
            super::http1_request_head(sample);
            super::forwarded_injector(sample);
            super::proxy_header(sample);
            super::packet_flow(sample);
            super::response_reader(sample);
            super::keyless_frames(sample);
            super::bud_ipc(sample);
            super::bud_config(sample);
            super::control_request(sample);
            super::sni_answer(sample);
            super::sealed_session(sample);
            super::resp_replies(sample);
        }
    }
}

//! Control-socket requests: each is one JSON object on one line with a string `"cmd"`, e.g.
//! `{"cmd": "stats"}`. The socket, its line limit and the answers live in `fastedge-runtime`;
//! what each command does lives with its subsystem.

use serde_json::{Map, Value};

/// One request: its command and the whole object (the command's arguments are its other keys).
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The value of the `cmd` key (`"stats"`, `"reload"`, …).
    pub cmd: String,
    /// Every key of the request object, `cmd` included; commands read their arguments from here.
    pub fields: Map<String, Value>,
}

/// Parses one request line; the error is what the client is told.
pub fn parse_request(line: &str) -> Result<Request, String> {
    let request: Value = serde_json::from_str(line).map_err(|e| format!("bad JSON: {e}"))?;
    let Value::Object(fields) = request else {
        return Err("a request is a JSON object, e.g. {\"cmd\": \"status\"}".into());
    };
    let Some(cmd) = fields.get("cmd").and_then(Value::as_str) else {
        return Err("missing \"cmd\" (a string), e.g. {\"cmd\": \"status\"}".into());
    };
    Ok(Request {
        cmd: cmd.to_owned(),
        fields,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_refusals() {
        let request = parse_request(r#"{"cmd": "weight", "backend": "a", "weight": 3}"#)
            .expect("a good request");
        assert_eq!(request.cmd, "weight");
        assert_eq!(request.fields.get("weight"), Some(&Value::from(3)));
        for (line, why) in [
            ("{", "bad JSON"),
            ("[1]", "a request is a JSON object"),
            ("{\"cmd\": 1}", "missing \"cmd\""),
            ("{}", "missing \"cmd\""),
        ] {
            let error = parse_request(line).expect_err(line);
            assert!(error.contains(why), "{line}: {error}");
        }
    }
}

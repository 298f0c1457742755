//! The Prometheus text exposition format (version 0.0.4), read side: a scrape's body into
//! [`Sample`]s.
//!
//! The text comes from whatever answered on the address the user gave, so it is untrusted:
//! [`parse`] bounds the text, the number of samples, the labels per sample and each name and
//! value ([`Limits`]), and answers a typed error naming the line rather than panicking or
//! growing without end. `# HELP` lines and other comments are skipped; `# TYPE` lines are kept
//! as [`Scrape::types`]. Timestamps after a value are accepted and dropped (a live view wants
//! the value now).

use std::fmt;

/// Bounds on what [`parse`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of text at most.
    pub max_text: usize,
    /// Samples at most.
    pub max_samples: usize,
    /// Labels on one sample at most.
    pub max_labels: usize,
    /// Bytes of a metric name, label name or label value at most.
    pub max_token: usize,
}

impl Default for Limits {
    /// 8 MiB of text, 100,000 samples, 32 labels a sample, 4 KiB a name or value.
    fn default() -> Self {
        Self {
            max_text: 8 << 20,
            max_samples: 100_000,
            max_labels: 32,
            max_token: 4096,
        }
    }
}

/// One sample line: `name{label="value",…} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric name.
    pub name: String,
    /// Label pairs in the order written, values unescaped.
    pub labels: Vec<(String, String)>,
    /// The value (`NaN`, `+Inf` and `-Inf` included).
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What a metric's `# TYPE` line says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    /// Only goes up (until a restart).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Buckets, a sum and a count.
    Histogram,
    /// Quantiles, a sum and a count.
    Summary,
    /// Declared without a type.
    Untyped,
}

/// A parsed scrape: its samples in order, and the declared types.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    /// Every sample line, in order.
    pub samples: Vec<Sample>,
    /// `(metric name, type)` from each `# TYPE` line, in order.
    pub types: Vec<(String, MetricType)>,
}

impl Scrape {
    /// The samples named `name`.
    pub fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// The value of the one sample named `name` with no labels, if present.
    pub fn value(&self, name: &str) -> Option<f64> {
        self.named(name)
            .find(|s| s.labels.is_empty())
            .map(|s| s.value)
    }
}

/// Why a text is not a scrape [`parse`] accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// The text is longer than [`Limits::max_text`]: `len` bytes, `max` allowed.
    TooLong {
        /// Bytes in the text.
        len: usize,
        /// Bytes allowed.
        max: usize,
    },
    /// More samples than [`Limits::max_samples`] (`max`).
    TooManySamples {
        /// Samples allowed.
        max: usize,
    },
    /// Line `line` (from 1) is malformed: `what`.
    Line {
        /// Line number, from 1.
        line: usize,
        /// What is wrong with it.
        what: &'static str,
    },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::TooLong { len, max } => {
                write!(f, "metrics text of {len} bytes, over the limit of {max}")
            }
            ParseError::TooManySamples { max } => write!(f, "more than {max} samples"),
            ParseError::Line { line, what } => write!(f, "metrics text line {line}: {what}"),
        }
    }
}

impl std::error::Error for ParseError {}

/// Parses Prometheus text `text` within `limits`.
pub fn parse(text: &str, limits: Limits) -> Result<Scrape, ParseError> {
    if text.len() > limits.max_text {
        return Err(ParseError::TooLong {
            len: text.len(),
            max: limits.max_text,
        });
    }
    let mut scrape = Scrape::default();
    for (index, raw) in text.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw).trim_start();
        let error = |what| ParseError::Line {
            line: index + 1,
            what,
        };
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.split_ascii_whitespace();
            if words.next() == Some("TYPE") {
                let name = words.next().ok_or_else(|| error("# TYPE without a name"))?;
                check_metric_name(name, limits).map_err(error)?;
                let kind = match words.next() {
                    Some("counter") => MetricType::Counter,
                    Some("gauge") => MetricType::Gauge,
                    Some("histogram") => MetricType::Histogram,
                    Some("summary") => MetricType::Summary,
                    Some("untyped") => MetricType::Untyped,
                    _ => return Err(error("# TYPE with an unknown type")),
                };
                scrape.types.push((name.to_owned(), kind));
            }
            continue;
        }
        if scrape.samples.len() >= limits.max_samples {
            return Err(ParseError::TooManySamples {
                max: limits.max_samples,
            });
        }
        scrape
            .samples
            .push(parse_sample(line, limits).map_err(error)?);
    }
    Ok(scrape)
}

fn check_metric_name(name: &str, limits: Limits) -> Result<(), &'static str> {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':');
    if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':') {
        return Err("bad metric name");
    }
    if name.len() > limits.max_token {
        return Err("metric name over the size limit");
    }
    Ok(())
}

/// Length of the run of bytes at the start of `s` that `ok` accepts.
fn run_len(s: &str, ok: impl Fn(u8) -> bool) -> usize {
    s.bytes().position(|b| !ok(b)).unwrap_or(s.len())
}

fn parse_sample(line: &str, limits: Limits) -> Result<Sample, &'static str> {
    let name_len = run_len(line, |b| {
        b.is_ascii_alphanumeric() || b == b'_' || b == b':'
    });
    let name = &line[..name_len];
    check_metric_name(name, limits)?;
    let mut rest = &line[name_len..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = after;
        loop {
            rest = rest.trim_start();
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            if labels.len() >= limits.max_labels {
                return Err("more labels than the limit");
            }
            let label_len = run_len(rest, |b| b.is_ascii_alphanumeric() || b == b'_');
            let label = &rest[..label_len];
            if label.is_empty() || label.as_bytes()[0].is_ascii_digit() {
                return Err("bad label name");
            }
            if label.len() > limits.max_token {
                return Err("label name over the size limit");
            }
            rest = rest[label_len..].trim_start();
            rest = rest.strip_prefix('=').ok_or("label without =")?;
            rest = rest.trim_start();
            rest = rest
                .strip_prefix('"')
                .ok_or("label value without a quote")?;
            let (value, after) = label_value(rest, limits.max_token)?;
            labels.push((label.to_owned(), value));
            rest = after.trim_start();
            if let Some(after) = rest.strip_prefix(',') {
                rest = after;
            } else if !rest.starts_with('}') {
                return Err("labels not separated by a comma");
            }
        }
    }
    if !rest.starts_with([' ', '\t']) {
        return Err("no space before the value");
    }
    let mut words = rest.split_ascii_whitespace();
    let value = words.next().ok_or("no value")?;
    let value = parse_value(value).ok_or("bad value")?;
    if let Some(timestamp) = words.next() {
        timestamp
            .parse::<i64>()
            .map_err(|_| "bad timestamp after the value")?;
    }
    if words.next().is_some() {
        return Err("text after the timestamp");
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// An escaped label value up to its closing quote; the value and what follows the quote.
fn label_value(s: &str, max: usize) -> Result<(String, &str), &'static str> {
    let mut value = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &s[i + 1..])),
            '\\' => match chars.next() {
                Some((_, '\\')) => value.push('\\'),
                Some((_, '"')) => value.push('"'),
                Some((_, 'n')) => value.push('\n'),
                _ => return Err("bad escape in a label value"),
            },
            c => value.push(c),
        }
        if value.len() > max {
            return Err("label value over the size limit");
        }
    }
    Err("label value without its closing quote")
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        // Rust's parser also takes "inf", "infinity" and "nan" in any case: the format does not.
        _ if s
            .bytes()
            .any(|b| b.is_ascii_alphabetic() && !matches!(b, b'e' | b'E')) =>
        {
            None
        }
        _ => s.parse().ok(),
    }
}

/// A counter's increase per second from `before` to `after` over `seconds`; a counter that
/// went down was reset (its process restarted, or a reload rebuilt it), so its whole value is
/// the increase.
pub fn per_second(before: u64, after: u64, seconds: f64) -> f64 {
    let increase = if after >= before {
        after - before
    } else {
        after
    };
    if seconds > 0.0 {
        increase as f64 / seconds
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const TEXT: &str = "# HELP fastedge_connections_accepted_total Client connections accepted.\n\
        # TYPE fastedge_connections_accepted_total counter\n\
        fastedge_connections_accepted_total 12\n\
        # TYPE fastedge_connections_closed_total counter\n\
        fastedge_connections_closed_total{reason=\"idle\"} 3\n\
        fastedge_backend_dead_cores{backend=\"a\\\\b \\\"q\\\"\\n\", x = \"1\" ,} 1 1700000000000\r\n\
        \n\
        weird:name_1 +Inf\n\
        neg -2.5e3\n";

    #[test]
    fn parses_samples_labels_and_types() {
        let scrape = parse(TEXT, Limits::default()).unwrap();
        assert_eq!(scrape.samples.len(), 5);
        assert_eq!(
            scrape.value("fastedge_connections_accepted_total"),
            Some(12.0)
        );
        let closed = scrape
            .named("fastedge_connections_closed_total")
            .next()
            .unwrap();
        assert_eq!(closed.label("reason"), Some("idle"));
        assert_eq!(closed.value, 3.0);
        let dead = &scrape.samples[2];
        assert_eq!(dead.label("backend"), Some("a\\b \"q\"\n"));
        assert_eq!(dead.label("x"), Some("1"));
        assert_eq!(scrape.value("weird:name_1"), Some(f64::INFINITY));
        assert_eq!(scrape.value("neg"), Some(-2500.0));
        assert_eq!(
            scrape.types,
            vec![
                (
                    "fastedge_connections_accepted_total".to_owned(),
                    MetricType::Counter
                ),
                (
                    "fastedge_connections_closed_total".to_owned(),
                    MetricType::Counter
                )
            ]
        );
        assert!(parse("x NaN\n", Limits::default()).unwrap().samples[0]
            .value
            .is_nan());
    }

    #[test]
    fn malformed_lines_are_named() {
        for (text, line, what) in [
            ("ok 1\n1bad 2\n", 2, "bad metric name"),
            ("x{a=\"1\" 2\n", 1, "labels not separated by a comma"),
            ("x{a=\"1}\n", 1, "label value without its closing quote"),
            ("x{a=1} 2\n", 1, "label value without a quote"),
            ("x{=\"1\"} 2\n", 1, "bad label name"),
            ("x{a=\"\\t\"} 2\n", 1, "bad escape in a label value"),
            ("x\n", 1, "no space before the value"),
            ("x one\n", 1, "bad value"),
            ("x inf\n", 1, "bad value"),
            ("x 1 2 3\n", 1, "text after the timestamp"),
            ("x 1 soon\n", 1, "bad timestamp after the value"),
            ("# TYPE x meter\n", 1, "# TYPE with an unknown type"),
            ("x{a\"1\"} 2\n", 1, "label without ="),
        ] {
            assert_eq!(
                parse(text, Limits::default()),
                Err(ParseError::Line { line, what }),
                "{text:?}"
            );
        }
    }

    #[test]
    fn sizes_are_bounded() {
        let small = Limits {
            max_text: 64,
            max_samples: 2,
            max_labels: 2,
            max_token: 8,
        };
        assert_eq!(
            parse(&"x 1\n".repeat(20), small),
            Err(ParseError::TooLong { len: 80, max: 64 })
        );
        assert_eq!(
            parse("a 1\nb 2\nc 3\n", small),
            Err(ParseError::TooManySamples { max: 2 })
        );
        assert_eq!(
            parse("x{a=\"1\",b=\"2\",c=\"3\"} 1\n", small),
            Err(ParseError::Line {
                line: 1,
                what: "more labels than the limit"
            })
        );
        assert_eq!(
            parse("x{a=\"123456789\"} 1\n", small),
            Err(ParseError::Line {
                line: 1,
                what: "label value over the size limit"
            })
        );
        assert_eq!(
            parse("abcdefghij 1\n", small),
            Err(ParseError::Line {
                line: 1,
                what: "metric name over the size limit"
            })
        );
    }

    #[test]
    fn what_the_registry_renders_parses() {
        // Shape of fastedge_runtime::metrics::Registry::render (runtime depends on wire, so the
        // round trip itself is tested there).
        let text = "# HELP fastedge_cores Executors running.\n# TYPE fastedge_cores gauge\nfastedge_cores 2\n";
        assert_eq!(
            parse(text, Limits::default())
                .unwrap()
                .value("fastedge_cores"),
            Some(2.0)
        );
    }
}

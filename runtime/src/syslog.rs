//! Log lines to the local syslog daemon: one RFC 3164 datagram per event on a UNIX socket
//! (`/dev/log` by default), facility daemon.

use std::{io, os::unix::net::UnixDatagram, path::Path, sync::Arc};

/// Sends each written log event as one syslog datagram.
#[derive(Debug, Clone)]
pub struct SyslogWriter {
    socket: Arc<UnixDatagram>,
    tag: String,
}

/// Facility `daemon` (3), shifted as the PRI field wants.
const FACILITY_DAEMON: u8 = 3 << 3;

impl SyslogWriter {
    /// Connects to the syslog socket at `path`; lines are tagged `tag[pid]`.
    pub fn connect(path: &Path, tag: &str) -> io::Result<Self> {
        let socket = UnixDatagram::unbound()?;
        socket.connect(path).map_err(|e| {
            io::Error::new(e.kind(), format!("syslog socket {}: {e}", path.display()))
        })?;
        Ok(Self {
            socket: Arc::new(socket),
            tag: format!("{tag}[{}]", std::process::id()),
        })
    }

    /// The syslog severity of a formatted event, from its level: the JSON `"level"` key, or
    /// the level word among the first two words of a text line (after the time). Never from
    /// words further on, which may be text a peer chose.
    fn severity(event: &str) -> u8 {
        const JSON_LEVEL: &str = "\"level\":\"";
        let level = match event.find(JSON_LEVEL) {
            // Quotes inside JSON strings are escaped: the first match is the real key.
            Some(at) => event[at + JSON_LEVEL.len()..].split('"').next(),
            None => event
                .split_whitespace()
                .take(2)
                .find(|w| matches!(*w, "ERROR" | "WARN" | "INFO" | "DEBUG" | "TRACE")),
        };
        match level {
            Some("ERROR") => 3,
            Some("WARN") => 4,
            Some("DEBUG" | "TRACE") => 7,
            _ => 6,
        }
    }
}

impl io::Write for SyslogWriter {
    /// One write is one log event (the formatter writes each event whole): it becomes one
    /// datagram, its line breaks escaped, so that no text inside an event can start an entry
    /// of its own.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let event = text.trim_end_matches(['\r', '\n']);
        if event.trim().is_empty() {
            return Ok(buf.len());
        }
        let event = event.replace('\r', "\\r").replace('\n', "\\n");
        let pri = FACILITY_DAEMON | Self::severity(&event);
        let datagram = format!("<{pri}>{}: {event}", self.tag);
        // A syslog daemon that is gone or full must not stop the proxy: drop the line.
        let _ = self.socket.send(datagram.as_bytes());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn one_datagram_per_line_with_priority() {
        let dir = std::env::temp_dir().join(format!("fastedge-syslog-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("log.sock");
        let _ = std::fs::remove_file(&path);
        let daemon = UnixDatagram::bind(&path).unwrap();
        let mut writer = SyslogWriter::connect(&path, "fastedge").unwrap();
        writer.write_all(b" WARN something odd\n").unwrap();
        writer.write_all(b" INFO fine\n").unwrap();
        let mut buf = [0u8; 512];
        let n = daemon.recv(&mut buf).unwrap();
        let first = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(first.starts_with("<28>fastedge["), "{first}");
        assert!(first.ends_with("]:  WARN something odd"), "{first}");
        let n = daemon.recv(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("<30>fastedge["));
        // A line break inside an event cannot start an entry of its own.
        writer
            .write_all(b" INFO name=x\n ERROR forged\r\n")
            .unwrap();
        let n = daemon.recv(&mut buf).unwrap();
        let event = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(event.starts_with("<30>fastedge["), "{event}");
        assert!(
            event.ends_with("]:  INFO name=x\\n ERROR forged"),
            "{event}"
        );
        writer
            .write_all(
                b"{\"timestamp\":\"t\",\"level\":\"WARN\",\"sni\":\"\\\"level\\\":\\\"ERROR\"}\n",
            )
            .unwrap();
        let n = daemon.recv(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("<28>fastedge["));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

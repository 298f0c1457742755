//! Log lines to the local syslog daemon: one RFC 3164 datagram per line on a UNIX socket
//! (`/dev/log` by default), facility daemon.

use std::{io, os::unix::net::UnixDatagram, path::Path, sync::Arc};

/// Sends each written log line as one syslog datagram.
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

    /// The syslog severity for a formatted line, from the level word it carries.
    fn severity(line: &str) -> u8 {
        let head = &line[..line.len().min(64)];
        if head.contains("ERROR") {
            3
        } else if head.contains("WARN") {
            4
        } else if head.contains("DEBUG") || head.contains("TRACE") {
            7
        } else {
            6
        }
    }
}

impl io::Write for SyslogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let pri = FACILITY_DAEMON | Self::severity(line);
            let datagram = format!("<{pri}>{}: {line}", self.tag);
            // A syslog daemon that is gone or full must not stop the proxy: drop the line.
            let _ = self.socket.send(datagram.as_bytes());
        }
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
        let _ = std::fs::remove_dir_all(&dir);
    }
}

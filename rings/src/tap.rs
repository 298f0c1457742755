//! A way as a pcap stream (nanosecond timestamps, Ethernet), for `tcpdump -r -` and the like:
//! what `fastedge tap` writes.

use std::{
    io::{self, Write},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use crate::shm::Consumer;

/// How long a wait for frames lasts at most: how soon a stop request is seen.
const STOP_CHECK: Duration = Duration::from_millis(200);

/// The pcap global header: nanosecond magic, version 2.4, snaplen 65535, Ethernet.
fn global_header() -> [u8; 24] {
    let mut header = [0u8; 24];
    header[0..4].copy_from_slice(&0xa1b2_3c4d_u32.to_le_bytes());
    header[4..6].copy_from_slice(&2u16.to_le_bytes());
    header[6..8].copy_from_slice(&4u16.to_le_bytes());
    // 8..16: time zone and accuracy, zero.
    header[16..20].copy_from_slice(&65535u32.to_le_bytes());
    header[20..24].copy_from_slice(&1u32.to_le_bytes());
    header
}

/// Writes the header, then every frame `consumer` reads, to `out` as pcap records, until
/// `limit` frames are written or `stop` is set; returns how many were written. Output is
/// flushed whenever the way runs empty. A reader that goes away (a broken pipe, as after
/// `tcpdump -c N` or `head`) ends the stream normally.
pub fn stream_way(
    consumer: &mut Consumer,
    out: impl Write,
    limit: Option<u64>,
    stop: &AtomicBool,
) -> io::Result<u64> {
    let mut out = io::BufWriter::new(out);
    let mut written = 0u64;
    let result = (|| {
        out.write_all(&global_header())?;
        out.flush()?;
        let limit = limit.unwrap_or(u64::MAX);
        let mut record = Vec::new();
        while written < limit && !stop.load(Ordering::Relaxed) {
            let mut failure = None;
            let max = usize::try_from(limit - written)
                .unwrap_or(usize::MAX)
                .min(1024);
            let n = consumer.read_batch(max, |frame| {
                if failure.is_some() {
                    return;
                }
                let len = u32::try_from(frame.data.len()).unwrap_or(u32::MAX);
                record.clear();
                record.extend_from_slice(
                    &((frame.timestamp_ns / 1_000_000_000) as u32).to_le_bytes(),
                );
                record.extend_from_slice(
                    &((frame.timestamp_ns % 1_000_000_000) as u32).to_le_bytes(),
                );
                record.extend_from_slice(&len.to_le_bytes());
                record.extend_from_slice(&len.to_le_bytes());
                record.extend_from_slice(frame.data);
                if let Err(e) = out.write_all(&record) {
                    failure = Some(e);
                }
            });
            if let Some(e) = failure {
                return Err(e);
            }
            written += n as u64;
            if n == 0 {
                out.flush()?;
                // Asleep until the distributor wakes us with the next frame; the timeout only
                // bounds how long a stop request waits.
                consumer.wait_readable(STOP_CHECK);
            }
        }
        out.flush()
    })();
    match result {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(written),
        Err(e) => Err(e),
        Ok(()) => Ok(written),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::AtomicBool;

    use pcap_file::pcap::PcapReader;

    use super::*;
    use crate::shm::Producer;

    #[test]
    fn a_way_streams_as_a_pcap_file_that_a_reader_takes() {
        let path = std::env::temp_dir()
            .join(format!("fastedge-tap-{}", std::process::id()))
            .join("way-0");
        let mut producer = Producer::create(&path, 64 * 1024).unwrap();
        let mut consumer = Consumer::open_path(&path).unwrap();
        let frames: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 60 + usize::from(i)]).collect();
        for (i, frame) in frames.iter().enumerate() {
            assert!(producer.push(frame, 1_700_000_000_123_456_789 + i as u64, 0));
        }
        producer.publish();
        let mut out = Vec::new();
        let stop = AtomicBool::new(false);
        let written = stream_way(&mut consumer, &mut out, Some(5), &stop).unwrap();
        assert_eq!(written, 5);

        let mut reader = PcapReader::new(&out[..]).unwrap();
        let header = reader.header();
        assert_eq!(header.ts_resolution, pcap_file::TsResolution::NanoSecond);
        assert_eq!(header.datalink, pcap_file::DataLink::ETHERNET);
        for (i, frame) in frames.iter().enumerate() {
            let packet = reader.next_packet().unwrap().unwrap();
            assert_eq!(&packet.data[..], &frame[..]);
            assert_eq!(packet.orig_len as usize, frame.len());
            assert_eq!(
                packet.timestamp,
                Duration::new(1_700_000_000, 123_456_789 + i as u32)
            );
        }
        assert!(reader.next_packet().is_none());

        // Stopped with nothing to read: just the header.
        stop.store(true, Ordering::Relaxed);
        let mut out = Vec::new();
        assert_eq!(stream_way(&mut consumer, &mut out, None, &stop).unwrap(), 0);
        assert_eq!(out.len(), 24);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}

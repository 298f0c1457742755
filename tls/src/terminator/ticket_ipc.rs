//! bud's ticket-key IPC (`tls.ticket_key_stdin`): key messages arrive on a byte stream
//! (standard input for `fastedge serve`) and each becomes the current ticket key.

use std::{io::Read, sync::Arc};

use arc_swap::ArcSwap;
use fastedge_wire::{bud_ipc, http1::Status};

use crate::{proxy::Frontend, tickets::TicketKey};

/// Reads key messages from `input` on a thread of its own, installing each as the current
/// ticket key of the running configuration. A malformed message ends the reading (the stream
/// cannot be resynchronized), with the reason logged; so does the end of input.
pub(super) fn spawn_reader(input: impl Read + Send + 'static, current: Arc<ArcSwap<Frontend>>) {
    let spawned = std::thread::Builder::new()
        .name("fastedge-ticket-ipc".into())
        .spawn(move || read_keys(input, &current));
    if let Err(error) = spawned {
        tracing::error!(%error, "could not start the ticket key IPC thread");
    }
}

/// Installs every key message of `input` until it ends or a message is malformed; returns how
/// many were installed.
fn read_keys(mut input: impl Read, current: &ArcSwap<Frontend>) -> usize {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    let mut installed = 0;
    loop {
        match bud_ipc::parse(&buf) {
            Ok(Status::Complete((message, used))) => {
                buf.drain(..used);
                let key = TicketKey::from_bytes(&message.key);
                match current.load().context.ticket_keys() {
                    Some(keys) => {
                        keys.install(key);
                        installed += 1;
                    }
                    None => tracing::warn!("ticket key message ignored: tickets are off"),
                }
                continue;
            }
            Ok(Status::Partial) => {}
            Err(error) => {
                tracing::error!(%error, "ticket key IPC on standard input: stopped reading");
                return installed;
            }
        }
        match input.read(&mut chunk) {
            Ok(0) => {
                tracing::info!("ticket key IPC: standard input closed");
                return installed;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(error) => {
                tracing::error!(%error, "ticket key IPC: reading standard input failed");
                return installed;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use fastedge_wire::bud_ipc::{encode, TicketMessage};

    use super::*;
    use crate::{
        config::{BackendAddr, BackendSpec, ProxyPrefix, ServeConfig},
        SelfSigned, ServerContext,
    };

    /// Hands out its bytes a few at a time, so messages arrive split across reads.
    struct Trickle(Vec<u8>, usize);

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.len().min(buf.len()).min(self.1);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0.drain(..n);
            Ok(n)
        }
    }

    fn frontend() -> Frontend {
        let config = ServeConfig::default();
        let demo = SelfSigned::generate(&["localhost"], 1).unwrap();
        let context =
            ServerContext::build(std::slice::from_ref(&demo.cert), &demo.key, &config.tls).unwrap();
        let backend = BackendSpec {
            name: "127.0.0.1:1".into(),
            addr: BackendAddr::Tcp("127.0.0.1:1".parse().unwrap()),
            proxy_protocol: ProxyPrefix::None,
            x_forwarded: false,
            forwarded: false,
            send_client_cert: false,
        };
        Frontend::new(
            0,
            context,
            config.frontend,
            config.balance,
            vec![backend],
            &[],
        )
    }

    #[test]
    fn each_message_becomes_the_current_key_until_a_bad_one_ends_the_reading() {
        let current = ArcSwap::from_pointee(frontend());
        let mut input = Vec::new();
        for n in [1u8, 2] {
            encode(
                &TicketMessage {
                    context: 0,
                    key: [n; 48],
                },
                &mut input,
            );
        }
        input.push(0x7f); // not a ticket message: the stream cannot be followed after it
        encode(
            &TicketMessage {
                context: 0,
                key: [3; 48],
            },
            &mut input,
        );
        assert_eq!(read_keys(Trickle(input, 5), &current), 2);
        let names = current.load().context.ticket_keys().unwrap().key_names();
        assert_eq!(
            names[..2],
            [[2; 16], [1; 16]],
            "newest first, the one before still decrypts"
        );
        assert!(!names.contains(&[3; 16]), "nothing after the bad message");
    }
}

//! Benchmarks of fastedge.
//!
//! Owns: criterion benches of the hot paths (`benches/`, run with `cargo bench -p
//! fastedge-benches`); the harness against peers (haproxy, nginx, hitch, AF_PACKET fanout)
//! comes here too. Speed goals live here, never in timed unit tests.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fastedge_wire::fuzzing::sealed_session(data));

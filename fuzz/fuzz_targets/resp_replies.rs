#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fastedge_wire::fuzzing::resp_replies(data));

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fastedge_rings::fuzzing::pipeline_toml(data));

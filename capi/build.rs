//! Generates the C header from src/lib.rs into OUT_DIR/fastedge_ways.h (the unit test
//! `the_committed_header_is_up_to_date` compares it with include/fastedge_ways.h).

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=src/lib.rs");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("generating the C header from src/lib.rs")
        .write_to_file(out.join("fastedge_ways.h"));
}

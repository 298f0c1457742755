//! Compiles the XDP programs in `src/bpf/` with clang through libbpf-cargo; the objects are
//! embedded into the crate with `include_bytes!`.

use std::{env, path::PathBuf};

use libbpf_cargo::SkeletonBuilder;

const PROGRAMS: &[&str] = &["xsk_redirect", "split_fast"];

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed=src/bpf/prefilter.h");
    for name in PROGRAMS {
        let source = format!("src/bpf/{name}.bpf.c");
        println!("cargo:rerun-if-changed={source}");
        let result = SkeletonBuilder::new()
            .source(&source)
            .obj(out.join(format!("{name}.bpf.o")))
            // Debian keeps asm/ under the multiarch directory, which clang's BPF target omits.
            .clang_args([
                "-I/usr/include/x86_64-linux-gnu",
                "-O2",
                "-g",
                "-Wall",
                "-Werror",
            ])
            .build();
        if let Err(error) = result {
            panic!(
                "building {source} failed: {error:#}\n\
                 (needs clang and the kernel headers: apt-get install clang libelf-dev)"
            );
        }
    }
}

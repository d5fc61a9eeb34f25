//! Embeds the eBPF object: `cargo xtask build` compiles `agent-ebpf` with the
//! nightly toolchain for the BPF target and names the object in
//! `HOIST_EBPF_OBJECT`; this script hands its path to the loader.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=HOIST_EBPF_OBJECT");
    let path = match std::env::var_os("HOIST_EBPF_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap())
            .join("../agent-ebpf/target/bpfel-unknown-none/release/hoist-agent-ebpf"),
    };
    if !path.exists() {
        panic!(
            "eBPF object not found at {}: build with `cargo xtask build` (or `cargo xtask test`)",
            path.display()
        );
    }
    println!("cargo:rerun-if-changed={}", path.display());
    println!("cargo:rustc-env=HOIST_EBPF_OBJECT_PATH={}", path.canonicalize().unwrap().display());
}

//! Embeds the eBPF object: `cargo xtask build` compiles `agent-ebpf` with the
//! nightly toolchain for the BPF target and names the object in
//! `HOIST_EBPF_OBJECT`; this script hands its path to the loader
//! (`HOIST_EBPF_OBJECT_PATH`, for `include_bytes_aligned!`). It also sets
//! HOIST_VERSION, the `--version` line (build-support/version.rs).

use std::path::PathBuf;

include!("../build-support/version.rs");

fn main() {
    emit_version();
    println!("cargo:rerun-if-env-changed=HOIST_EBPF_OBJECT");
    let manifest_dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let path = match std::env::var_os("HOIST_EBPF_OBJECT") {
        // Build scripts run in the package's directory: say where a relative
        // path actually pointed.
        Some(p) => manifest_dir.join(p),
        None => {
            manifest_dir.join("../agent-ebpf/target/bpfel-unknown-none/release/hoist-agent-ebpf")
        }
    };
    let path = path.canonicalize().unwrap_or_else(|_| {
        panic!(
            "eBPF object not found at {}: build with `cargo xtask build` (or `cargo xtask test`)",
            path.display()
        )
    });
    // Rebuild the agent whenever the object changes, not only when the
    // variable does.
    println!("cargo:rerun-if-changed={}", path.display());
    println!("cargo:rustc-env=HOIST_EBPF_OBJECT_PATH={}", path.display());
}

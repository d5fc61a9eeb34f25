//! Sets HOIST_VERSION, the version line `hoist-host --version` prints (the
//! package version and the git commit, see build-support/version.rs).

include!("../build-support/version.rs");

fn main() {
    emit_version();
}

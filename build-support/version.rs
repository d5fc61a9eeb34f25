// The version line of both binaries, computed by their build scripts
// (`include!`d from agent/build.rs and host/build.rs): `0.1.0 (git 1a2b3c4)`,
// which clap prints as `hoist-agent 0.1.0 (git 1a2b3c4)`.
//
// The commit is, in order: HOIST_GIT_COMMIT when set (a packager building
// from a tarball who knows it), else `git rev-parse` of this very checkout
// (not of some repository a tarball was unpacked inside), else `unknown`.
// The build script reruns when HEAD or the branch it names moves.

/// Sets `HOIST_VERSION` for the package's code (`env!("HOIST_VERSION")`).
fn emit_version() {
    println!("cargo:rerun-if-env-changed=HOIST_GIT_COMMIT");
    let commit = match std::env::var("HOIST_GIT_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => git_commit().unwrap_or_else(|| "unknown".to_string()),
    };
    let version = std::env::var("CARGO_PKG_VERSION").expect("cargo sets CARGO_PKG_VERSION");
    println!("cargo:rustc-env=HOIST_VERSION={version} (git {commit})");
}

/// The short commit of the workspace's own checkout, watching the files
/// that change with it.
fn git_commit() -> Option<String> {
    let manifest = std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    let workspace = manifest.parent()?.canonicalize().ok()?;
    let git = |args: &[&str]| -> Option<String> {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(&workspace)
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    // A tarball unpacked inside another repository is not that repository.
    let top = std::path::PathBuf::from(git(&["rev-parse", "--show-toplevel"])?);
    if top.canonicalize().ok()? != workspace {
        return None;
    }
    // HEAD, the branch it names, and packed-refs (where a branch may live);
    // cargo reruns on a change of any that exist (a missing one would make
    // it rerun every build).
    let mut watch = vec![git(&["rev-parse", "--git-path", "HEAD"])?];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch.push(git(&["rev-parse", "--git-path", &branch])?);
    }
    watch.push(git(&["rev-parse", "--git-path", "packed-refs"])?);
    for p in watch {
        let p = workspace.join(p);
        if p.exists() {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
    git(&["rev-parse", "--short=7", "HEAD"]).filter(|c| !c.is_empty())
}

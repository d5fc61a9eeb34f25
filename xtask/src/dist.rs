//! `cargo xtask dist`: the release artifacts, in target/dist/.
//!
//! - `hoist-agent-<ver>-x86_64-linux.tar.gz`: a static hoist-agent (crt-static,
//!   as the VM lab's: it runs on a guest of any glibc, or none), its systemd
//!   unit and /etc/default file, completions, man pages, the README excerpt;
//! - `hoist-host-<ver>-x86_64-linux.tar.gz`: the same for a Linux host;
//! - `hoist-host-<ver>-x86_64-windows.zip`: hoist-host.exe (windows.rs builds
//!   it with mingw-w64), its man page and the README excerpt;
//! - `hoist-agent_<ver>_amd64.deb`, `hoist-host_<ver>_amd64.deb`: the binary in
//!   /usr/bin, the unit in /usr/lib/systemd/system, /etc/default/NAME (a
//!   conffile), man pages, completions; maintainer scripts reload systemd
//!   when it runs and do nothing else (the units are enabled by the admin);
//! - `SHA256SUMS` of those five; each archive also has its own.
//!
//! Completions and man pages come from the binaries' hidden `completions` and
//! `man` subcommands (net/src/docs.rs). The packages are staged trees built
//! with `dpkg-deb --root-owner-group`, no root needed; debtest.rs installs
//! them in `cargo xtask test`.

use crate::build::build_ebpf;
use crate::setup::apt;
use crate::util::{output, root, run, say, target_dir};
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const TARGET: &str = "x86_64-unknown-linux-gnu";
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The README sections every archive and package carries, in this order
/// (after the opening paragraphs).
const README_SECTIONS: &[&str] =
    &["Installing and operating", "Deploying in a real VM", "Command line", "Security"];

/// What `dist` leaves behind.
#[derive(Clone, Debug)]
pub struct Dist {
    pub dir: PathBuf,
    pub agent_deb: PathBuf,
    pub host_deb: PathBuf,
    /// Everything SHA256SUMS lists.
    pub artifacts: Vec<PathBuf>,
}

pub fn dist_dir() -> PathBuf {
    target_dir().join("dist")
}

/// `cargo xtask dist`; built once per xtask run.
pub fn dist() -> Result<Dist> {
    static DIST: OnceLock<Dist> = OnceLock::new();
    if let Some(d) = DIST.get() {
        return Ok(d.clone());
    }
    let started = std::time::Instant::now();
    // dpkg-deb and sha256sum come with every Debian; file and python3 (its
    // zipfile module writes the Windows zip) may not.
    apt(&[
        ("file", "file"),
        ("python3", "python3"),
        ("x86_64-w64-mingw32-strip", "binutils-mingw-w64-x86-64"),
    ])?;
    let statics = build_static()?;
    let built_exe = crate::windows::build_host()?;
    let dir = dist_dir();
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("emptying {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let readme = readme_excerpt(
        &std::fs::read_to_string(root().join("README.md")).context("reading README.md")?,
    )?;
    let work = dir.join(".work");
    let mut artifacts = Vec::new();
    for (name, bin) in [("hoist-agent", &statics.agent), ("hoist-host", &statics.host)] {
        let docs = Docs::generate(name, bin, &work)?;
        let files = linux_files(name, bin, &docs, &readme);
        artifacts.push(archive(&dir, &format!("{name}-{VERSION}-x86_64-linux"), &files, false)?);
        artifacts.push(deb(&dir, name, bin, &docs, &readme)?);
    }
    let host_docs = Docs::generate("hoist-host", &statics.host, &work)?;
    // The test phases' build, without its debug info.
    let exe = work.join("hoist-host.exe");
    run(
        Command::new("x86_64-w64-mingw32-strip")
            .arg("--strip-debug")
            .arg(&built_exe)
            .arg("-o")
            .arg(&exe),
        "x86_64-w64-mingw32-strip hoist-host.exe",
    )?;
    let mut files = vec![
        File::copy(&exe, "hoist-host.exe", 0o755),
        File::bytes(readme.clone().into_bytes(), "README.md", 0o644),
    ];
    files.extend(
        host_docs.man.iter().map(|p| File::copy(p, &format!("man/{}", file_name(p)), 0o644)),
    );
    artifacts.push(archive(&dir, &format!("hoist-host-{VERSION}-x86_64-windows"), &files, true)?);
    std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    sha256sums(&dir, &artifacts)?;
    let d = Dist {
        agent_deb: dir.join(format!("hoist-agent_{VERSION}_amd64.deb")),
        host_deb: dir.join(format!("hoist-host_{VERSION}_amd64.deb")),
        dir,
        artifacts,
    };
    say(format!(
        "dist: {} in {} ({:.0?})",
        d.artifacts.iter().map(|p| file_name(p)).collect::<Vec<_>>().join(", "),
        d.dir.display(),
        started.elapsed()
    ));
    Ok(DIST.get_or_init(|| d).clone())
}

struct Statics {
    agent: PathBuf,
    host: PathBuf,
}

/// Both Linux binaries linked statically (`-C target-feature=+crt-static`),
/// checked with `file` and `ldd`.
fn build_static() -> Result<Statics> {
    let ebpf = build_ebpf()?;
    say("building static hoist-agent and hoist-host for release (crt-static)");
    let target_dir = target_dir().join("dist-build");
    run(
        Command::new("cargo")
            .args(["build", "--locked", "--release", "--target", TARGET])
            .args(["-p", "hoist-agent", "-p", "hoist-host", "--target-dir"])
            .arg(&target_dir)
            .current_dir(root())
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            // No debug info in what is shipped (the workspace keeps line
            // tables for its own release builds).
            .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
            .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo")
            .env("HOIST_EBPF_OBJECT", &ebpf),
        "cargo build (static, for release)",
    )?;
    let dir = target_dir.join(TARGET).join("release");
    let s = Statics { agent: dir.join("hoist-agent"), host: dir.join("hoist-host") };
    for bin in [&s.agent, &s.host] {
        check_static(bin)?;
    }
    Ok(s)
}

/// `file` must call it statically linked, and `ldd` must find nothing to load.
pub fn check_static(bin: &Path) -> Result<()> {
    let kind = output(Command::new("file").arg("-b").arg(bin), "file")?;
    ensure!(
        kind.contains("statically linked") || kind.contains("static-pie linked"),
        "{} is not static: file says {}",
        bin.display(),
        kind.trim()
    );
    // ldd fails on a static binary ("not a dynamic executable") or says
    // "statically linked"; anything with "=>" is a library it would load.
    let ldd = Command::new("ldd").arg(bin).output().context("starting ldd")?;
    let said = String::from_utf8_lossy(&ldd.stdout) + String::from_utf8_lossy(&ldd.stderr);
    ensure!(
        !said.contains("=>")
            && (said.contains("not a dynamic executable") || said.contains("statically linked")),
        "{} is not static: ldd says {}",
        bin.display(),
        said.trim()
    );
    Ok(())
}

/// The README's opening paragraphs and the operating sections.
pub fn readme_excerpt(readme: &str) -> Result<String> {
    let mut sections: Vec<(String, String)> = Vec::new();
    let mut head = String::new();
    for line in readme.lines() {
        if let Some(title) = line.strip_prefix("## ") {
            sections.push((title.trim().to_string(), String::new()));
        }
        let text = match sections.last_mut() {
            Some((_, text)) => text,
            None => &mut head,
        };
        text.push_str(line);
        text.push('\n');
    }
    let mut out = head;
    for want in README_SECTIONS {
        let Some((_, text)) = sections.iter().find(|(t, _)| t == want) else {
            bail!("README.md has no section \"## {want}\" for the release excerpt (dist.rs)");
        };
        out.push_str(text);
    }
    out.push_str("\nThe full README, ARCHITECTURE.md and the source: the project's repository.\n");
    Ok(out)
}

/// Completions and man pages of one binary, from its hidden subcommands.
struct Docs {
    /// (shell, script)
    completions: Vec<(&'static str, Vec<u8>)>,
    man: Vec<PathBuf>,
    version: String,
}

impl Docs {
    fn generate(name: &str, bin: &Path, work: &Path) -> Result<Docs> {
        let version = output(Command::new(bin).arg("--version"), &format!("{name} --version"))?;
        let version = version.trim().to_string();
        ensure!(
            version.starts_with(&format!("{name} {VERSION} (git ")),
            "{name} --version printed {version:?}"
        );
        let mut completions = Vec::new();
        for shell in ["bash", "zsh", "fish"] {
            let out = Command::new(bin)
                .args(["completions", shell])
                .output()
                .with_context(|| format!("starting {name} completions {shell}"))?;
            ensure!(
                out.status.success() && !out.stdout.is_empty(),
                "{name} completions {shell} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            completions.push((shell, out.stdout));
        }
        let man_dir = work.join(format!("man-{name}"));
        run(Command::new(bin).args(["man", "--dir"]).arg(&man_dir), &format!("{name} man --dir"))?;
        let mut man: Vec<PathBuf> = std::fs::read_dir(&man_dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "1"))
            .collect();
        man.sort();
        ensure!(man.iter().any(|p| file_name(p) == format!("{name}.1")), "no {name}.1 made");
        Ok(Docs { completions, man, version })
    }

    /// The file name a completion script gets in an archive.
    fn completion_name(name: &str, shell: &str) -> String {
        match shell {
            "bash" => format!("{name}.bash"),
            "zsh" => format!("_{name}"),
            _ => format!("{name}.fish"),
        }
    }

    /// Where a Debian package installs it (as net's docs::Shell says).
    fn completion_path(name: &str, shell: &str) -> String {
        match shell {
            "bash" => format!("usr/share/bash-completion/completions/{name}"),
            "zsh" => format!("usr/share/zsh/vendor-completions/_{name}"),
            _ => format!("usr/share/fish/vendor_completions.d/{name}.fish"),
        }
    }
}

/// One file of an archive or package: where from, where to, its mode.
#[derive(Clone)]
struct File {
    from: Source,
    to: String,
    mode: u32,
}

#[derive(Clone)]
enum Source {
    Path(PathBuf),
    Bytes(Vec<u8>),
}

impl File {
    fn copy(from: &Path, to: &str, mode: u32) -> File {
        File { from: Source::Path(from.to_path_buf()), to: to.into(), mode }
    }
    fn bytes(b: Vec<u8>, to: &str, mode: u32) -> File {
        File { from: Source::Bytes(b), to: to.into(), mode }
    }
    fn write_into(&self, dir: &Path) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dest = dir.join(&self.to);
        std::fs::create_dir_all(dest.parent().unwrap())?;
        match &self.from {
            Source::Path(p) => std::fs::copy(p, &dest)
                .map(|_| ())
                .with_context(|| format!("copying {} to {}", p.display(), dest.display()))?,
            Source::Bytes(b) => {
                std::fs::write(&dest, b).with_context(|| format!("writing {}", dest.display()))?
            }
        }
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(self.mode))?;
        Ok(())
    }
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap_or_default().to_string_lossy().into_owned()
}

fn packaging(rel: &str) -> PathBuf {
    root().join("packaging").join(rel)
}

/// A Linux archive's files: the binary, the unit and its /etc/default file,
/// completions, man pages, the README excerpt.
fn linux_files(name: &str, bin: &Path, docs: &Docs, readme: &str) -> Vec<File> {
    let mut files = vec![
        File::copy(bin, name, 0o755),
        File::copy(
            &packaging(&format!("systemd/{name}.service")),
            &format!("systemd/{name}.service"),
            0o644,
        ),
        File::copy(&packaging(&format!("default/{name}")), &format!("default/{name}"), 0o644),
        File::bytes(readme.as_bytes().to_vec(), "README.md", 0o644),
    ];
    for (shell, script) in &docs.completions {
        files.push(File::bytes(
            script.clone(),
            &format!("completions/{}", Docs::completion_name(name, shell)),
            0o644,
        ));
    }
    files.extend(docs.man.iter().map(|p| File::copy(p, &format!("man/{}", file_name(p)), 0o644)));
    files
}

/// Stages `files` in target/dist/<stem>/ with a SHA256SUMS of its own, then
/// packs the folder as <stem>.tar.gz (or .zip).
fn archive(dir: &Path, stem: &str, files: &[File], zip: bool) -> Result<PathBuf> {
    let tree = dir.join(stem);
    for f in files {
        f.write_into(&tree)?;
    }
    let names: Vec<PathBuf> = files.iter().map(|f| PathBuf::from(&f.to)).collect();
    sha256sums(&tree, &names)?;
    let out = if zip {
        let out = dir.join(format!("{stem}.zip"));
        run(
            Command::new("python3")
                .args(["-m", "zipfile", "-c"])
                .arg(&out)
                .arg(stem)
                .current_dir(dir),
            &format!("zipping {stem}"),
        )?;
        out
    } else {
        let out = dir.join(format!("{stem}.tar.gz"));
        run(
            Command::new("tar")
                .args(["--owner=0", "--group=0", "--numeric-owner", "-czf"])
                .arg(&out)
                .arg(stem)
                .current_dir(dir),
            &format!("packing {stem}.tar.gz"),
        )?;
        out
    };
    Ok(out)
}

/// `sha256sum` of `files` (relative to `dir`) into dir/SHA256SUMS.
fn sha256sums(dir: &Path, files: &[PathBuf]) -> Result<()> {
    let rel: Vec<PathBuf> =
        files.iter().map(|f| f.strip_prefix(dir).unwrap_or(f).to_path_buf()).collect();
    let sums = output(Command::new("sha256sum").args(&rel).current_dir(dir), "sha256sum")?;
    std::fs::write(dir.join("SHA256SUMS"), sums).context("writing SHA256SUMS")
}

/// hoist-agent_<ver>_amd64.deb or hoist-host_<ver>_amd64.deb.
fn deb(dir: &Path, name: &str, bin: &Path, docs: &Docs, readme: &str) -> Result<PathBuf> {
    let tree = dir.join(".work").join(format!("deb-{name}"));
    let mut files = vec![
        File::copy(bin, &format!("usr/bin/{name}"), 0o755),
        File::copy(
            &packaging(&format!("systemd/{name}.service")),
            &format!("usr/lib/systemd/system/{name}.service"),
            0o644,
        ),
        File::copy(&packaging(&format!("default/{name}")), &format!("etc/default/{name}"), 0o644),
        File::bytes(readme.as_bytes().to_vec(), &format!("usr/share/doc/{name}/README.md"), 0o644),
        File::bytes(
            copyright(name).into_bytes(),
            &format!("usr/share/doc/{name}/copyright"),
            0o644,
        ),
    ];
    for (shell, script) in &docs.completions {
        files.push(File::bytes(script.clone(), &Docs::completion_path(name, shell), 0o644));
    }
    for page in &docs.man {
        files.push(File::bytes(
            gzip(&std::fs::read(page)?)?,
            &format!("usr/share/man/man1/{}.gz", file_name(page)),
            0o644,
        ));
    }
    for f in &files {
        f.write_into(&tree)?;
    }
    let installed_kib: u64 = files
        .iter()
        .map(|f| std::fs::metadata(tree.join(&f.to)).map(|m| m.len().div_ceil(1024)).unwrap_or(0))
        .sum();
    let control = control(name, installed_kib, &docs.version);
    let scripts = [
        ("control", control, 0o644),
        ("conffiles", format!("/etc/default/{name}\n"), 0o644),
        ("postinst", maintainer_script(name, "postinst"), 0o755),
        ("prerm", maintainer_script(name, "prerm"), 0o755),
        ("postrm", maintainer_script(name, "postrm"), 0o755),
    ];
    for (file, text, mode) in scripts {
        File::bytes(text.into_bytes(), &format!("DEBIAN/{file}"), mode).write_into(&tree)?;
    }
    let out = dir.join(format!("{name}_{VERSION}_amd64.deb"));
    run(
        Command::new("dpkg-deb").args(["--root-owner-group", "--build"]).arg(&tree).arg(&out),
        &format!("dpkg-deb --build {name}"),
    )?;
    Ok(out)
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut child = Command::new("gzip")
        .args(["-9n"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting gzip")?;
    child.stdin.take().unwrap().write_all(bytes)?;
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "gzip failed");
    Ok(out.stdout)
}

fn control(name: &str, installed_kib: u64, version_line: &str) -> String {
    let (summary, long) = match name {
        "hoist-agent" => (
            "guest agent of hoist: forwards a VM's TCP listeners to the host",
            "Runs in the guest: eBPF programs in the kernel see every listen() and\n \
             every close of a listening socket, and the agent streams its table of\n \
             listeners to hoist-host over vsock. Start it with\n \
             systemctl enable --now hoist-agent (arguments: /etc/default/hoist-agent).",
        ),
        _ => (
            "host relay of hoist: mirrors a VM's TCP listeners on localhost",
            "Runs on the host: each listener the guest's hoist-agent reports answers\n \
             on this host's loopback at once, and every connection is carried into\n \
             the guest. Set --guest in /etc/default/hoist-host, then\n \
             systemctl enable --now hoist-host.",
        ),
    };
    format!(
        "Package: {name}\nVersion: {VERSION}\nArchitecture: amd64\nMaintainer: hoist developers <hoist@invalid>\n\
         Section: net\nPriority: optional\nInstalled-Size: {installed_kib}\n\
         Description: {summary}\n {long}\n .\n Built as: {version_line}.\n"
    )
}

/// The maintainer scripts: reload systemd's units when systemd runs this
/// system (not when dpkg installs into another root, DPKG_ROOT), stop and
/// disable the unit when the package is removed; nothing else, and never a
/// failure of their own.
fn maintainer_script(name: &str, which: &str) -> String {
    let unit = format!("{name}.service");
    let systemd = "[ -z \"${DPKG_ROOT:-}\" ] && [ -d /run/systemd/system ]";
    let body = match which {
        "postinst" => format!(
            "case \"$1\" in\n\
             configure|abort-upgrade|abort-deconfigure|abort-remove)\n\
             \x20   if {systemd}; then\n\
             \x20       systemctl daemon-reload || true\n\
             \x20       # An upgrade restarts a running agent on the new binary.\n\
             \x20       if [ -n \"${{2:-}}\" ]; then systemctl try-restart {unit} || true; fi\n\
             \x20   fi\n\
             \x20   ;;\n\
             esac\n"
        ),
        "prerm" => format!(
            "if [ \"$1\" = remove ] && [ -z \"${{DPKG_ROOT:-}}\" ]; then\n\
             \x20   # Offline too (systemctl disable edits links); the unit file is still here.\n\
             \x20   if [ -d /run/systemd/system ]; then systemctl stop {unit} || true; fi\n\
             \x20   if command -v systemctl >/dev/null; then systemctl disable {unit} >/dev/null 2>&1 || true; fi\n\
             fi\n"
        ),
        _ => format!(
            "case \"$1\" in\n\
             remove|purge)\n\
             \x20   if {systemd}; then systemctl daemon-reload || true; fi\n\
             \x20   ;;\n\
             esac\n"
        ),
    };
    format!("#!/bin/sh\n# {which} of {name}: see xtask/src/dist.rs.\nset -e\n{body}exit 0\n")
}

fn copyright(name: &str) -> String {
    format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: {name}\n\nFiles: *\nCopyright: the hoist developers\nLicense: MIT or Apache-2.0\n\
         \x20The full texts: /usr/share/common-licenses/Apache-2.0 and the MIT license\n\
         \x20(https://opensource.org/license/mit).\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_excerpt_has_the_operating_sections() {
        let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
        let text = readme_excerpt(&readme).unwrap();
        assert!(text.starts_with("# hoist\n"));
        for s in README_SECTIONS {
            assert!(text.contains(&format!("\n## {s}\n")), "{s}");
        }
        assert!(!text.contains("## Log stream"));
        assert!(readme_excerpt("# x\n## Security\n").is_err());
    }

    #[test]
    fn maintainer_scripts_are_valid_shell_and_touch_only_systemd() {
        for name in ["hoist-agent", "hoist-host"] {
            for which in ["postinst", "prerm", "postrm"] {
                let script = maintainer_script(name, which);
                let ok = Command::new("sh").args(["-n", "-c", &script]).status().unwrap();
                assert!(ok.success(), "{which}: {script}");
                for line in script.lines().filter(|l| !l.trim_start().starts_with('#')) {
                    if line.contains("systemctl") {
                        assert!(
                            line.contains(&format!("{name}.service"))
                                || line.contains("daemon-reload"),
                            "{line}"
                        );
                    }
                }
            }
        }
    }
}

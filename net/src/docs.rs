//! Shell completions and man pages, generated from a binary's clap
//! definition: both binaries have the hidden subcommands `completions
//! <shell>` and `man [--dir DIR]`, which `cargo xtask dist` calls to lay them
//! into the release artifacts and the Debian packages.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The shells completions are made for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    /// bash (bash-completion).
    Bash,
    /// zsh.
    Zsh,
    /// fish.
    Fish,
}

impl Shell {
    /// Every shell, in the order the artifacts list them.
    pub const ALL: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];
}

/// The hidden subcommands both binaries carry; flattened into their `Cmd`
/// enums.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum DocsCmd {
    /// Print a shell completion script (bash, zsh or fish) to stdout.
    #[command(hide = true)]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print the man page to stdout, or with --dir write it and one page per
    /// subcommand (NAME.1, NAME-SUB.1) there.
    #[command(hide = true)]
    Man {
        /// Write NAME.1 and NAME-SUB.1 into this folder instead.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// Runs a docs subcommand for the binary `cmd` (its clap `Command`).
pub fn run(docs: &DocsCmd, cmd: clap::Command) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match docs {
        DocsCmd::Completions { shell } => completions(cmd, *shell, &mut out),
        DocsCmd::Man { dir: None } => man(cmd, &mut out),
        DocsCmd::Man { dir: Some(dir) } => man_pages(cmd, dir).map(|_| ()),
    }
}

/// Runs a docs subcommand and exits: 0, or 1 with the error on stderr.
pub fn run_and_exit(docs: &DocsCmd, cmd: clap::Command) -> ! {
    let name = cmd.get_name().to_string();
    match run(docs, cmd) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("{name}: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Writes the completion script for `shell`.
pub fn completions(mut cmd: clap::Command, shell: Shell, out: &mut dyn Write) -> Result<()> {
    let name = cmd.get_name().to_string();
    let mut buf = Vec::new();
    match shell {
        Shell::Bash => {
            clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, &name, &mut buf)
        }
        Shell::Zsh => clap_complete::generate(clap_complete::Shell::Zsh, &mut cmd, &name, &mut buf),
        Shell::Fish => {
            clap_complete::generate(clap_complete::Shell::Fish, &mut cmd, &name, &mut buf)
        }
    }
    out.write_all(&buf).context("writing the completion script")
}

/// Writes the binary's own man page (section 1).
pub fn man(cmd: clap::Command, out: &mut dyn Write) -> Result<()> {
    clap_mangen::Man::new(cmd).render(out).context("writing the man page")
}

/// Writes the binary's man page and one per visible subcommand into `dir`;
/// returns the files written.
pub fn man_pages(cmd: clap::Command, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let before: std::collections::BTreeSet<PathBuf> = pages_in(dir)?;
    clap_mangen::generate_to(cmd, dir)
        .with_context(|| format!("writing man pages into {}", dir.display()))?;
    Ok(pages_in(dir)?.into_iter().filter(|p| !before.contains(p)).collect())
}

fn pages_in(dir: &Path) -> Result<std::collections::BTreeSet<PathBuf>> {
    Ok(std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "1"))
        .collect())
}

/// What a user can type to `cmd` (visible subcommands, their visible long
/// flags, recursively) that `text` does not mention: the tests' check that
/// completions and man pages cover the whole command line.
pub fn unmentioned(cmd: &clap::Command, text: &str) -> Vec<String> {
    let mut missing = Vec::new();
    let flags = |c: &clap::Command, missing: &mut Vec<String>| {
        for a in c.get_arguments().filter(|a| !a.is_hide_set()) {
            if let Some(long) = a.get_long() {
                if !mentions(text, long) {
                    missing.push(format!("{} --{long}", c.get_name()));
                }
            }
        }
    };
    flags(cmd, &mut missing);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if !mentions(text, sub.get_name()) {
            missing.push(format!("subcommand {}", sub.get_name()));
        }
        for m in unmentioned(sub, text) {
            if !missing.contains(&m) {
                missing.push(m);
            }
        }
    }
    missing
}

/// Whether `word` appears in `text` (man pages escape a flag's dashes as `\-`).
fn mentions(text: &str, word: &str) -> bool {
    text.contains(word) || text.contains(&word.replace('-', "\\-"))
}

/// The visible subcommands' names, for tests that want none forgotten.
pub fn subcommands(cmd: &clap::Command) -> Vec<String> {
    cmd.get_subcommands().filter(|s| !s.is_hide_set()).map(|s| s.get_name().to_string()).collect()
}

/// The checks each binary's tests run on its own command line: the version
/// line names the git commit; every shell's completions and the man pages
/// mention every visible subcommand and flag. Panics on a failure.
pub fn check_documents(cmd: impl Fn() -> clap::Command) {
    let name = cmd().get_name().to_string();
    let v = cmd().render_version();
    let want = format!("{name} {} (git ", env!("CARGO_PKG_VERSION"));
    assert!(v.starts_with(&want), "{v}");
    let commit = v.trim_end().trim_end_matches(')').rsplit("(git ").next().unwrap_or_default();
    assert!(
        commit == "unknown" || (commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{v}"
    );
    assert!(subcommands(&cmd()).contains(&"run".to_string()));
    for shell in Shell::ALL {
        let mut out = Vec::new();
        completions(cmd(), shell, &mut out).expect("completions");
        let text = String::from_utf8(out).expect("UTF-8 completions");
        assert!(text.contains(&name), "{shell:?}");
        assert_eq!(unmentioned(&cmd(), &text), Vec::<String>::new(), "{shell:?}");
    }
    let dir = std::env::temp_dir().join(format!("{name}-man-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let pages = man_pages(cmd(), &dir).expect("man pages");
    let names: Vec<String> = pages
        .iter()
        .map(|p| p.file_name().unwrap_or_default().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&format!("{name}.1")), "{names:?}");
    for sub in subcommands(&cmd()) {
        assert!(names.contains(&format!("{name}-{sub}.1")), "{sub}: {names:?}");
    }
    let all: String =
        pages.iter().map(|p| std::fs::read_to_string(p).unwrap_or_default()).collect();
    assert!(all.starts_with(".ie") || all.contains(".TH"), "roff");
    assert_eq!(unmentioned(&cmd(), &all), Vec::<String>::new());
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, CommandFactory, Parser, Subcommand};

    #[derive(Parser)]
    #[command(name = "demo", version)]
    struct Cli {
        #[command(subcommand)]
        cmd: Option<Cmd>,
        #[command(flatten)]
        run: RunArgs,
    }
    #[derive(Subcommand)]
    enum Cmd {
        /// Run it.
        Run(RunArgs),
        /// Check it.
        Check {
            #[arg(long)]
            deep_scan: bool,
        },
        #[command(flatten)]
        Docs(DocsCmd),
    }
    #[derive(Args)]
    struct RunArgs {
        #[arg(long)]
        listen_address: Option<String>,
    }

    /// Every visible subcommand and flag is in each shell's script and the
    /// man pages; the hidden docs subcommands are in none of the pages.
    #[test]
    fn completions_and_man_pages_cover_the_command_line() {
        for shell in Shell::ALL {
            let mut out = Vec::new();
            completions(Cli::command(), shell, &mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            assert_eq!(unmentioned(&Cli::command(), &text), Vec::<String>::new(), "{shell:?}");
        }
        let dir = std::env::temp_dir().join(format!("hoist-docs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let pages = man_pages(Cli::command(), &dir).unwrap();
        let names: Vec<String> =
            pages.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["demo-check.1", "demo-run.1", "demo.1"]);
        let all: String = pages.iter().map(|p| std::fs::read_to_string(p).unwrap()).collect();
        assert_eq!(unmentioned(&Cli::command(), &all), Vec::<String>::new());
        assert!(!all.contains("completions"), "hidden subcommands stay out of the man pages");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_forgotten_flag_is_noticed() {
        let missing = unmentioned(&Cli::command(), "demo run check --listen-address");
        assert_eq!(missing, ["check --deep-scan"]);
        assert_eq!(subcommands(&Cli::command()), ["run", "check"]);
    }
}

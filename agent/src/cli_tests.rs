//! The command line's generated documents: the version line carries the
//! git commit, and the completions of every shell and the man pages mention
//! every visible subcommand and flag (including ones added later: the check
//! walks the clap definition itself).

use super::Cli;
use clap::CommandFactory;
use hoist_net::docs::{completions, man_pages, subcommands, unmentioned, Shell};

#[test]
fn the_version_names_the_commit() {
    let v = Cli::command().render_version();
    let want = format!("hoist-agent {} (git ", env!("CARGO_PKG_VERSION"));
    assert!(v.starts_with(&want), "{v}");
    let commit = v.trim_end().trim_end_matches(')').rsplit("(git ").next().unwrap();
    assert!(
        commit == "unknown" || (commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{v}"
    );
}

#[test]
fn completions_mention_every_subcommand_and_flag() {
    assert!(subcommands(&Cli::command()).contains(&"run".to_string()));
    for shell in Shell::ALL {
        let mut out = Vec::new();
        completions(Cli::command(), shell, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("hoist-agent"), "{shell:?}");
        assert_eq!(unmentioned(&Cli::command(), &text), Vec::<String>::new(), "{shell:?}");
    }
}

#[test]
fn man_pages_mention_every_subcommand_and_flag() {
    let dir = std::env::temp_dir().join(format!("hoist-agent-man-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let pages = man_pages(Cli::command(), &dir).unwrap();
    let names: Vec<String> =
        pages.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert!(names.contains(&"hoist-agent.1".to_string()), "{names:?}");
    for sub in subcommands(&Cli::command()) {
        assert!(names.contains(&format!("hoist-agent-{sub}.1")), "{sub}: {names:?}");
    }
    let all: String = pages.iter().map(|p| std::fs::read_to_string(p).unwrap()).collect();
    assert!(all.starts_with(".ie") || all.contains(".TH"), "roff");
    assert_eq!(unmentioned(&Cli::command(), &all), Vec::<String>::new());
    std::fs::remove_dir_all(&dir).unwrap();
}

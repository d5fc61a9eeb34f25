//! Log set-up shared by both binaries: `RUST_LOG`-style filtering (default
//! `info`), human-readable lines or one JSON object per line. Records from the
//! `log` crate (aya-log's eBPF-side messages) are bridged in. Colours only
//! on a terminal, and never with `NO_COLOR` set (https://no-color.org).

use anyhow::{anyhow, Result};
use tracing_subscriber::EnvFilter;

/// How log lines are printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, fields at the top level.
    Json,
}

/// Installs the global subscriber; logs go to stderr.
pub fn init(format: LogFormat) -> Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(colours(&std::io::stderr())).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    }
    .map_err(|e| anyhow!("installing the logger: {e}"))
}

/// Installs the global subscriber writing to the end of `path` (created if
/// missing, never truncated), without terminal colours.
pub fn init_file(format: LogFormat, path: &std::path::Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow!("creating the log file's folder {}: {e}", dir.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| anyhow!("opening the log file {}: {e}", path.display()))?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file));
    match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    }
    .map_err(|e| anyhow!("installing the logger: {e}"))
}

/// Whether text lines on `out` get colours: only on a terminal, and not when
/// `NO_COLOR` is set to anything but the empty string.
pub fn colours(out: &impl std::io::IsTerminal) -> bool {
    colours_for(out.is_terminal(), std::env::var_os("NO_COLOR").as_deref())
}

fn colours_for(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::colours_for;
    use std::ffi::OsStr;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        let cases: &[(bool, Option<&str>, bool)] = &[
            (true, None, true),
            (true, Some(""), true),
            (true, Some("1"), false),
            (true, Some("0"), false),
            (false, None, false),
            (false, Some("1"), false),
        ];
        for &(terminal, no_color, want) in cases {
            assert_eq!(
                colours_for(terminal, no_color.map(OsStr::new)),
                want,
                "{terminal} {no_color:?}"
            );
        }
    }
}

//! `hoist-host install` / `hoist-host uninstall` (Windows): start the relay
//! at the user's logon, without admin. The current user's
//! `HKCU\Software\Microsoft\Windows\CurrentVersion\Run` key gets a value
//! `hoist-host` holding the command line `"<exe>" run --guest hvsock:wsl:1023
//! --log-file <%LOCALAPPDATA%\hoist\hoist-host.log> [more run options]`;
//! Windows runs it at each logon of that user. Uninstall deletes the value.
//! (A scheduled task at logon would need admin to create.)
//!
//! The command line is built here, quoted the way Windows splits command
//! lines (`CommandLineToArgvW`, the C runtime), as pure functions tested on
//! every OS; the registry calls are net's (`sys/windows.rs`).

use std::path::{Path, PathBuf};

/// The current user's logon programs, under HKEY_CURRENT_USER.
pub const RUN_KEY: &str = r"Software\Microsoft\Windows\CurrentVersion\Run";
/// The value `install` writes under [`RUN_KEY`].
pub const RUN_VALUE: &str = "hoist-host";
/// The agent in the running WSL VM, at its default vsock port.
pub const DEFAULT_GUEST: &str = "hvsock:wsl:1023";

/// Quotes one argument so that Windows' command-line splitting gives it
/// back unchanged: as is when it has no space, tab or quote; otherwise in
/// quotes, with a quote escaped and the backslashes before a quote (or the
/// closing one) doubled. Pure.
pub fn quote_arg(arg: &str) -> String {
    if !arg.is_empty() && !arg.contains([' ', '\t', '"', '\n']) {
        return arg.to_string();
    }
    let mut out = String::from('"');
    let mut backslashes = 0;
    for c in arg.chars() {
        match c {
            '\\' => backslashes += 1,
            '"' => {
                out.extend(std::iter::repeat_n('\\', backslashes * 2 + 1));
                out.push('"');
                backslashes = 0;
            }
            c => {
                out.extend(std::iter::repeat_n('\\', backslashes));
                out.push(c);
                backslashes = 0;
            }
        }
    }
    out.extend(std::iter::repeat_n('\\', backslashes * 2));
    out.push('"');
    out
}

/// The arguments `hoist-host run` gets at logon. Pure.
pub fn run_args(guest: &str, log_file: &str, extra: &[String]) -> Vec<String> {
    let mut args: Vec<String> =
        ["run", "--guest", guest, "--log-file", log_file].map(String::from).into();
    args.extend(extra.iter().cloned());
    args
}

/// The command line the Run value holds: the executable, always quoted
/// (Windows requires it when the path has spaces), then [`run_args`]. Pure.
pub fn command_line(exe: &str, args: &[String]) -> String {
    let mut line = format!("\"{exe}\"");
    for a in args {
        line.push(' ');
        line.push_str(&quote_arg(a));
    }
    line
}

/// The default log file under `%LOCALAPPDATA%`.
pub fn default_log_file(local_app_data: &Path) -> PathBuf {
    local_app_data.join("hoist").join("hoist-host.log")
}

/// Writes the logon entry for `exe` with `args` (from [`run_args`]), making
/// the log file's folder; returns what to tell the user.
#[cfg(windows)]
pub fn install(exe: &Path, args: &[String], log_file: &Path) -> anyhow::Result<String> {
    use anyhow::Context;
    use hoist_net::{registry_set_string, RegistryRoot};
    if let Some(dir) = log_file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let line = command_line(&exe.display().to_string(), args);
    registry_set_string(RegistryRoot::CurrentUser, RUN_KEY, RUN_VALUE, &line)
        .with_context(|| format!("writing the value {RUN_VALUE} under HKCU\\{RUN_KEY}"))?;
    Ok(format!(
        "hoist-host now starts at your logon (value {RUN_VALUE} under HKCU\\{RUN_KEY}):\n  {line}\n\
         It logs to {}.\n\
         To start it now, run that line (started on its own, it lets go of its console window).\n\
         The entry names this executable where it is now: install again after moving it.",
        log_file.display()
    ))
}

/// Removes the logon entry; returns what to tell the user.
#[cfg(windows)]
pub fn uninstall() -> anyhow::Result<String> {
    use anyhow::Context;
    use hoist_net::{registry_delete_value, RegistryRoot};
    let removed = registry_delete_value(RegistryRoot::CurrentUser, RUN_KEY, RUN_VALUE)
        .with_context(|| format!("deleting the value {RUN_VALUE} under HKCU\\{RUN_KEY}"))?;
    Ok(if removed {
        format!(
            "removed the logon entry (value {RUN_VALUE} under HKCU\\{RUN_KEY}).\n\
             A hoist-host that is running keeps running until you stop it: Stop-Process -Name hoist-host"
        )
    } else {
        format!("no logon entry to remove (no value {RUN_VALUE} under HKCU\\{RUN_KEY})")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Windows' command-line splitting (the C runtime's rules for arguments
    /// after the program name), written from Microsoft's documentation, to
    /// read back what `quote_arg` wrote.
    fn split(line: &str) -> Vec<String> {
        let mut args = Vec::new();
        let mut cur = String::new();
        let (mut quoted, mut any) = (false, false);
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    let mut n = 1;
                    while chars.peek() == Some(&'\\') {
                        chars.next();
                        n += 1;
                    }
                    if chars.peek() == Some(&'"') {
                        cur.extend(std::iter::repeat_n('\\', n / 2));
                        if n % 2 == 1 {
                            chars.next();
                            cur.push('"');
                        }
                    } else {
                        cur.extend(std::iter::repeat_n('\\', n));
                    }
                    any = true;
                }
                '"' => {
                    quoted = !quoted;
                    any = true;
                }
                ' ' | '\t' if !quoted => {
                    if any {
                        args.push(std::mem::take(&mut cur));
                        any = false;
                    }
                }
                c => {
                    cur.push(c);
                    any = true;
                }
            }
        }
        if any {
            args.push(cur);
        }
        args
    }

    #[test]
    fn arguments_are_quoted_so_windows_splits_them_back() {
        let cases: &[(&str, &str)] = &[
            ("run", "run"),
            ("hvsock:wsl:1023", "hvsock:wsl:1023"),
            (
                r"C:\Users\ann\AppData\Local\hoist\hoist-host.log",
                r"C:\Users\ann\AppData\Local\hoist\hoist-host.log",
            ),
            (
                r"C:\Users\Ann Lee\AppData\Local\hoist\hoist-host.log",
                r#""C:\Users\Ann Lee\AppData\Local\hoist\hoist-host.log""#,
            ),
            (r"C:\my dir\", r#""C:\my dir\\""#),
            (r#"say "hi""#, r#""say \"hi\"""#),
            (r#"a\"b"#, r#""a\\\"b""#),
            ("", r#""""#),
            ("tab\there", "\"tab\there\""),
        ];
        for (arg, want) in cases {
            assert_eq!(quote_arg(arg), *want, "{arg:?}");
            assert_eq!(split(&quote_arg(arg)), vec![arg.to_string()], "{arg:?} reads back");
        }
    }

    #[test]
    fn the_logon_command_runs_the_relay_on_wsl_with_a_log_file() {
        let log = default_log_file(Path::new(r"C:\Users\Ann Lee\AppData\Local"));
        let log = log.display().to_string();
        let extra = vec!["--token-file".to_string(), r"C:\Users\Ann Lee\hoist token".to_string()];
        let args = run_args(DEFAULT_GUEST, &log, &extra);
        let line = command_line(r"C:\Program Files\hoist\hoist-host.exe", &args);
        if cfg!(windows) {
            assert_eq!(
                line,
                r#""C:\Program Files\hoist\hoist-host.exe" run --guest hvsock:wsl:1023 --log-file "C:\Users\Ann Lee\AppData\Local\hoist\hoist-host.log" --token-file "C:\Users\Ann Lee\hoist token""#
            );
        }
        let mut want = vec![r"C:\Program Files\hoist\hoist-host.exe".to_string()];
        want.extend(args);
        assert_eq!(split(&line), want);
        assert_eq!(want[1..4], ["run", "--guest", "hvsock:wsl:1023"]);
    }
}

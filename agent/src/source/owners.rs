//! The snapshot's second half: which process owns a socket, from /proc
//! (`/proc/<pid>/fd/* -> socket:[inode]`). Only the inodes asked for;
//! processes that vanish mid-scan are skipped.

use std::collections::HashMap;

/// Maps socket inodes to their owning process (pid, comm).
pub fn owners(inodes: &[u64]) -> HashMap<u64, (u32, String)> {
    let mut found = HashMap::new();
    if inodes.is_empty() {
        return found;
    }
    let Ok(procs) = std::fs::read_dir("/proc") else { return found };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else { continue };
            let Some(inode) = target.to_str().and_then(socket_inode) else { continue };
            if inodes.contains(&inode) && !found.contains_key(&inode) {
                let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
                found.insert(inode, (pid, comm.trim_end().to_string()));
            }
        }
        if found.len() == inodes.len() {
            break;
        }
    }
    found
}

/// The inode of a `socket:[N]` link target.
fn socket_inode(target: &str) -> Option<u64> {
    target.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_links_parse() {
        let cases = [
            ("socket:[123]", Some(123)),
            ("pipe:[5]", None),
            ("socket:[x]", None),
            ("/dev/null", None),
        ];
        for (t, want) in cases {
            assert_eq!(socket_inode(t), want, "{t}");
        }
    }

    #[test]
    fn finds_its_own_socket() {
        use std::os::unix::fs::MetadataExt;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let link =
            std::fs::read_link(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&l)))
                .unwrap();
        let inode = socket_inode(link.to_str().unwrap()).unwrap();
        let got = owners(&[inode]);
        assert_eq!(got.get(&inode).map(|o| o.0), Some(std::process::id()));
        let _ = std::fs::metadata("/proc/self").unwrap().ino();
    }
}

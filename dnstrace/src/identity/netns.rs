//! Netns cookies (what the kernel programs report) to inodes (what `lsns`, `ip netns`,
//! `/proc/PID/ns/net` and the container runtime show). The kernel has no call from one to
//! the other, so each netns found through `/proc/*/ns/net` and `/run/netns/*` is entered
//! once, by a thread of its own, to read the cookie of a socket made there.
use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// Where named netns are bind-mounted (`ip netns`, CNI's `cni-…`).
pub const NAMED_NETNS: &str = "/run/netns";

/// One netns found on the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// A file that holds it open: `/proc/PID/ns/net` or `/run/netns/NAME`.
    pub path: PathBuf,
    /// A process in it, the lowest pid (a pod's is its sandbox's `pause`), if any.
    pub pid: Option<u32>,
}

/// Every netns with a process in it or a name: inode → where it was found.
pub fn scan(proc_root: &Path) -> HashMap<u64, Found> {
    let mut found: HashMap<u64, Found> = HashMap::new();
    let mut pids: Vec<u32> = fs::read_dir(proc_root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    for pid in pids {
        let path = proc_root.join(pid.to_string()).join("ns/net");
        // A process that exited, or a kernel thread: nothing to learn.
        if let Ok(m) = fs::metadata(&path) {
            found.entry(m.ino()).or_insert(Found {
                path,
                pid: Some(pid),
            });
        }
    }
    for entry in fs::read_dir(NAMED_NETNS).into_iter().flatten().flatten() {
        let path = entry.path();
        if let Ok(m) = fs::metadata(&path) {
            found.entry(m.ino()).or_insert(Found { path, pid: None });
        }
    }
    found
}

/// The inode of the netns a file refers to (`/proc/PID/ns/net`, a bind mount of one).
pub fn inode(path: &Path) -> Option<u64> {
    fs::metadata(path).ok().map(|m| m.ino())
}

/// The cookie of each netns in `paths` (inode, path), entered from a short-lived thread so
/// that no other thread changes netns. Those it cannot enter (gone, no CAP_SYS_ADMIN)
/// are left out.
pub fn cookies(paths: Vec<(u64, PathBuf)>) -> Vec<(u64, u64)> {
    if paths.is_empty() {
        return Vec::new();
    }
    std::thread::Builder::new()
        .name("dnstrace-netns".into())
        .spawn(move || {
            paths
                .into_iter()
                .filter_map(|(ino, path)| {
                    let file = fs::File::open(&path).ok()?;
                    rustix::thread::move_into_link_name_space(
                        std::os::fd::AsFd::as_fd(&file),
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )
                    .ok()?;
                    let cookie = socket_cookie()?;
                    Some((ino, cookie))
                })
                .collect()
        })
        .ok()
        .and_then(|t| t.join().ok())
        .unwrap_or_default()
}

/// SO_NETNS_COOKIE of a socket made in the calling thread's netns (Linux 5.14+). The
/// socket is never bound: it takes no port in a netns that is not ours, and needs no
/// address (a netns whose loopback is down has no 127.0.0.1).
fn socket_cookie() -> Option<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let sock = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::DGRAM,
        None,
    )
    .ok()?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    use std::os::fd::AsRawFd as _;
    // SAFETY: valid fd, valid out pointer and length.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    (rc == 0 && cookie != 0).then_some(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our own netns: found through /proc/self, and entering it gives our own cookie.
    #[test]
    fn own_netns_inode_and_cookie() {
        let own = inode(Path::new("/proc/self/ns/net")).expect("/proc/self/ns/net");
        let found = scan(Path::new("/proc"));
        let me = &found[&own];
        assert!(me.pid.is_some(), "{me:?}");
        // The capture's own reading (a bound socket), to compare with.
        let cookie = crate::capture::own_netns_cookie();
        if cookie == 0 {
            eprintln!("SKIPPED: SO_NETNS_COOKIE needs Linux 5.14");
            return;
        }
        assert_eq!(socket_cookie(), Some(cookie));
        match cookies(vec![(own, me.path.clone())]).as_slice() {
            [(ino, c)] => assert_eq!((*ino, *c), (own, cookie)),
            // setns into even our own netns needs CAP_SYS_ADMIN.
            [] => eprintln!("SKIPPED: cannot enter a netns (not root)"),
            other => panic!("{other:?}"),
        }
    }
}

//! The cgroup v2 root the socket hop attaches to, proven to be the root.
//!
//! A cgroup_skb program sees the sockets of its cgroup and the cgroups below
//! it. In a cgroup namespace of its own (a container that is not privileged,
//! e.g. a DaemonSet with capabilities), every cgroup2 mount dnstrace sees or
//! makes shows only the namespace's subtree: attached there, the socket hop
//! would trace that subtree and nothing else, without a word. So each place
//! is checked on the open directory itself (cgroup2 by its statfs magic, and
//! the hierarchy's root because the kernel gives every cgroup but the root a
//! `cgroup.events` file), whichever way it was found:
//! 1. our own cgroup2 mounts;
//! 2. when pid 1 is in another cgroup namespace (or we cannot tell), pid 1's
//!    cgroup2 mounts through `/proc/1/root` (with hostPID, pid 1 is the
//!    host's init);
//! 3. cgroup2 mounted briefly on a temporary folder (e.g. under
//!    `ip netns exec`, which remounts /sys without it).
//!
//! When none of them is the root, dnstrace refuses to start.

use std::{
    fs::File,
    io,
    path::{Path, PathBuf},
};

use rustix::{
    fs::{AtFlags, FileType},
    mount::{MountFlags, UnmountFlags},
};

use super::CaptureError;

const CGROUP2_SUPER_MAGIC: u64 = libc::CGROUP2_SUPER_MAGIC as u64;
/// Where pid 1's mounts are seen from here.
const PID1_ROOT: &str = "/proc/1/root";

/// Opens the cgroup v2 root; returns it and how to name it (the path it was
/// opened by).
pub fn open_cgroup2_root() -> Result<(File, String), CaptureError> {
    let own = read_ns("/proc/self/ns/cgroup");
    let pid1 = read_ns("/proc/1/ns/cgroup");
    let mut tried = Vec::new();
    let own_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for path in cgroup2_mount_points(&own_mounts) {
        match open_root(&path) {
            Ok(dir) => return Ok((dir, path.display().to_string())),
            Err(why) => tried.push(format!("{}: {why}", path.display())),
        }
    }
    // Without cgroup namespaces (own unreadable) pid 1 sees what we see.
    let other_ns = match (&own, &pid1) {
        (Ok(own), Ok(pid1)) => own != pid1,
        (Ok(_), Err(_)) => true,
        (Err(_), _) => false,
    };
    if other_ns {
        let mut points = std::fs::read_to_string("/proc/1/mountinfo")
            .map(|m| cgroup2_mount_points(&m))
            .unwrap_or_default();
        if points.is_empty() {
            points.push(PathBuf::from("/sys/fs/cgroup"));
        }
        for point in points {
            let path = Path::new(PID1_ROOT).join(point.strip_prefix("/").unwrap_or(&point));
            match open_root(&path) {
                Ok(dir) => {
                    log::info!(
                        "cgroup namespace {} differs from pid 1's {}: the socket hop attaches at the host's cgroup root {}",
                        own.as_deref().unwrap_or("?"),
                        pid1.as_deref().unwrap_or("(unreadable)"),
                        path.display()
                    );
                    return Ok((dir, format!("the host's cgroup root {}", path.display())));
                }
                Err(why) => tried.push(format!("{}: {why}", path.display())),
            }
        }
    }
    match mount_briefly().and_then(|dir| check_root(dir).map_err(|why| why.to_string())) {
        Ok(dir) => return Ok((dir, "cgroup2 root".to_owned())),
        Err(why) => tried.push(format!("a cgroup2 mount of its own: {why}")),
    }
    Err(CaptureError::NoCgroupRoot {
        namespaces: describe_namespaces(&own, &pid1),
        tried: tried.join(", "),
    })
}

/// `cgroup:[4026531835]`, as /proc/PID/ns/cgroup reads.
fn read_ns(link: &str) -> io::Result<String> {
    std::fs::read_link(link).map(|p| p.display().to_string())
}

/// Why a directory is not the root of the cgroup v2 hierarchy.
#[derive(Debug, PartialEq, Eq)]
enum NotRoot {
    NotCgroup2,
    /// A cgroup below the root: the root of a cgroup namespace, or a bind mount.
    Subtree,
    Io(String),
}

impl std::fmt::Display for NotRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotCgroup2 => f.write_str("not cgroup2"),
            Self::Subtree => f.write_str("below the root (a cgroup namespace's subtree)"),
            Self::Io(e) => f.write_str(e),
        }
    }
}

fn open_root(path: &Path) -> Result<File, String> {
    let dir = File::open(path).map_err(|e| explain_open(&e))?;
    check_root(dir).map_err(|why| why.to_string())
}

fn explain_open(e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::PermissionDenied {
        // /proc/1/root: ptrace access to pid 1, which has capabilities we lack.
        "permission denied (CAP_SYS_PTRACE missing?)".to_owned()
    } else {
        short(e)
    }
}

/// An io error without the "(os error N)" tail, in lower case.
fn short(e: &io::Error) -> String {
    let text = e.to_string();
    let text = text.split(" (os error").next().unwrap_or_default();
    let mut chars = text.chars();
    chars
        .next()
        .map(|c| c.to_lowercase().chain(chars).collect())
        .unwrap_or_default()
}

/// `dir` if it is the cgroup v2 root.
fn check_root(dir: File) -> Result<File, NotRoot> {
    let fs = rustix::fs::fstatfs(&dir).map_err(|e| NotRoot::Io(e.to_string()))?;
    if fs.f_type as u64 != CGROUP2_SUPER_MAGIC {
        return Err(NotRoot::NotCgroup2);
    }
    // The kernel creates cgroup.events in every cgroup except the root
    // (CFTYPE_NOT_ON_ROOT); a cgroup namespace's root is no exception.
    match rustix::fs::statat(&dir, "cgroup.events", AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {
            Err(NotRoot::Subtree)
        }
        Ok(_) => Ok(dir),
        Err(rustix::io::Errno::NOENT) => Ok(dir),
        Err(e) => Err(NotRoot::Io(format!("checking cgroup.events: {e}"))),
    }
}

/// Mounts cgroup2 on a temporary folder, opens it and unmounts it again at
/// once: the open directory keeps the cgroup, and no mount is left behind.
/// In a cgroup namespace this shows the namespace's root, not the host's.
fn mount_briefly() -> Result<File, String> {
    // Unique even for several dnstraces that are each pid 1 of a pid namespace.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = std::env::temp_dir().join(format!("dnstrace-cgroup2-{}-{nanos}", std::process::id()));
    std::fs::create_dir(&tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
    let mounted = rustix::mount::mount("cgroup2", &tmp, "cgroup2", MountFlags::empty(), None);
    let result = match mounted {
        Err(e) => Err(format!(
            "mounting cgroup2 failed: {} (CAP_SYS_ADMIN missing?)",
            short(&e.into())
        )),
        Ok(()) => {
            let dir = File::open(&tmp).map_err(|e| format!("opening the mount: {}", short(&e)));
            let _ = rustix::mount::unmount(&tmp, UnmountFlags::DETACH);
            dir
        }
    };
    let _ = std::fs::remove_dir(&tmp);
    result
}

fn describe_namespaces(own: &io::Result<String>, pid1: &io::Result<String>) -> String {
    match (own, pid1) {
        (Err(e), _) => format!("its cgroup namespace cannot be read ({})", short(e)),
        (Ok(own), Ok(pid1)) if own == pid1 => format!(
            "it shares cgroup namespace {own} with pid 1, which is then not the host's init (no hostPID?)"
        ),
        (Ok(own), Ok(pid1)) => format!("it is in cgroup namespace {own}, pid 1 in {pid1}"),
        (Ok(own), Err(e)) => format!(
            "it is in cgroup namespace {own} and pid 1's cannot be read ({}: no hostPID, or CAP_SYS_PTRACE missing)",
            short(e)
        ),
    }
}

/// Mount points of the cgroup2 mounts in a mountinfo text, in mount order,
/// each once.
fn cgroup2_mount_points(mountinfo: &str) -> Vec<PathBuf> {
    let mut points: Vec<PathBuf> = Vec::new();
    for line in mountinfo.lines() {
        // id parent major:minor root mount-point options [optional…] - fstype source …
        let Some((head, tail)) = line.split_once(" - ") else {
            continue;
        };
        if tail.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        let Some(point) = head.split_whitespace().nth(4) else {
            continue;
        };
        let point = PathBuf::from(unescape(point));
        if !points.contains(&point) {
            points.push(point);
        }
    }
    points
}

/// Undoes the kernel's octal escapes (`\040` for a space) in mountinfo paths.
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) if b[i] == b'\\' => {
                out.push((d[0] - b'0') << 6 | (d[1] - b'0') << 3 | (d[2] - b'0'));
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_mount_points_in_mountinfo() {
        let info = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
42 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 none rw
50 23 0:38 /.. /mnt/with\\040space rw - cgroup2 cgroup2 rw
60 23 0:40 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
";
        assert_eq!(
            cgroup2_mount_points(info),
            vec![
                PathBuf::from("/sys/fs/cgroup/unified"),
                PathBuf::from("/mnt/with space")
            ]
        );
        assert!(cgroup2_mount_points("garbage\n\n1 2 3 - cgroup2").is_empty());
    }

    #[test]
    fn unescape_keeps_what_is_not_an_escape() {
        assert_eq!(unescape("a\\011b\\\\c\\8"), "a\tb\\\\c\\8");
    }

    #[test]
    fn a_folder_that_is_not_cgroup2_is_refused() {
        let dir = File::open(std::env::temp_dir()).unwrap();
        assert_eq!(check_root(dir).unwrap_err(), NotRoot::NotCgroup2);
    }

    #[test]
    fn the_reason_for_refusing_names_the_namespaces() {
        let own: io::Result<String> = Ok("cgroup:[7]".into());
        let denied = || Err(io::Error::from(io::ErrorKind::PermissionDenied));
        assert!(describe_namespaces(&own, &denied()).contains("CAP_SYS_PTRACE"));
        assert!(describe_namespaces(&own, &Ok("cgroup:[7]".into())).contains("hostPID"));
        assert!(
            describe_namespaces(&own, &Ok("cgroup:[8]".into())).contains("pid 1 in cgroup:[8]")
        );
    }
}

//! Opens every file dnstrace writes: the pcapng file, the log and the ready file.
//!
//! dnstrace runs as root, and users point it at shared folders such as /tmp, where
//! anyone can create a name first: a symlink to /etc/shadow, a FIFO that blocks the
//! open for ever, or a file the other user can read. So every open here
//! - walks the path one folder at a time, without following a symlink that someone
//!   other than us (or the folder's owner) planted in a folder others can write to,
//!   the rule of the kernel's `fs.protected_symlinks`, which is off on many nodes;
//! - opens the file itself with `O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK`, creating it
//!   0600, and decides on what it got (fstat), never on a name looked up before;
//! - refuses a file, FIFO or device that another user owns in such a folder, and a
//!   hard-linked file there;
//! - writes to a FIFO or a device only when the user named it (`--pcap /dev/fd/3`,
//!   `--pcap fifo` for `wireshark -k -i fifo`), and a FIFO only once it has a reader;
//! - truncates an existing file only after all of that.
//!
//! The default log file is held to more: a plain file of ours, in a folder of ours
//! that not everyone can write to ([`default_log_path`]). (Group-writable is fine: with
//! a umask of 002 a user's folders are writable by their own private group.)
use std::{
    ffi::OsStr,
    fs::File,
    os::fd::OwnedFd,
    path::{Component, Path, PathBuf},
};

use rustix::{
    fs::{AtFlags, CWD, FileType, Mode, OFlags},
    io::Errno,
};

/// What is being opened, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Named on the command line and rewritten from the start (pcapng, ready file).
    Named,
    /// Named on the command line and appended to (`--log-file`).
    NamedLog,
    /// The default log file: only a plain file of ours, in a folder of ours not open to all.
    DefaultLog,
}

impl Purpose {
    fn named(self) -> bool {
        self != Self::DefaultLog
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutFileError {
    /// The path exists as something dnstrace must not write to.
    #[error("refused: {what}; {fix}")]
    Refused { what: String, fix: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl From<Errno> for OutFileError {
    fn from(e: Errno) -> Self {
        Self::Io(e.into())
    }
}

impl From<OutFileError> for std::io::Error {
    fn from(e: OutFileError) -> Self {
        match e {
            OutFileError::Io(e) => e,
            refused => Self::other(refused),
        }
    }
}

fn refused(what: String, fix: impl Into<String>) -> OutFileError {
    OutFileError::Refused {
        what,
        fix: fix.into(),
    }
}

/// What fstat says, reduced to what the rules look at.
#[derive(Clone, Copy, Debug)]
struct Info {
    kind: FileType,
    uid: u32,
    mode: u32,
    nlink: u64,
}

impl Info {
    #[expect(clippy::unnecessary_cast, reason = "st_nlink is u32 on some targets")]
    fn of(st: &rustix::fs::Stat) -> Self {
        Self {
            kind: FileType::from_raw_mode(st.st_mode),
            uid: st.st_uid,
            mode: st.st_mode,
            nlink: st.st_nlink as u64,
        }
    }

    /// A folder anyone may create names in, like /tmp.
    fn shared(&self) -> bool {
        self.mode & 0o002 != 0
    }
}

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

fn kind_name(kind: FileType) -> &'static str {
    match kind {
        FileType::RegularFile => "a file",
        FileType::Directory => "a folder",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO (named pipe)",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Unknown => "an unknown kind of file",
    }
}

const SHARED_FIX: &str =
    "remove it if it is not yours, or write to a folder that only you can write to";

/// Whether a symlink with `link`'s owner may be followed in folder `dir`: the rule of
/// `fs.protected_symlinks`.
fn check_link(path: &Path, dir: &Info, link: &Info) -> Result<(), OutFileError> {
    let me = euid();
    if !dir.shared() || link.uid == me || link.uid == dir.uid {
        return Ok(());
    }
    Err(refused(
        format!(
            "{} is a symbolic link owned by uid {} in a folder that other users can write to, \
             so another user may have planted it to make dnstrace (uid {me}) overwrite its target",
            path.display(),
            link.uid
        ),
        SHARED_FIX,
    ))
}

/// Opens the folder `dir`, one component at a time, following only trusted symlinks.
fn open_dir(dir: &Path) -> Result<(OwnedFd, Info), OutFileError> {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let mut fd = rustix::fs::openat(CWD, ".", flags, Mode::empty())?;
    let mut walked = PathBuf::new();
    for c in dir.components() {
        let name: &OsStr = match c {
            Component::RootDir => {
                fd = rustix::fs::openat(CWD, "/", flags, Mode::empty())?;
                walked.push("/");
                continue;
            }
            Component::CurDir => continue,
            Component::Prefix(_) => unreachable!("no path prefixes on Unix"),
            Component::ParentDir => OsStr::new(".."),
            Component::Normal(n) => n,
        };
        walked.push(name);
        let next = match rustix::fs::openat(&fd, name, flags | OFlags::NOFOLLOW, Mode::empty()) {
            Ok(next) => next,
            Err(Errno::NOTDIR) => {
                let st = rustix::fs::statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW)?;
                if FileType::from_raw_mode(st.st_mode) != FileType::Symlink {
                    return Err(std::io::Error::from(Errno::NOTDIR).into());
                }
                check_link(&walked, &Info::of(&rustix::fs::fstat(&fd)?), &Info::of(&st))?;
                rustix::fs::openat(&fd, name, flags, Mode::empty())?
            }
            Err(e) => return Err(e.into()),
        };
        fd = next;
    }
    let info = Info::of(&rustix::fs::fstat(&fd)?);
    Ok((fd, info))
}

/// Opens `path` for writing under the rules in the module comment; the file is created
/// 0600 if absent. `Named` truncates a plain file; the logs append.
pub fn open(path: &Path, purpose: Purpose) -> Result<File, OutFileError> {
    let Some(name) = path.file_name() else {
        return Err(refused(
            format!("{} does not name a file", path.display()),
            "give a file name",
        ));
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let (dirfd, dir_info) = open_dir(dir)?;
    let me = euid();
    if purpose == Purpose::DefaultLog && (dir_info.uid != me || dir_info.shared()) {
        return Err(refused(
            format!(
                "the default log folder {} belongs to uid {} with mode {:o}, and dnstrace (uid {me}) \
                 writes its default log only to a folder of its own that not everyone can write to",
                dir.display(),
                dir_info.uid,
                dir_info.mode & 0o7777
            ),
            format!(
                "remove {} if it is not yours, or pass --log-file PATH",
                dir.display()
            ),
        ));
    }

    let mut flags = OFlags::WRONLY
        | OFlags::CREATE
        | OFlags::NOFOLLOW
        | OFlags::CLOEXEC
        | OFlags::NONBLOCK
        | OFlags::NOCTTY;
    if purpose != Purpose::Named {
        flags |= OFlags::APPEND;
    }
    let mode = Mode::from_raw_mode(0o600);
    // Create it ourselves if we can: then it is ours and nothing is left to check.
    let fd = match rustix::fs::openat(&dirfd, name, flags | OFlags::EXCL, mode) {
        Ok(fd) => fd,
        Err(Errno::EXIST) => open_existing(path, purpose, &dirfd, name, &dir_info, flags)?,
        Err(e) => return Err(e.into()),
    };
    // Non-blocking was only for the open: a FIFO's reader sets the pace.
    let fl = rustix::fs::fcntl_getfl(&fd)?;
    rustix::fs::fcntl_setfl(&fd, fl - OFlags::NONBLOCK)?;
    Ok(File::from(fd))
}

/// Opens what already exists at `name` and checks it before anything is written.
fn open_existing(
    path: &Path,
    purpose: Purpose,
    dirfd: &OwnedFd,
    name: &OsStr,
    dir_info: &Info,
    flags: OFlags,
) -> Result<OwnedFd, OutFileError> {
    let mode = Mode::from_raw_mode(0o600);
    let fd = match rustix::fs::openat(dirfd, name, flags, mode) {
        Ok(fd) => fd,
        // ELOOP, or EACCES for O_CREAT on another user's symlink in a sticky folder.
        Err(e) => match rustix::fs::statat(dirfd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                if !purpose.named() {
                    return Err(refused(
                        format!(
                            "{} is a symbolic link, and the default log file must be a plain file",
                            path.display()
                        ),
                        "remove it if it is not yours, or pass --log-file PATH",
                    ));
                }
                // Named on the command line, e.g. /dev/stdout: followed if it can be trusted.
                check_link(path, dir_info, &Info::of(&st))?;
                let target = rustix::fs::openat(dirfd, name, flags - OFlags::NOFOLLOW, mode);
                no_reader(path, target)?
            }
            _ => no_reader(path, Err(e))?,
        },
    };
    let info = Info::of(&rustix::fs::fstat(&fd)?);
    check_opened(path, purpose, dir_info, &info, euid())?;
    if info.kind == FileType::RegularFile && purpose == Purpose::Named {
        rustix::fs::ftruncate(&fd, 0)?;
    }
    Ok(fd)
}

/// ENXIO from a non-blocking write-only open: a FIFO with no reader, or a socket.
fn no_reader(path: &Path, opened: Result<OwnedFd, Errno>) -> Result<OwnedFd, OutFileError> {
    match opened {
        Ok(fd) => Ok(fd),
        Err(Errno::NXIO) => {
            let kind = std::fs::metadata(path).map(|m| {
                use std::os::unix::fs::FileTypeExt as _;
                m.file_type().is_socket()
            });
            if matches!(kind, Ok(true)) {
                Err(refused(
                    format!("{} is a socket", path.display()),
                    "dnstrace writes to files, FIFOs and devices; choose another path",
                ))
            } else {
                Err(refused(
                    format!("{} is a FIFO (named pipe) with no reader", path.display()),
                    format!(
                        "start its reader first (e.g. `wireshark -k -i {}`)",
                        path.display()
                    ),
                ))
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// The rules for something that existed before we opened it.
fn check_opened(
    path: &Path,
    purpose: Purpose,
    dir: &Info,
    info: &Info,
    me: u32,
) -> Result<(), OutFileError> {
    let p = path.display();
    let what = kind_name(info.kind);
    if !purpose.named() && info.kind != FileType::RegularFile {
        return Err(refused(
            format!("{p} is {what}, and the default log file must be a plain file"),
            format!(
                "remove it if it is not yours, or pass --log-file {p} to write to it on purpose"
            ),
        ));
    }
    if !purpose.named() && info.uid != me {
        return Err(refused(
            format!(
                "{p} belongs to uid {}, not to dnstrace (uid {me})",
                info.uid
            ),
            "remove it if it is not yours, or pass --log-file PATH",
        ));
    }
    if dir.shared() && info.uid != me {
        return Err(refused(
            format!(
                "{p} is {what} of uid {} in a folder that other users can write to, so another \
                 user may have created it first to catch what dnstrace (uid {me}) writes",
                info.uid
            ),
            SHARED_FIX,
        ));
    }
    if dir.shared() && info.kind == FileType::RegularFile && info.nlink > 1 {
        return Err(refused(
            format!(
                "{p} has {} hard links and is in a folder that other users can write to, so it \
                 may be another file linked there",
                info.nlink
            ),
            SHARED_FIX,
        ));
    }
    Ok(())
}

/// Where logs go when the TUI owns the terminal and no `--log-file` was given:
/// - root: /var/log/dnstrace/dnstrace.log;
/// - others: `$XDG_STATE_HOME/dnstrace/dnstrace.log`, else
///   `~/.local/state/dnstrace/dnstrace.log` when the home folder is theirs;
/// - else a private folder `$TMPDIR/dnstrace-UID/` (/tmp by default).
pub fn default_log_path() -> PathBuf {
    let me = euid();
    if me == 0 {
        return PathBuf::from("/var/log/dnstrace/dnstrace.log");
    }
    let absolute = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    if let Some(state) = absolute("XDG_STATE_HOME") {
        return state.join("dnstrace/dnstrace.log");
    }
    if let Some(home) = absolute("HOME").filter(|h| {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(h).is_ok_and(|m| m.is_dir() && m.uid() == me)
    }) {
        return home.join(".local/state/dnstrace/dnstrace.log");
    }
    std::env::temp_dir().join(format!("dnstrace-{me}/dnstrace.log"))
}

/// Opens the log file `path`, creating its folders; the default one ([`default_log_path`])
/// under the stricter rules, its folders 0700.
pub fn open_log(path: &Path) -> Result<File, OutFileError> {
    let purpose = if path == default_log_path() {
        Purpose::DefaultLog
    } else {
        Purpose::NamedLog
    };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    open(path, purpose)
}

/// Writes the ready file (our pid and a newline), under the rules for named files.
pub fn write_ready(path: &Path) -> Result<(), OutFileError> {
    use std::io::Write as _;
    let mut f = open(path, Purpose::Named)?;
    writeln!(f, "{}", std::process::id())?;
    Ok(())
}

/// The file or FIFO of `--pcap`.
pub fn create(path: &Path) -> Result<File, OutFileError> {
    open(path, Purpose::Named)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        io::{Read as _, Write as _},
        os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    };

    fn scratch(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("dnstrace-outfile-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        d
    }

    fn mkfifo(path: &Path) {
        rustix::fs::mknodat(CWD, path, FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
    }

    #[test]
    fn creates_0600_and_truncates_only_plain_files() {
        let d = scratch("create");
        let p = d.join("out.pcapng");
        create(&p).unwrap().write_all(b"first run, longer").unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        create(&p).unwrap().write_all(b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn log_appends() {
        let d = scratch("append");
        let p = d.join("a.log");
        open(&p, Purpose::NamedLog)
            .unwrap()
            .write_all(b"one\n")
            .unwrap();
        open(&p, Purpose::NamedLog)
            .unwrap()
            .write_all(b"two\n")
            .unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "one\ntwo\n");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn own_symlink_in_a_private_folder_is_followed_when_named() {
        let d = scratch("link");
        let target = d.join("target");
        std::fs::write(&target, "old").unwrap();
        std::os::unix::fs::symlink(&target, d.join("link")).unwrap();
        create(&d.join("link")).unwrap().write_all(b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new");
        // The default log never follows one.
        let err = open(&d.join("link"), Purpose::DefaultLog).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn fifo_needs_a_reader_and_is_never_the_default_log() {
        let d = scratch("fifo");
        let p = d.join("fifo");
        mkfifo(&p);
        let err = create(&p).unwrap_err();
        assert!(err.to_string().contains("no reader"), "{err}");
        let err = open(&p, Purpose::DefaultLog).unwrap_err();
        assert!(err.to_string().contains("FIFO"), "{err}");
        // With a reader, a named FIFO works, and writes block again (no EAGAIN on a full pipe).
        let reader = std::thread::spawn({
            let p = p.clone();
            move || {
                let mut s = String::new();
                File::open(p).unwrap().read_to_string(&mut s).unwrap();
                s
            }
        });
        let f = loop {
            match create(&p) {
                Ok(f) => break f,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        };
        let fl = rustix::fs::fcntl_getfl(&f).unwrap();
        assert!(!fl.contains(OFlags::NONBLOCK));
        let mut f = f;
        f.write_all(&vec![b'x'; 1 << 20]).unwrap();
        drop(f);
        assert_eq!(reader.join().unwrap().len(), 1 << 20);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn devices_only_when_named() {
        create(Path::new("/dev/null")).unwrap();
        let err = open(Path::new("/dev/null"), Purpose::DefaultLog).unwrap_err();
        assert!(err.to_string().contains("refused"), "{err}");
    }

    #[test]
    fn not_a_file_name() {
        assert!(create(Path::new("/tmp/..")).is_err());
        assert!(create(Path::new("/")).is_err());
    }

    #[test]
    fn default_log_needs_a_private_folder() {
        let d = scratch("private");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = open(&d.join("dnstrace.log"), Purpose::DefaultLog).unwrap_err();
        assert!(err.to_string().contains("default log folder"), "{err}");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        open(&d.join("dnstrace.log"), Purpose::DefaultLog).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn default_log_path_is_private() {
        let p = default_log_path();
        let s = p.to_string_lossy();
        assert!(s.ends_with("/dnstrace.log"), "{s}");
        assert!(euid() != 0 || s == "/var/log/dnstrace/dnstrace.log", "{s}");
    }
}

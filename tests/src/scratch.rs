//! For tests of the files dnstrace writes and of its error messages: scratch
//! folders that go away on drop, runs that may hang (a FIFO) cut off at a time
//! limit, commands run as another user, and small capture files written by hand.
use std::{
    fs,
    io::Read as _,
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

/// The user other users' files belong to in these tests (`nobody`).
pub const NOBODY: u32 = 65534;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A fresh folder `$TMPDIR/dt<tag>-<pid>-<n>`, removed with all it holds on drop.
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// With `mode`, e.g. 0o1777 for a folder like /tmp that anyone may write to.
    pub fn new(tag: &str, mode: u32) -> Result<Scratch> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("dt{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
        Ok(Scratch { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// `setpriv` running `program` as [`NOBODY`] (user and group, no supplementary groups).
pub fn as_nobody(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .arg("--clear-groups")
        .arg(program);
    cmd
}

/// What a bounded run did.
#[derive(Debug)]
pub struct Bounded {
    /// None: still running at the limit, so it was killed.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Bounded {
    /// For assertion messages.
    pub fn describe(&self) -> String {
        let status = match self.status {
            Some(s) => s.to_string(),
            None => format!("still running after {:?}, killed", self.took),
        };
        format!(
            "{status}\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` (stdin closed) for at most `limit`; past it, SIGKILLs its process group.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Result<Bounded> {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    let drain = |mut r: Box<dyn std::io::Read + Send>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped")));
    let err = drain(Box::new(child.stderr.take().expect("piped")));
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if started.elapsed() >= limit {
            // SAFETY: plain syscall; the child leads its own process group.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let took = started.elapsed();
    Ok(Bounded {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        took,
    })
}

/// An IPv4/UDP datagram (no checksums) from `src` to `dst`.
pub fn ipv4_udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 1, 0, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

/// TCP flags for [`ipv4_tcp`].
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_PSH_ACK: u8 = 0x18;
pub const TCP_ACK: u8 = 0x10;

/// An IPv4/TCP segment (no options, no checksums) from `src` to `dst`.
#[expect(clippy::too_many_arguments, reason = "one argument per header field")]
pub fn ipv4_tcp(
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&((40 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 1, 0x40, 0, 64, 6, 0, 0]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ack.to_be_bytes());
    p.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    p.extend_from_slice(payload);
    p
}

/// A DNS message: `id`, `flags`, one question (`labels`, `qtype`, class IN) and the
/// answers' wire bytes (`ancount` of them).
pub fn dns_message(
    id: u16,
    flags: u16,
    labels: &[&[u8]],
    qtype: u16,
    answers: &[u8],
    ancount: u16,
) -> Vec<u8> {
    let mut m = Vec::new();
    for v in [id, flags, 1, ancount, 0, 0] {
        m.extend_from_slice(&v.to_be_bytes());
    }
    for l in labels {
        m.push(l.len() as u8);
        m.extend_from_slice(l);
    }
    m.push(0);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m.extend_from_slice(answers);
    m
}

/// A classic pcap (microseconds, LINKTYPE_RAW) of `packets`, one millisecond apart.
pub fn pcap_raw_ip(packets: &[Vec<u8>]) -> Vec<u8> {
    let timed: Vec<(u64, Vec<u8>)> = packets
        .iter()
        .enumerate()
        .map(|(i, p)| (i as u64 * 1000, p.clone()))
        .collect();
    pcap_raw_ip_at(&timed)
}

/// A classic pcap (microseconds, LINKTYPE_RAW) of `packets`, each at its time in µs after
/// the first second of the capture.
pub fn pcap_raw_ip_at(packets: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    f.extend_from_slice(&2u16.to_le_bytes());
    f.extend_from_slice(&4u16.to_le_bytes());
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&65535u32.to_le_bytes());
    f.extend_from_slice(&101u32.to_le_bytes());
    for (us, p) in packets {
        f.extend_from_slice(&(1_700_000_000 + (us / 1_000_000) as u32).to_le_bytes());
        f.extend_from_slice(&((us % 1_000_000) as u32).to_le_bytes());
        f.extend_from_slice(&(p.len() as u32).to_le_bytes());
        f.extend_from_slice(&(p.len() as u32).to_le_bytes());
        f.extend_from_slice(p);
    }
    f
}

/// One query for `example.com. A` and its answer, as a pcap file.
pub fn pcap_one_lookup() -> Vec<u8> {
    let labels: &[&[u8]] = &[b"example", b"com"];
    let query = dns_message(0x1234, 0x0100, labels, 1, &[], 0);
    let mut answer = vec![0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4];
    answer.extend_from_slice(&[203, 0, 113, 7]);
    let response = dns_message(0x1234, 0x8180, labels, 1, &answer, 1);
    pcap_raw_ip(&[
        ipv4_udp([10, 0, 0, 1], [10, 0, 0, 2], 40000, 53, &query),
        ipv4_udp([10, 0, 0, 2], [10, 0, 0, 1], 53, 40000, &response),
    ])
}

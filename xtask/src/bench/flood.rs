//! The load generator of `cargo xtask bench`: UDP datagrams as fast as one
//! core sends them (sendmmsg, 64 per call), or paced. Non-DNS datagrams are
//! 64 bytes of zeros; with `--dns` every datagram is a distinct DNS query
//! (own id and name, so each one is a new lookup for a tracer).
//! Runs as the hidden `cargo xtask bench-flood`, started inside a lab netns;
//! prints `{"sent":N,"seconds":S}` when done.

use std::{
    io,
    net::{SocketAddrV4, UdpSocket},
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

const BATCH: usize = 64;
const PAYLOAD: usize = 64;
/// Room for one datagram: a DNS query or the plain payload.
const DNS_MAX: usize = 64;

#[derive(clap::Args, Clone, Debug)]
pub struct FloodArgs {
    /// Where to send.
    #[arg(long)]
    pub dst: SocketAddrV4,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Datagrams per second (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    pub pps: u64,
    /// Stop after this many datagrams (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub count: u64,
    /// Send DNS queries, each with its own id and name.
    #[arg(long)]
    pub dns: bool,
    /// With --dns, send one query again and again (one message seen again and again:
    /// dnstrace sends it as compact records).
    #[arg(long, requires = "dns")]
    pub same: bool,
    /// Run on this CPU only.
    #[arg(long)]
    pub cpu: Option<usize>,
}

impl FloodArgs {
    /// The arguments for `cargo xtask bench-flood`.
    pub fn to_args(&self) -> Vec<String> {
        let mut v = vec![
            "bench-flood".to_owned(),
            "--dst".to_owned(),
            self.dst.to_string(),
            "--seconds".to_owned(),
            self.seconds.to_string(),
            "--pps".to_owned(),
            self.pps.to_string(),
            "--count".to_owned(),
            self.count.to_string(),
        ];
        if self.dns {
            v.push("--dns".to_owned());
        }
        if self.same {
            v.push("--same".to_owned());
        }
        if let Some(cpu) = self.cpu {
            v.extend(["--cpu".to_owned(), cpu.to_string()]);
        }
        v
    }
}

pub fn run(args: &FloodArgs) -> Result<()> {
    if let Some(cpu) = args.cpu {
        pin_to(cpu)?;
    }
    let sock = UdpSocket::bind("0.0.0.0:0").context("binding the flood socket")?;
    sock.connect(args.dst)
        .with_context(|| format!("connecting to {}", args.dst))?;
    let mut bufs = [[0u8; DNS_MAX]; BATCH];
    let mut lens = [PAYLOAD; BATCH];
    let limit = if args.count == 0 {
        u64::MAX
    } else {
        args.count
    };
    let deadline = Duration::from_secs_f64(args.seconds);
    let started = Instant::now();
    let mut sent: u64 = 0;
    while sent < limit {
        let elapsed = started.elapsed();
        if elapsed >= deadline {
            break;
        }
        if args.pps > 0 {
            let due = Duration::from_secs_f64(sent as f64 / args.pps as f64);
            if due > elapsed {
                std::thread::sleep((due - elapsed).min(Duration::from_millis(5)));
                continue;
            }
        }
        let n = (limit - sent).min(BATCH as u64) as usize;
        if args.dns {
            for (i, (buf, len)) in bufs.iter_mut().zip(lens.iter_mut()).take(n).enumerate() {
                *len = dns_query(buf, if args.same { 0 } else { sent + i as u64 });
            }
        }
        sent += send_batch(&sock, &bufs[..n], &lens[..n])? as u64;
    }
    println!(
        "{{\"sent\":{sent},\"seconds\":{:.6}}}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Writes query number `n` (`A n<hex>.flood.test`, id = n mod 2^16) into `buf`.
fn dns_query(buf: &mut [u8; DNS_MAX], n: u64) -> usize {
    let label = format!("n{n:x}");
    let mut m = Vec::with_capacity(DNS_MAX);
    m.extend_from_slice(&(n as u16).to_be_bytes());
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for part in [label.as_str(), "flood", "test"] {
        m.push(part.len() as u8);
        m.extend_from_slice(part.as_bytes());
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    buf[..m.len()].copy_from_slice(&m);
    m.len()
}

/// sendmmsg on a connected socket; returns how many went out.
fn send_batch(sock: &UdpSocket, bufs: &[[u8; DNS_MAX]], lens: &[usize]) -> Result<usize> {
    let mut iovs: Vec<libc::iovec> = bufs
        .iter()
        .zip(lens)
        .map(|(b, &len)| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: len,
        })
        .collect();
    // SAFETY: mmsghdr is plain data; zero is a valid empty header.
    let mut msgs: Vec<libc::mmsghdr> = (0..iovs.len())
        .map(|_| unsafe { std::mem::zeroed() })
        .collect();
    for (msg, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
        msg.msg_hdr.msg_iov = iov;
        msg.msg_hdr.msg_iovlen = 1;
    }
    loop {
        // SAFETY: msgs points at len valid headers whose iovecs point into `bufs`,
        // which outlive the call.
        let rc = unsafe {
            libc::sendmmsg(
                sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                msgs.len() as libc::c_uint,
                0,
            )
        };
        if rc >= 0 {
            return Ok(rc as usize);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            // The device queue is full, or an ICMP error came back: try again.
            Some(libc::ENOBUFS | libc::EAGAIN | libc::ECONNREFUSED | libc::EINTR) => continue,
            _ => bail!("sendmmsg: {err}"),
        }
    }
}

/// Pins the calling thread (the whole generator: it has one) to `cpu`.
pub fn pin_to(cpu: usize) -> Result<()> {
    set_affinity(0, cpu).with_context(|| format!("pinning to CPU {cpu}"))
}

/// sched_setaffinity of thread `tid` (0: the caller) to the one CPU `cpu`.
fn set_affinity(tid: libc::pid_t, cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Pins every thread of process `pid` to `cpu` (threads it starts later inherit it).
pub fn pin_process(pid: u32, cpu: usize) -> Result<()> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("listing the threads of {pid}"))?;
    for task in tasks {
        let Some(tid) = task?
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i32>().ok())
        else {
            continue;
        };
        set_affinity(tid, cpu)
            .with_context(|| format!("pinning thread {tid} of {pid} to CPU {cpu}"))?;
    }
    Ok(())
}

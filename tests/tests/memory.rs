//! Memory bounds under hostile traffic: the tracer's resident memory, read from
//! /proc while a real attack runs in a lab.
//!
//! Each test builds its own lab (client and server namespaces joined by a veth),
//! runs the real `dnstrace watch` on the client's end, and opens the attack's
//! sockets from threads that entered the lab's namespaces with setns(2).

use std::{
    fs::File,
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use dnstrace_tests::{Lab, Signal, Tracer, VethEnd};

const CONNECTIONS: usize = 4096;
/// What each connection announces: the longest DNS message there is.
const ANNOUNCED: u16 = u16::MAX;
/// What each connection sends of it.
const BODY: usize = 60_000;
const MIB: u64 = 1 << 20;

/// A client netns and a server netns joined by a veth pair on 10.253.`net`.0/24 (the
/// client .1, the server .2); returns the client's netns, its end's name and the server's netns.
fn client_and_server(lab: &Lab, net: u8) -> (String, String, String) {
    let cli = lab.add_netns("cli").expect("netns");
    let srv = lab.add_netns("srv").expect("netns");
    let (cli_if, srv_if) = (format!("{}c", lab.prefix()), format!("{}s", lab.prefix()));
    let (cli_addr, srv_addr) = (format!("10.253.{net}.1/24"), format!("10.253.{net}.2/24"));
    lab.add_veth(
        &VethEnd {
            ns: &cli,
            name: &cli_if,
            addrs: &[&cli_addr],
        },
        &VethEnd {
            ns: &srv,
            name: &srv_if,
            addrs: &[&srv_addr],
        },
    )
    .expect("veth");
    (cli, cli_if, srv)
}

fn ready() -> bool {
    !dnstrace_tests::skip_without_root() && dnstrace_tests::dnstrace_bin().is_some()
}

/// Runs `f` on a new thread inside netns `ns` (only that thread moves).
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    let file = File::open(Path::new("/run/netns").join(ns)).expect("netns file");
    thread::spawn(move || {
        // SAFETY: setns(2) on an open netns fd; it moves only this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
}

/// Resident memory of a process, in bytes.
#[derive(Clone, Copy, Debug)]
struct Rss {
    /// VmRSS.
    total: u64,
    /// VmHWM: the peak of VmRSS.
    peak: u64,
    /// RssAnon: the heap and stacks, what the process allocated itself. The rest is file
    /// pages (the binary, and the ring buffer that the kernel shares), bounded by the
    /// binary's size and `--ring-size` whatever the traffic.
    anon: u64,
}

fn rss(pid: u32) -> Rss {
    let mut text = String::new();
    File::open(format!("/proc/{pid}/status"))
        .and_then(|mut f| f.read_to_string(&mut text))
        .expect("reading /proc/PID/status");
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
            * 1024
    };
    Rss {
        total: field("VmRSS:"),
        peak: field("VmHWM:"),
        anon: field("RssAnon:"),
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

/// Allows this process (both ends of every connection) enough descriptors.
fn raise_fd_limit(n: u64) {
    let lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: a valid rlimit for RLIMIT_NOFILE; root may raise the hard limit.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    assert_eq!(rc, 0, "setrlimit: {}", std::io::Error::last_os_error());
}

/// Sends `data` on every stream, a bit at a time round-robin, without blocking on a
/// peer whose window is full; returns the bytes sent.
fn send_all(streams: &mut [TcpStream], data: &[u8]) -> u64 {
    let mut sent = vec![0usize; streams.len()];
    let mut last_progress = Instant::now();
    while last_progress.elapsed() < Duration::from_secs(3) {
        let mut progress = false;
        for (s, at) in streams.iter_mut().zip(sent.iter_mut()) {
            if *at == data.len() {
                continue;
            }
            let end = (*at + 8192).min(data.len());
            match s.write(&data[*at..end]) {
                Ok(n) => {
                    *at += n;
                    progress |= n > 0;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("send: {e}"),
            }
        }
        if sent.iter().all(|&n| n == data.len()) {
            break;
        }
        if progress {
            last_progress = Instant::now();
        } else {
            thread::sleep(Duration::from_millis(20));
        }
    }
    sent.iter().map(|&n| n as u64).sum()
}

/// Issue 8, finding 5: one client holding 4,096 TCP connections to port 53, each
/// announcing a 65,535-byte DNS message and sending most of it, grew the tracer from
/// 27 MB to 379 MB and left it at 167 MB after they closed. Reassembly is now bounded,
/// so the peak must stay within 64 MiB of the baseline and return near it after close.
#[test]
fn tcp_reassembly_under_4096_connections_stays_bounded() {
    if !ready() {
        return;
    }
    raise_fd_limit(4 * CONNECTIONS as u64 + 1024);
    let lab = Lab::new("mem").expect("lab");
    let (cli, cli_if, srv) = client_and_server(&lab, 77);
    // One MSS per packet, so every segment fits the snaplen and goes through
    // reassembly (TSO would hand tc 64 KB packets that are cut and left alone).
    lab.ip(&cli, &["link", "set", &cli_if, "gso_max_segs", "1"])
        .expect("gso_max_segs");
    let server: SocketAddr = "10.253.77.2:53".parse().unwrap();

    // The server accepts and holds every connection, reading nothing.
    let stop = Arc::new(AtomicBool::new(false));
    let listening = Arc::new(AtomicBool::new(false));
    let server_thread = {
        let (stop, listening) = (stop.clone(), listening.clone());
        in_netns(&srv, move || {
            let listener = TcpListener::bind(server).expect("bind");
            listener.set_nonblocking(true).unwrap();
            // Room for the whole message in every receive queue (accepted sockets inherit it).
            let size: libc::c_int = 1 << 20;
            // SAFETY: setsockopt with a valid fd and an int-sized option.
            unsafe {
                libc::setsockopt(
                    listener.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUF,
                    (&size as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            listening.store(true, Ordering::SeqCst);
            let mut held = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => held.push(s),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(5))
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
            held.len()
        })
    };
    while !listening.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(10));
    }

    // Lookups only: a JSON line per packet would slow the decoder, the ring would overflow,
    // and fewer of the attack's bytes would reach reassembly.
    let tracer = Tracer::start_lookups(&lab, &cli, "trace", &["-i", &cli_if]).expect("dnstrace");
    let pid = tracer.proc.pid;
    thread::sleep(Duration::from_secs(1));
    let base = rss(pid);
    let baseline = base.total;

    // The attack, from the client namespace.
    let mut message = ANNOUNCED.to_be_bytes().to_vec();
    message.extend(std::iter::repeat_n(0x5a, BODY));
    let attack = in_netns(&cli, move || {
        let mut streams: Vec<TcpStream> = (0..CONNECTIONS)
            .map(|i| {
                let s = TcpStream::connect_timeout(&server, Duration::from_secs(10))
                    .unwrap_or_else(|e| panic!("connection {i}: {e}"));
                s.set_nodelay(true).unwrap();
                s.set_nonblocking(true).unwrap();
                s
            })
            .collect();
        let sent = send_all(&mut streams, &message);
        (streams, sent)
    });
    let mut peak_rss = baseline;
    while !attack.is_finished() {
        peak_rss = peak_rss.max(rss(pid).total);
        thread::sleep(Duration::from_millis(50));
    }
    let (streams, sent) = attack.join().expect("attack thread");
    // Let the tracer work through what it was sent.
    for _ in 0..100 {
        peak_rss = peak_rss.max(rss(pid).total);
        thread::sleep(Duration::from_millis(50));
    }
    let during = rss(pid);
    // One more connection, once the tracer has caught up, that closes in the middle of
    // its message: the close must be counted.
    in_netns(&cli, move || {
        let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(10)).expect("connect");
        s.set_nodelay(true).unwrap();
        let mut partial = ANNOUNCED.to_be_bytes().to_vec();
        partial.extend([0x5a; 1000]);
        s.write_all(&partial).expect("send");
        thread::sleep(Duration::from_millis(300));
    })
    .join()
    .expect("witness thread");
    thread::sleep(Duration::from_millis(500));
    // Close every connection (FIN from the client, then the server's sockets).
    drop(streams);
    stop.store(true, Ordering::SeqCst);
    let accepted = server_thread.join().expect("server thread");
    thread::sleep(Duration::from_secs(5));
    let after = rss(pid);
    let trace = tracer.stop(Signal::Int).expect("dnstrace stopped");
    let s = &trace.summary;
    let figures = format!(
        "VmRSS (RssAnon): baseline {:.1} ({:.1}) MiB, peak {:.1} MiB (VmHWM {:.1} MiB), {:.1} ({:.1}) MiB with the connections open, {:.1} ({:.1}) MiB after they closed; {accepted} connections, {:.1} MiB sent; tcp {}, kernel {}, userspace {}",
        mib(baseline),
        mib(base.anon),
        mib(peak_rss),
        mib(after.peak),
        mib(during.total),
        mib(during.anon),
        mib(after.total),
        mib(after.anon),
        mib(sent),
        s["tcp"],
        s["kernel"],
        s["userspace"],
    );
    eprintln!("memory: {figures}");
    for line in trace.stderr.lines().filter(|l| l.contains("free memory")) {
        eprintln!("memory: dnstrace: {line}");
    }
    assert_eq!(accepted, CONNECTIONS + 1, "{figures}");
    // The attack really was one: most of every message went out.
    assert!(
        sent >= (CONNECTIONS * BODY) as u64 * 9 / 10,
        "only {sent} bytes sent: {figures}"
    );
    let peak = after.peak.max(peak_rss);
    assert!(
        peak <= baseline + 64 * MIB,
        "peak more than 64 MiB above the baseline: {figures}"
    );
    assert!(
        after.anon <= base.anon + 16 * MIB,
        "not back near the baseline after close: {figures}"
    );
    // Reassembly saw the attack, stayed under its cap and counted what it gave up.
    let tcp = &s["tcp"];
    let n = |k: &str| {
        tcp[k]
            .as_u64()
            .unwrap_or_else(|| panic!("no tcp.{k}: {figures}"))
    };
    assert!(n("peak_streams") >= CONNECTIONS as u64, "{figures}");
    assert!(n("peak_bytes") <= 16 * MIB, "{figures}");
    // Bytes are given up at the cap, or, when the kernel lost segments (ring full), at
    // the holes they leave: either way counted.
    assert!(
        n("evicted_messages") > 0 || (n("gaps") > 0 && n("resync_dropped_bytes") > 0),
        "{figures}"
    );
    assert!(n("dropped_bytes") > 0, "{figures}");
    assert!(n("incomplete_at_close") > 0, "{figures}");
    assert_eq!(n("messages"), 0, "{figures}");
}

/// Issue 11, step 4: a flood of unanswered queries grew the tracer by about 1.5 KiB per
/// open lookup up to a fixed cap of 100,000 (176 MiB). The cap now follows from
/// `--memory-budget`: with 60 MiB it is 8,192 open lookups (60 MiB less the 8 MiB ring,
/// the 16 MiB queue and 28 MiB for dnstrace itself, at 1 KiB each), the lookups past it
/// are written out as evicted and counted, and the tracer grows by no more than the
/// budget grants beyond itself.
#[test]
fn unanswered_flood_stays_within_the_memory_budget() {
    if !ready() {
        return;
    }
    const QUERIES: u32 = 40_000;
    const CAP: u64 = 8192;
    let lab = Lab::new("bud").expect("lab");
    let (cli, cli_if, _srv) = client_and_server(&lab, 78);
    let tracer = Tracer::start_lookups(
        &lab,
        &cli,
        "trace",
        &["-i", &cli_if, "--memory-budget", "60MiB", "--timeout", "2s"],
    )
    .expect("dnstrace");
    let pid = tracer.proc.pid;
    thread::sleep(Duration::from_secs(1));
    let base = rss(pid);
    // Distinct queries (own ID and name each) to an address where nothing listens, at
    // about 20,000 a second: 2 s of them outlive the timeout's 2.2 s only past the cap.
    let sender = in_netns(&cli, move || {
        let sock = std::net::UdpSocket::bind("10.253.78.1:0").expect("bind");
        let to: SocketAddr = "10.253.78.2:53".parse().unwrap();
        let started = Instant::now();
        for i in 0..QUERIES {
            let mut m = (i as u16).to_be_bytes().to_vec();
            m.extend([0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
            for label in [format!("n{i:x}").as_str(), "flood", "test"] {
                m.push(label.len() as u8);
                m.extend(label.as_bytes());
            }
            m.extend([0, 0, 1, 0, 1]);
            sock.send_to(&m, to).expect("send");
            if i % 1000 == 999 {
                let due = Duration::from_millis(u64::from(i + 1) / 20);
                thread::sleep(due.saturating_sub(started.elapsed()));
            }
        }
    });
    let mut peak = base.total;
    while !sender.is_finished() {
        peak = peak.max(rss(pid).total);
        thread::sleep(Duration::from_millis(20));
    }
    sender.join().expect("sender");
    // Every open lookup times out.
    for _ in 0..200 {
        peak = peak.max(rss(pid).total);
        thread::sleep(Duration::from_millis(20));
    }
    let after = rss(pid);
    let trace = tracer.stop(Signal::Int).expect("dnstrace stopped");
    let lookups = &trace.summary["lookups"];
    let n = |k: &str| lookups[k].as_u64().unwrap_or(0);
    let peak = peak.max(after.peak);
    let figures = format!(
        "VmRSS {:.1} MiB at start, peak {:.1} MiB; lookups {lookups}, kernel {}",
        mib(base.total),
        mib(peak),
        trace.summary["kernel"]
    );
    eprintln!("memory budget: {figures}");
    let evicted_at_cap = format!("evicted: {CAP} live lookups at the cap");
    let evicted = trace
        .lookups
        .iter()
        .filter(|l| {
            l["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with(&evicted_at_cap))
        })
        .count() as u64;
    assert!(
        evicted > 0,
        "no lookup evicted at the cap of {CAP}: {figures}"
    );
    assert_eq!(evicted, n("evicted"), "{figures}");
    assert_eq!(trace.lookups.len() as u64, n("finished"), "{figures}");
    // What the budget grants beyond dnstrace itself: the ring, the queue, the lookups.
    let granted = 60 * MIB - 28 * MIB;
    assert!(
        peak <= base.total + granted,
        "grew by more than the budget grants ({:.0} MiB): {figures}",
        mib(granted)
    );
}

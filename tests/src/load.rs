//! Healthy DNS load, the way real clients make it, and the check that dnstrace
//! calls every one of those lookups `ok` with the latency the client saw.
//!
//! - [`run_client`] (the `dnsload` binary runs it inside a lab netns) sends
//!   queries at a fixed rate from a few UDP sockets that it reuses, with a
//!   small DNS id space per socket (ids repeat) and a few questions that each
//!   socket asks in turn, so the same socket asks the same question again,
//!   under a new id, right after the previous one was answered (as dnsperf
//!   does). It records every query: socket port, id, question, send and
//!   receive time on CLOCK_MONOTONIC (the clock of the kernel's
//!   `bpf_ktime_get_ns`, which dnstrace's `start_ts_ns` and hop `ts_ns` use),
//!   rcode.
//! - [`compare`] reads dnstrace's JSON lines as a stream (100,000 lookups are
//!   hundreds of MB) and matches each of the client's queries with its lookup
//!   by client port, DNS id and time.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    fs::File,
    io::{BufRead as _, BufReader, BufWriter, Write as _},
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::{Node, Signal, lab::Proc};

/// dnsmasq's concurrent forwarded queries for [`quiet_nodelocal`] (its
/// default, 150, is reached in a 50 ms stall at 10,000 qps; it then answers
/// REFUSED, a real server error).
pub const NODELOCAL_FORWARD_MAX: u32 = 4096;

/// Replaces the node's node-local-dns (dnsmasq with a query log) with one
/// tuned for load, as a real node-local-dns is: no query log,
/// `--dns-forward-max` [`NODELOCAL_FORWARD_MAX`]; still no cache, and still
/// forwarding to the ClusterIP, so every query walks every hop.
pub fn quiet_nodelocal(node: &Node) -> Result<Proc> {
    node.lab
        .stop(&node.nodelocal, Signal::Term, Duration::from_secs(5))
        .context("stopping node-local-dns")?;
    let forward_max = format!("--dns-forward-max={NODELOCAL_FORWARD_MAX}");
    let server = format!("--server={}", node.cluster_ip);
    let proc = node.lab.start_dnsmasq_quiet(
        &node.node_ns,
        "nodelocaldns-load",
        &[std::net::IpAddr::V4(node.nodelocal_ip)],
        &["--cache-size=0", &forward_max, &server],
    )?;
    let answers = node.query_short(&node.pod_ns, node.nodelocal_ip, &node.www_name, "A", &[])?;
    if answers != [node.www_a.to_string()] {
        bail!("node-local-dns for load answers {answers:?}");
    }
    Ok(proc)
}

/// `getsockopt(SOL_SOCKET, SO_NETNS_COOKIE)` (Linux ≥ 5.14; 71 on every
/// architecture): the cookie dnstrace writes as a hop's `netns`.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// What [`run_client`] sends.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub server: SocketAddr,
    /// Queries per second (paced, whatever the answers do).
    pub qps: u64,
    pub count: u64,
    /// UDP sockets, used in turn.
    pub sockets: usize,
    /// DNS ids per socket: socket `s` uses `1..=ids` cyclically (an id still
    /// waiting for its answer is skipped), so every socket reuses the same ids.
    pub ids: u16,
    /// (qname, qtype) asked in turn by each socket.
    pub questions: Vec<(String, String)>,
    /// A query without an answer this long is given up.
    pub timeout: Duration,
}

/// One query the client sent, and what came back.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientQuery {
    pub port: u16,
    pub id: u16,
    pub qname: String,
    pub qtype: String,
    /// CLOCK_MONOTONIC, ns, just before send(2).
    pub sent_ns: u64,
    /// CLOCK_MONOTONIC, ns, just after send(2) returned: the packet left between the
    /// two (the thread may be preempted in between, for a millisecond and more).
    pub sent_done_ns: Option<u64>,
    /// CLOCK_MONOTONIC, ns, just after recv(2) returned the answer.
    pub recv_ns: Option<u64>,
    /// The kernel's receive timestamp of the answer (SO_TIMESTAMPNS, taken
    /// as the packet entered the client's netns), on CLOCK_MONOTONIC, ns.
    pub recv_kernel_ns: Option<u64>,
    pub rcode: Option<String>,
}

impl ClientQuery {
    pub fn latency_ms(&self) -> Option<f64> {
        self.recv_ns
            .map(|r| r.saturating_sub(self.sent_ns) as f64 / 1e6)
    }

    /// From send(2) to the kernel's receive timestamp: the latency without
    /// the client thread's wake-up.
    pub fn kernel_latency_ms(&self) -> Option<f64> {
        self.recv_kernel_ns
            .map(|r| r.saturating_sub(self.sent_ns) as f64 / 1e6)
    }

    /// The same from when send(2) returned: with [`Self::kernel_latency_ms`], the
    /// bounds of the true latency.
    pub fn kernel_latency_from_done_ms(&self) -> Option<f64> {
        let done = self.sent_done_ns?;
        self.recv_kernel_ns
            .map(|r| r.saturating_sub(done) as f64 / 1e6)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "port": self.port,
            "id": self.id,
            "qname": self.qname,
            "qtype": self.qtype,
            "sent_ns": self.sent_ns,
            "sent_done_ns": self.sent_done_ns,
            "recv_ns": self.recv_ns,
            "recv_kernel_ns": self.recv_kernel_ns,
            "rcode": self.rcode,
            "latency_ms": self.latency_ms(),
        })
    }

    pub fn from_json(v: &Value) -> Option<ClientQuery> {
        Some(ClientQuery {
            port: u16::try_from(v["port"].as_u64()?).ok()?,
            id: u16::try_from(v["id"].as_u64()?).ok()?,
            qname: v["qname"].as_str()?.to_owned(),
            qtype: v["qtype"].as_str()?.to_owned(),
            sent_ns: v["sent_ns"].as_u64()?,
            sent_done_ns: v["sent_done_ns"].as_u64(),
            recv_ns: v["recv_ns"].as_u64(),
            recv_kernel_ns: v["recv_kernel_ns"].as_u64(),
            rcode: v["rcode"].as_str().map(str::to_owned),
        })
    }
}

/// Everything [`run_client`] measured.
#[derive(Clone, Debug)]
pub struct ClientRun {
    pub queries: Vec<ClientQuery>,
    /// Netns cookie of the client's sockets (matches dnstrace's hop `netns`).
    pub netns_cookie: Option<u64>,
    /// From the first send to the last one.
    pub send_secs: f64,
}

impl ClientRun {
    /// JSON lines: a header `{"netns_cookie":…,"send_secs":…}`, then one line per query.
    pub fn write(&self, path: &Path) -> Result<()> {
        let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut w = BufWriter::new(f);
        serde_json::to_writer(
            &mut w,
            &json!({"netns_cookie": self.netns_cookie, "send_secs": self.send_secs}),
        )?;
        w.write_all(b"\n")?;
        for q in &self.queries {
            serde_json::to_writer(&mut w, &q.to_json())?;
            w.write_all(b"\n")?;
        }
        w.flush()?;
        Ok(())
    }

    pub fn read(path: &Path) -> Result<ClientRun> {
        let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut lines = BufReader::new(f).lines();
        let head: Value = serde_json::from_str(&lines.next().context("empty client file")??)?;
        let mut queries = Vec::new();
        for line in lines {
            let v: Value = serde_json::from_str(&line?)?;
            queries.push(ClientQuery::from_json(&v).context("bad client line")?);
        }
        Ok(ClientRun {
            queries,
            netns_cookie: head["netns_cookie"].as_u64(),
            send_secs: head["send_secs"].as_f64().unwrap_or(0.0),
        })
    }

    pub fn answered(&self) -> usize {
        self.queries.iter().filter(|q| q.recv_ns.is_some()).count()
    }

    /// Latencies the client measured, ms, sorted.
    pub fn latencies(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self
            .queries
            .iter()
            .filter_map(ClientQuery::latency_ms)
            .collect();
        v.sort_by(f64::total_cmp);
        v
    }
}

/// CLOCK_MONOTONIC in ns.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn netns_cookie(sock: &UdpSocket) -> Option<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(cookie)
}

/// Query type codes for the names the client accepts.
fn qtype_code(name: &str) -> Result<u16> {
    Ok(match name {
        "A" => 1,
        "NS" => 2,
        "SOA" => 6,
        "MX" => 15,
        "TXT" => 16,
        "AAAA" => 28,
        _ => bail!("unsupported qtype {name}"),
    })
}

/// A plain recursive query (RD, no EDNS) with a zero id: [`set_id`] fills it in.
fn query_wire(qname: &str, qtype: &str) -> Result<Vec<u8>> {
    let mut m = vec![0, 0, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in qname.trim_end_matches('.').split('.') {
        let len = u8::try_from(label.len())
            .ok()
            .filter(|l| (1..64).contains(l))
            .with_context(|| format!("bad label in {qname}"))?;
        m.push(len);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&qtype_code(qtype)?.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    Ok(m)
}

fn rcode_name(code: u8) -> String {
    match code {
        0 => "NOERROR".to_owned(),
        1 => "FORMERR".to_owned(),
        2 => "SERVFAIL".to_owned(),
        3 => "NXDOMAIN".to_owned(),
        4 => "NOTIMP".to_owned(),
        5 => "REFUSED".to_owned(),
        n => format!("RCODE{n}"),
    }
}

/// Per socket: which query (index + 1) waits for each id; 0 when the id is free.
struct InFlight {
    by_id: Vec<usize>,
}

/// What the receiver saw: (query index, receive time, kernel receive time, rcode).
type Received = Vec<(usize, u64, Option<u64>, u8)>;

/// Sends `spec.count` queries at `spec.qps` and waits for the answers (at
/// most `spec.timeout` after the last send).
pub fn run_client(spec: &LoadSpec) -> Result<ClientRun> {
    if spec.sockets == 0 || spec.ids == 0 || spec.questions.is_empty() || spec.qps == 0 {
        bail!("sockets, ids, questions and qps must be non-zero");
    }
    let bind: SocketAddr = if spec.server.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let mut socks = Vec::new();
    for _ in 0..spec.sockets {
        let s = UdpSocket::bind(bind)?;
        s.connect(spec.server)?;
        s.set_nonblocking(true)?;
        let on: libc::c_int = 1;
        // SAFETY: setsockopt reads one c_int from a valid pointer.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_TIMESTAMPNS,
                (&raw const on).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("SO_TIMESTAMPNS");
        }
        socks.push(s);
    }
    let ports: Vec<u16> = socks
        .iter()
        .map(|s| s.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()?;
    let cookie = netns_cookie(&socks[0]);
    let wires: Vec<Vec<u8>> = spec
        .questions
        .iter()
        .map(|(n, t)| query_wire(n, t))
        .collect::<Result<_>>()?;
    let socks = Arc::new(socks);
    let inflight: Arc<Vec<Mutex<InFlight>>> = Arc::new(
        (0..spec.sockets)
            .map(|_| {
                Mutex::new(InFlight {
                    by_id: vec![0; usize::from(spec.ids) + 1],
                })
            })
            .collect(),
    );
    let sending = Arc::new(AtomicBool::new(true));

    let receiver = {
        let (socks, inflight, sending) = (socks.clone(), inflight.clone(), sending.clone());
        let timeout = spec.timeout;
        thread::spawn(move || receive(&socks, &inflight, &sending, timeout))
    };

    let mut queries: Vec<ClientQuery> = Vec::with_capacity(spec.count as usize);
    let mut next_id = vec![1u16; spec.sockets];
    let mut asked = vec![0usize; spec.sockets];
    let interval_ns = 1e9 / spec.qps as f64;
    let start = monotonic_ns();
    let mut buf = Vec::new();
    let mut send_err = None;
    for i in 0..spec.count {
        let due = start + (i as f64 * interval_ns) as u64;
        let now = monotonic_ns();
        if due > now + 100_000 {
            thread::sleep(Duration::from_nanos(due - now));
        }
        let s = (i % spec.sockets as u64) as usize;
        // Each socket asks its questions in turn, starting at a different one.
        let qi = (asked[s] + s) % spec.questions.len();
        asked[s] += 1;
        let index = queries.len();
        let id = loop {
            let mut fl = inflight[s].lock().expect("in-flight table");
            let mut found = None;
            for _ in 0..spec.ids {
                let id = next_id[s];
                next_id[s] = if id >= spec.ids { 1 } else { id + 1 };
                let waiting = fl.by_id[usize::from(id)];
                // Free, or given up: the receiver ignores a late answer to it.
                if waiting == 0
                    || monotonic_ns().saturating_sub(queries[waiting - 1].sent_ns)
                        > spec.timeout.as_nanos() as u64
                {
                    fl.by_id[usize::from(id)] = index + 1;
                    found = Some(id);
                    break;
                }
            }
            drop(fl);
            match found {
                Some(id) => break id,
                None => thread::sleep(Duration::from_micros(100)),
            }
        };
        buf.clear();
        buf.extend_from_slice(&wires[qi]);
        buf[..2].copy_from_slice(&id.to_be_bytes());
        let (qname, qtype) = &spec.questions[qi];
        let sent_ns = monotonic_ns();
        queries.push(ClientQuery {
            port: ports[s],
            id,
            qname: qname.clone(),
            qtype: qtype.clone(),
            sent_ns,
            sent_done_ns: None,
            recv_ns: None,
            recv_kernel_ns: None,
            rcode: None,
        });
        if let Err(e) = socks[s].send(&buf) {
            send_err = Some(e);
            break;
        }
        if let Some(q) = queries.last_mut() {
            q.sent_done_ns = Some(monotonic_ns());
        }
    }
    let send_secs = (monotonic_ns() - start) as f64 / 1e9;
    sending.store(false, Ordering::SeqCst);
    let received = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("the receiver thread panicked"))?;
    if let Some(e) = send_err {
        return Err(e).context("send");
    }
    for (index, recv_ns, kernel_ns, rcode) in received {
        let q = &mut queries[index];
        if q.recv_ns.is_none() {
            q.recv_ns = Some(recv_ns);
            q.recv_kernel_ns = kernel_ns;
            q.rcode = Some(rcode_name(rcode));
        }
    }
    Ok(ClientRun {
        queries,
        netns_cookie: cookie,
        send_secs,
    })
}

/// Reads answers from every socket until sending has stopped and every query
/// is answered, or `timeout` has passed since sending stopped.
fn receive(
    socks: &[UdpSocket],
    inflight: &[Mutex<InFlight>],
    sending: &AtomicBool,
    timeout: Duration,
) -> Received {
    let mut got = Received::new();
    let mut fds: Vec<libc::pollfd> = socks
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let mut buf = [0u8; 4096];
    let mut stopped_at = None;
    loop {
        // SAFETY: poll(2) on a valid array of pollfds.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 20) };
        for (s, sock) in socks.iter().enumerate() {
            if fds[s].revents == 0 {
                continue;
            }
            while let Some((n, kernel_ns)) = recv_stamped(sock, &mut buf) {
                let recv_ns = monotonic_ns();
                if n < 12 || buf[2] & 0x80 == 0 {
                    continue;
                }
                let id = u16::from_be_bytes([buf[0], buf[1]]);
                let mut fl = inflight[s].lock().expect("in-flight table");
                if let Some(slot) = fl.by_id.get_mut(usize::from(id))
                    && *slot != 0
                {
                    got.push((*slot - 1, recv_ns, kernel_ns, buf[3] & 0x0f));
                    *slot = 0;
                }
            }
        }
        if !sending.load(Ordering::SeqCst) {
            let now = monotonic_ns();
            let since = *stopped_at.get_or_insert(now);
            let idle = inflight.iter().all(|f| {
                f.lock()
                    .expect("in-flight table")
                    .by_id
                    .iter()
                    .all(|&w| w == 0)
            });
            if idle || now - since > timeout.as_nanos() as u64 {
                return got;
            }
        }
    }
}

/// CLOCK_REALTIME − CLOCK_MONOTONIC now, ns (the realtime clock is read
/// between two monotonic reads, so the error is half their gap). A thread
/// preempted between the reads widens the gap (on a busy host, to a millisecond
/// and more) and shifts the offset by up to half of it, so the narrowest of a few
/// tries is taken.
fn realtime_offset_ns() -> i128 {
    let read = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec into a valid pointer.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
    };
    let mut best: Option<(i128, i128)> = None;
    for _ in 0..4 {
        let a = read(libc::CLOCK_MONOTONIC);
        let rt = read(libc::CLOCK_REALTIME);
        let b = read(libc::CLOCK_MONOTONIC);
        let (gap, offset) = (b - a, rt - (a + b) / 2);
        if best.is_none_or(|(g, _)| gap < g) {
            best = Some((gap, offset));
        }
        // Well under a microsecond: nothing came between the reads.
        if gap < 1_000 {
            break;
        }
    }
    best.map_or(0, |(_, offset)| offset)
}

/// recvmsg(2) without blocking: the datagram's length and its kernel receive
/// time (SCM_TIMESTAMPNS, CLOCK_REALTIME) turned into CLOCK_MONOTONIC.
fn recv_stamped(sock: &UdpSocket, buf: &mut [u8]) -> Option<(usize, Option<u64>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 16];
    // SAFETY: an all-zero msghdr is valid; the pointers are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: recvmsg writes into the buffers msg points at, within their lengths.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &raw mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return None;
    }
    let mut stamp = None;
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled in.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&raw const msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                let rt = i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec);
                stamp = u64::try_from(rt - realtime_offset_ns()).ok();
            }
            c = libc::CMSG_NXTHDR(&raw const msg, c);
        }
    }
    Some((n as usize, stamp))
}

/// What one lookup of dnstrace's says, in brief.
#[derive(Clone, Debug)]
pub struct TracedLookup {
    pub client: String,
    pub verdict: String,
    pub latency_ms: Option<f64>,
    pub start_ts_ns: u64,
    pub retries: u64,
    /// Distinct DNS ids of the client's queries (more than one: queries merged).
    pub query_ids: Vec<u16>,
    /// The whole record, kept for lookups that are wrong.
    pub line: Option<(Wrong, String)>,
}

/// What is wrong with a lookup in [`Comparison::wrong`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Wrong {
    /// A root lookup of the lab that is not the client's.
    OtherRoot,
    /// A client lookup whose verdict is not `ok`.
    Verdict,
    /// A client lookup merged with other queries (retries, another socket's).
    Merged,
    /// A `{"type":"latency_mismatch"}` line: an `ok` lookup whose latency
    /// disagrees with the client's.
    Latency,
}

/// dnstrace's records for one lab, read from its JSON lines, against what
/// the client measured.
#[derive(Clone, Debug, Default)]
pub struct Comparison {
    /// Lookups from the client's sockets (its netns cookie), by verdict.
    pub client_verdicts: BTreeMap<String, u64>,
    /// Other root lookups of this lab (a hop on one of its interfaces or in
    /// one of its namespaces) that are not the client's: forwarders' queries
    /// that were not attached to their client lookup; by verdict.
    pub other_roots: BTreeMap<String, u64>,
    /// Client queries that really failed (no answer, or not NOERROR, as the
    /// client saw it), by the verdict of their lookup: these verdicts are
    /// right, not false alarms (e.g. `dropped` with SOCKET_RCVBUFF when
    /// node-local-dns falls behind).
    pub real_failures: BTreeMap<String, u64>,
    /// Verdicts other than `ok` and `unknown` for queries the client got a
    /// NOERROR answer to (or that match no client query), plus other root
    /// lookups of the lab that are not `ok` or `unknown`.
    pub false_alarms: u64,
    /// Client lookups grouped with other queries as retries (more than one
    /// DNS id among their queries, or `retries` > 0).
    pub merged: u64,
    /// Client lookups that hold queries from another of the client's sockets
    /// (same IP, another port, here the same DNS id and question): queries of
    /// two lookups stitched into one.
    pub other_sockets: u64,
    /// Client queries no lookup starts with (merged into another, or missing).
    pub unmatched_queries: u64,
    /// Client lookups that match no client query.
    pub unmatched_lookups: u64,
    /// dnstrace's latency of each client lookup, ms, sorted.
    pub latencies_ms: Vec<f64>,
    /// dnstrace's latency minus the client's (send(2) to the kernel's receive
    /// timestamp), ms, for each matched query, sorted.
    pub deltas_ms: Vec<f64>,
    /// The same against the latency the client's thread saw (send(2) to
    /// after recv(2)): this one includes its wake-up.
    pub deltas_user_ms: Vec<f64>,
    /// Matched queries whose latency is outside the tolerance.
    pub latency_mismatches: u64,
    /// Worst of those: (client ms, dnstrace ms, client port, id).
    pub worst: Vec<(f64, f64, u16, u16)>,
    /// The JSON lines of wrong lookups, by what is wrong with them.
    pub wrong: Vec<(Wrong, String)>,
    /// From the summary record.
    pub orphan_responses: u64,
    pub lost_events: u64,
    pub ring_full: u64,
    pub dns_seen: u64,
    pub lookups_total: u64,
    pub evicted: u64,
}

/// Allowed |dnstrace − client| latency: this many ms plus …
pub const TOLERANCE_MS: f64 = 0.3;
/// … this percentage of the client's figure (see tests/tests/load.rs).
pub const TOLERANCE_PCT: f64 = 10.0;

pub fn tolerance_ms(client_ms: f64) -> f64 {
    TOLERANCE_MS + TOLERANCE_PCT / 100.0 * client_ms
}

/// Which lookups belong to one lab, and which of those are the client's.
#[derive(Clone, Debug)]
pub struct LabFilter {
    /// A lookup is this lab's when one of its hops was seen on an interface
    /// whose name starts with this (the lab's prefix) …
    pub iface_prefix: String,
    /// … or in a netns with one of these cookies.
    pub cookies: Vec<u64>,
    /// It is the client's when its `client` address has this IP …
    pub client_ip: String,
    /// … and one of its hops is on this interface (the pod's veth, node side)
    /// or in the client's netns (the [`ClientRun`]'s cookie).
    pub client_iface: String,
}

/// Reads dnstrace's JSON lines at `trace` as a stream, keeps the lookups of
/// the lab `lab` describes and, with `client`, matches each client query with
/// its lookup (by client port, DNS id and send time).
pub fn compare(trace: &Path, client: Option<&ClientRun>, lab: &LabFilter) -> Result<Comparison> {
    let f = File::open(trace).with_context(|| format!("opening {}", trace.display()))?;
    let mut cmp = Comparison::default();
    let mut traced = Vec::new();
    for line in BufReader::with_capacity(1 << 20, f).lines() {
        let line = line?;
        if line.starts_with(r#"{"type":"packet""#) {
            continue;
        }
        let v: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(_) => continue,
        };
        match v["type"].as_str() {
            Some("summary") => {
                let l = &v["lookups"];
                cmp.orphan_responses = l["orphan_responses"].as_u64().unwrap_or(0);
                cmp.lost_events = v["lost"].as_u64().unwrap_or(0);
                cmp.ring_full = v["kernel"]["ring_full"].as_u64().unwrap_or(0);
                cmp.dns_seen = v["kernel"]["dns_seen"].as_u64().unwrap_or(0);
                cmp.evicted = l["evicted"].as_u64().unwrap_or(0);
                continue;
            }
            Some("lookup") => {}
            _ => continue,
        }
        cmp.lookups_total += 1;
        let hops = v["hops"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        let in_ns = |h: &Value, c: u64| h["netns"].as_u64() == Some(c);
        let ours = hops.iter().any(|h| {
            h["iface"]
                .as_str()
                .is_some_and(|i| i.starts_with(&lab.iface_prefix))
                || lab.cookies.iter().any(|&c| in_ns(h, c))
        });
        if !ours {
            continue;
        }
        let client_addr = v["client"].as_str().unwrap_or("").to_owned();
        let verdict = v["verdict"].as_str().unwrap_or("?").to_owned();
        let cookie = client.and_then(|c| c.netns_cookie);
        let from_client = client_addr
            .rsplit_once(':')
            .is_some_and(|(ip, _)| ip == lab.client_ip)
            && hops.iter().any(|h| {
                h["iface"] == lab.client_iface.as_str() || cookie.is_some_and(|c| in_ns(h, c))
            });
        let alarm = verdict != "ok" && verdict != "unknown";
        if !from_client {
            cmp.false_alarms += u64::from(alarm);
            *cmp.other_roots.entry(verdict).or_default() += 1;
            cmp.wrong.push((Wrong::OtherRoot, line));
            continue;
        }
        // Queries from another socket of the same client (same IP, other
        // port) in this lookup: two lookups stitched into one.
        let client_ip = client_addr.rsplit_once(':').map_or("", |(ip, _)| ip);
        let other_sockets = hops.iter().any(|h| {
            h["qr"] == false
                && h["src"].as_str().is_some_and(|src| {
                    src != client_addr
                        && src.rsplit_once(':').is_some_and(|(ip, _)| ip == client_ip)
                })
        });
        let mut query_ids: Vec<u16> = hops
            .iter()
            .filter(|h| h["qr"] == false && h["src"].as_str() == Some(&client_addr))
            .filter_map(|h| h["id"].as_u64().and_then(|i| u16::try_from(i).ok()))
            .collect();
        query_ids.dedup();
        query_ids.sort_unstable();
        query_ids.dedup();
        *cmp.client_verdicts.entry(verdict.clone()).or_default() += 1;
        let retries = v["retries"].as_u64().unwrap_or(0);
        let merged = query_ids.len() > 1 || retries > 0;
        let wrong = if verdict != "ok" {
            Some(Wrong::Verdict)
        } else if merged || other_sockets {
            Some(Wrong::Merged)
        } else {
            None
        };
        cmp.merged += u64::from(merged);
        cmp.other_sockets += u64::from(other_sockets);
        if let Some(ms) = v["latency_ms"].as_f64() {
            cmp.latencies_ms.push(ms);
        }
        traced.push(TracedLookup {
            client: client_addr,
            verdict,
            latency_ms: v["latency_ms"].as_f64(),
            start_ts_ns: v["start_ts_ns"].as_u64().unwrap_or(0),
            retries,
            query_ids,
            line: wrong.map(|w| (w, line)),
        });
    }

    cmp.latencies_ms.sort_by(f64::total_cmp);
    let alarm = |t: &TracedLookup| t.verdict != "ok" && t.verdict != "unknown";
    let Some(client) = client else {
        cmp.false_alarms += traced.iter().filter(|t| alarm(t)).count() as u64;
        cmp.wrong.extend(traced.into_iter().filter_map(|t| t.line));
        return Ok(cmp);
    };
    // Client queries by (port, id), in send order.
    let mut by_key: HashMap<(u16, u16), Vec<usize>> = HashMap::new();
    for (i, q) in client.queries.iter().enumerate() {
        by_key.entry((q.port, q.id)).or_default().push(i);
    }
    let mut matched = vec![false; client.queries.len()];
    for t in &mut traced {
        let port = t
            .client
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok());
        // The lookup starts with its first query: the one sent closest to start_ts_ns.
        let best = port
            .zip(t.query_ids.first())
            .and_then(|(p, &id)| by_key.get(&(p, id)))
            .and_then(|cands| {
                cands
                    .iter()
                    .copied()
                    .filter(|&i| !matched[i])
                    .min_by_key(|&i| client.queries[i].sent_ns.abs_diff(t.start_ts_ns))
            })
            .filter(|&i| client.queries[i].sent_ns.abs_diff(t.start_ts_ns) < 100_000_000);
        let Some(i) = best else {
            cmp.false_alarms += u64::from(alarm(t));
            cmp.unmatched_lookups += 1;
            if let Some(l) = t.line.take() {
                cmp.wrong.push(l);
            }
            continue;
        };
        matched[i] = true;
        let q = &client.queries[i];
        if q.rcode.as_deref() == Some("NOERROR") {
            cmp.false_alarms += u64::from(alarm(t));
        } else {
            *cmp.real_failures.entry(t.verdict.clone()).or_default() += 1;
        }
        let mut mismatch = false;
        if let (Some(u), Some(d)) = (q.latency_ms(), t.latency_ms) {
            cmp.deltas_user_ms.push(d - u);
        }
        let measured = q.kernel_latency_ms().or(q.latency_ms());
        if let (Some(c), Some(d)) = (measured, t.latency_ms) {
            cmp.deltas_ms.push(d - c);
            // The packet left somewhere between the two ends of send(2), and reached the
            // socket somewhere between the kernel's receive stamp (taken as it entered the
            // client's netns) and recv(2) returning: a reply held 1 ms on its way to the
            // socket under load read 0.23 ms by the stamp and 1.28 ms to the socket.
            let shortest = q.kernel_latency_from_done_ms().unwrap_or(c).min(c);
            let longest = q.latency_ms().unwrap_or(c).max(c);
            if d > longest + tolerance_ms(longest) || d < shortest - tolerance_ms(shortest) {
                mismatch = true;
                cmp.latency_mismatches += 1;
                cmp.worst.push((c, d, q.port, q.id));
            }
        } else if measured.is_some() != t.latency_ms.is_some() {
            mismatch = true;
            cmp.latency_mismatches += 1;
            cmp.worst.push((
                measured.unwrap_or(f64::NAN),
                t.latency_ms.unwrap_or(f64::NAN),
                q.port,
                q.id,
            ));
        }
        if let Some(l) = t.line.take() {
            cmp.wrong.push(l);
        } else if mismatch && cmp.wrong.len() < 10_000 {
            // Keep the record of a latency mismatch too (it is `ok` and unmerged).
            let line = format!(
                r#"{{"type":"latency_mismatch","port":{},"id":{},"client_ms":{},"dnstrace_ms":{}}}"#,
                q.port,
                q.id,
                measured.unwrap_or(-1.0),
                t.latency_ms.unwrap_or(-1.0)
            );
            cmp.wrong.push((Wrong::Latency, line));
        }
    }
    cmp.unmatched_queries = matched.iter().filter(|m| !**m).count() as u64;
    cmp.deltas_ms.sort_by(f64::total_cmp);
    cmp.deltas_user_ms.sort_by(f64::total_cmp);
    cmp.worst
        .sort_by(|a, b| (b.1 - b.0).abs().total_cmp(&(a.1 - a.0).abs()));
    cmp.worst.truncate(20);
    Ok(cmp)
}

/// Sorted `v`'s value at `p` percent (nearest rank).
pub fn percentile(v: &[f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

/// "min / median / p99 / max" of a sorted list, in ms.
pub fn spread(v: &[f64]) -> String {
    match (v.first(), v.last()) {
        (Some(min), Some(max)) => format!(
            "{min:+.3} / {:+.3} / {:+.3} / {max:+.3} ms",
            percentile(v, 50.0).unwrap_or(0.0),
            percentile(v, 99.0).unwrap_or(0.0),
        ),
        _ => "no samples".to_owned(),
    }
}

impl Comparison {
    pub fn false_alarms(&self) -> u64 {
        self.false_alarms
    }

    /// Up to `n` wrong lookups' lines, a share of each kind (in order of
    /// [`Wrong`]), so that a sample shows every way they went wrong.
    pub fn sample(&self, n: usize) -> Vec<&str> {
        let kinds = [
            Wrong::OtherRoot,
            Wrong::Verdict,
            Wrong::Merged,
            Wrong::Latency,
        ];
        let mut taken = vec![false; self.wrong.len()];
        let mut left = n;
        // A fair share of each kind first, then whatever room is left, in order.
        for (i, kind) in kinds.iter().enumerate() {
            let share = left.div_ceil(kinds.len() - i);
            let mut took = 0;
            for (j, (w, _)) in self.wrong.iter().enumerate() {
                if took == share {
                    break;
                }
                if w == kind {
                    taken[j] = true;
                    took += 1;
                }
            }
            left -= took;
        }
        for t in taken.iter_mut().filter(|t| !**t).take(left) {
            *t = true;
        }
        let mut out: Vec<(Wrong, &str)> = self
            .wrong
            .iter()
            .zip(&taken)
            .filter(|(_, t)| **t)
            .map(|((w, l), _)| (*w, l.as_str()))
            .collect();
        out.sort_by_key(|(w, _)| *w);
        out.into_iter().map(|(_, l)| l).collect()
    }

    pub fn ok(&self) -> u64 {
        self.client_verdicts.get("ok").copied().unwrap_or(0)
    }

    /// `unknown` verdicts (the tracer lost events or missed a hop).
    pub fn unknown(&self) -> u64 {
        self.client_verdicts.get("unknown").copied().unwrap_or(0)
            + self.other_roots.get("unknown").copied().unwrap_or(0)
    }

    /// A few lines for the test's output and the bench report.
    pub fn report(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "client lookups by verdict: {:?}; other root lookups of the lab: {:?}",
            self.client_verdicts, self.other_roots
        );
        if !self.real_failures.is_empty() {
            let _ = writeln!(
                s,
                "client queries that really failed (no answer or not NOERROR), by verdict: {:?}",
                self.real_failures
            );
        }
        let _ = writeln!(
            s,
            "false alarms: {}; unknown: {}; merged as retries: {}; holding another socket's query: {}; client queries without their own lookup: {}; lookups matching no query: {}",
            self.false_alarms(),
            self.unknown(),
            self.merged,
            self.other_sockets,
            self.unmatched_queries,
            self.unmatched_lookups
        );
        let _ = writeln!(
            s,
            "latency dnstrace − client (send to kernel receive stamp; min / median / p99 / max): {}; outside ±({TOLERANCE_MS} ms + {TOLERANCE_PCT} %): {}",
            spread(&self.deltas_ms),
            self.latency_mismatches
        );
        let _ = writeln!(
            s,
            "latency dnstrace − client (send to after recv, with the thread's wake-up): {}",
            spread(&self.deltas_user_ms),
        );
        for (c, d, port, id) in self.worst.iter().take(5) {
            let _ = writeln!(
                s,
                "  port {port} id {id}: client {c:.3} ms, dnstrace {d:.3} ms"
            );
        }
        let _ = writeln!(
            s,
            "orphan responses (whole run): {}; events lost in the kernel: {} (ring full {}); DNS packets seen: {}; lookups written (all labs): {}; evicted: {}",
            self.orphan_responses,
            self.lost_events,
            self.ring_full,
            self.dns_seen,
            self.lookups_total,
            self.evicted
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(port: u16, id: u16, sent_ns: u64, recv_ns: Option<u64>) -> ClientQuery {
        ClientQuery {
            port,
            id,
            qname: "www.example.test".to_owned(),
            qtype: "A".to_owned(),
            sent_ns,
            sent_done_ns: Some(sent_ns + 5_000),
            recv_ns: recv_ns.map(|r| r + 50_000),
            recv_kernel_ns: recv_ns,
            rcode: recv_ns.map(|_| "NOERROR".to_owned()),
        }
    }

    fn hop(iface: &str, netns: u64, src: &str, dst: &str, id: u16, qr: bool) -> Value {
        json!({"ts_ns": 0, "iface": iface, "dir": "x", "netns": netns, "src": src, "dst": dst, "id": id, "qr": qr})
    }

    /// A lookup record; NaN latency is written as null (no answer).
    fn lookup(client: &str, verdict: &str, start: u64, ms: f64, hops: Vec<Value>) -> String {
        json!({"type": "lookup", "client": client, "verdict": verdict, "latency_ms": ms,
               "start_ts_ns": start, "retries": 0, "hops": hops})
        .to_string()
    }

    #[test]
    fn compare_matches_queries_and_counts_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let trace = dir.path().join("trace.jsonl");
        let (c, nld) = ("10.244.0.10:1000", "169.254.25.10:53");
        let lines = [
            // Right: the client's query, its latency within the tolerance.
            lookup(c, "ok", 1_000_000, 1.05, vec![
                hop("socket", 7, c, nld, 1, false),
                hop("dtxpod0", 5, c, nld, 1, false),
                hop("socket", 7, nld, c, 1, true),
            ]),
            // Holds another socket's query, and the latency is off.
            lookup(c, "ok", 10_000_000, 5.0, vec![
                hop("socket", 7, c, nld, 2, false),
                hop("dtxpod0", 5, "10.244.0.10:2000", nld, 2, false),
            ]),
            // A forwarder's query on one of the lab's interfaces, as a root.
            lookup("198.51.100.10:3000", "reply_from_unexpected_source", 10_100_000, 0.1, vec![
                hop("dtxcdns0", 5, "198.51.100.10:3000", "10.244.1.10:53", 9, false),
            ]),
            // Another lab's lookup: ignored.
            lookup("10.244.0.10:1000", "dropped", 1_000_000, 1.0, vec![
                hop("dtypod0", 8, c, nld, 1, false),
            ]),
            // The client's query that the path dropped: a right verdict.
            lookup(c, "dropped", 20_000_000, f64::NAN, vec![hop("socket", 7, c, nld, 3, false)]),
            r#"{"type":"summary","lost":0,"kernel":{"ring_full":0,"dns_seen":9},"lookups":{"orphan_responses":2,"evicted":0}}"#.to_owned(),
        ];
        std::fs::write(&trace, lines.join("\n") + "\n").unwrap();
        let run = ClientRun {
            queries: vec![
                q(1000, 1, 1_000_000, Some(2_000_000)),
                q(1000, 2, 10_000_000, Some(11_000_000)),
                q(1000, 3, 20_000_000, None),
            ],
            netns_cookie: Some(7),
            send_secs: 0.02,
        };
        let filter = LabFilter {
            iface_prefix: "dtx".to_owned(),
            cookies: vec![7],
            client_ip: "10.244.0.10".to_owned(),
            client_iface: "dtxpod0".to_owned(),
        };
        let cmp = compare(&trace, Some(&run), &filter).unwrap();
        assert_eq!(cmp.ok(), 2);
        assert_eq!(cmp.false_alarms(), 1, "{}", cmp.report());
        assert_eq!(
            cmp.other_roots.get("reply_from_unexpected_source"),
            Some(&1)
        );
        assert_eq!(cmp.real_failures.get("dropped"), Some(&1));
        assert_eq!(cmp.other_sockets, 1);
        assert_eq!(cmp.merged, 0);
        assert_eq!(cmp.unmatched_queries, 0);
        assert_eq!(cmp.latency_mismatches, 1);
        assert_eq!(cmp.worst[0].2, 1000);
        assert_eq!(cmp.worst[0].3, 2);
        assert_eq!(cmp.orphan_responses, 2);
        assert!((cmp.deltas_ms[0] - 0.05).abs() < 1e-9);
        // The lookup with another socket's query is kept once, as merged,
        // though its latency is off too.
        let kinds: Vec<Wrong> = cmp.wrong.iter().map(|(w, _)| *w).collect();
        assert_eq!(kinds, [Wrong::OtherRoot, Wrong::Merged, Wrong::Verdict]);
        assert_eq!(cmp.sample(3).len(), 3);
        // A share of each kind, in the order of `Wrong`.
        let two = cmp.sample(2);
        assert!(two[0].contains("reply_from_unexpected_source"), "{two:?}");
        assert!(two[1].contains("\"dropped\""), "{two:?}");
    }

    #[test]
    fn query_wire_is_a_plain_recursive_query() {
        let m = query_wire("ns1.example.test.", "AAAA").unwrap();
        assert_eq!(&m[..12], &[0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&m[12..16], b"\x03ns1");
        assert_eq!(&m[m.len() - 4..], &[0, 28, 0, 1]);
        assert!(query_wire("a..b", "A").is_err());
        assert!(query_wire("a", "HINFO").is_err());
    }
}

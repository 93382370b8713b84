//! The reliability suite: dnstrace leaves nothing behind however it ends, never
//! touches what is not its own, and never changes a byte of the traffic.
//!
//! - SIGINT and SIGTERM, tcx and netlink: no filter, no clsact we created, no
//!   program of ours left in the kernel.
//! - SIGKILL: tcx links go with the process; netlink filters stay (the
//!   kernel keeps them), and the next start or `dnstrace cleanup` removes them,
//!   so killed runs never pile up.
//! - Foreign filters (prio 1 / handle 1, one with dnstrace's own handle value,
//!   one at its default priority) and running instances, also in another pid
//!   namespace, are left exactly as they were.
//! - The bytes on the wire and at the sockets are the same with and without
//!   the tracer.
//!
//! Run with `cargo xtask test` (root, `DNSTRACE_BIN`).

use std::{
    collections::BTreeSet,
    fs::{self, File},
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use dnstrace_tests::{
    CmdOutput, Lab, Proc, Signal, Tracer, VethEnd, dnstrace_bin, skip_without_root,
};
use serde_json::Value;

/// dnstrace's netlink filter handles (ingress, egress).
const OUR_HANDLES: [&str; 2] = ["0xd7530001", "0xd7530002"];
const REMOVED_AT_START: &str = "removed a tc filter left by a dnstrace that is gone";
const GONE_WITHIN: Duration = Duration::from_secs(10);

fn ready() -> bool {
    !skip_without_root() && dnstrace_bin().is_some()
}

fn start<'a>(lab: &'a Lab, ns: &str, name: &str, args: &[&str]) -> Tracer<'a> {
    Tracer::start(lab, ns, name, args).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Two namespaces joined by a veth: `<prefix>a0` (10.77.0.1) in `a`, where
/// dnstrace runs, and its peer `<prefix>b0` (10.77.0.2) in `b`.
struct Pair {
    lab: Lab,
    a: String,
    b: String,
    dev: String,
    peer: String,
}

fn pair(tag: &str) -> Pair {
    let lab = Lab::new(tag).expect("lab");
    let a = lab.add_netns("a").expect("netns");
    let b = lab.add_netns("b").expect("netns");
    let dev = format!("{}a0", lab.prefix());
    let peer = format!("{}b0", lab.prefix());
    lab.add_veth(
        &VethEnd {
            ns: &a,
            name: &dev,
            addrs: &["10.77.0.1/24"],
        },
        &VethEnd {
            ns: &b,
            name: &peer,
            addrs: &["10.77.0.2/24"],
        },
    )
    .expect("veth");
    Pair {
        lab,
        a,
        b,
        dev,
        peer,
    }
}

/// The filters (not the priorities' header entries) on `dev`'s `dir` hook, as `tc -j` shows them.
fn filters(lab: &Lab, ns: &str, dev: &str, dir: &str) -> Vec<Value> {
    let out = lab
        .run(ns, &["tc", "-j", "filter", "show", "dev", dev, dir])
        .expect("tc filter show");
    let all: Value = serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out })
        .unwrap_or_else(|e| panic!("tc printed no JSON ({e}): {out}"));
    all.as_array()
        .expect("array")
        .iter()
        .filter(|f| f.get("options").is_some())
        .cloned()
        .collect()
}

/// Filters of dnstrace's programs (whatever their handle).
fn ours(filters: &[Value]) -> Vec<Value> {
    filters
        .iter()
        .filter(|f| {
            f["options"]["bpf_name"]
                .as_str()
                .is_some_and(|n| n.starts_with("dt_tc_"))
        })
        .cloned()
        .collect()
}

fn foreign(filters: &[Value]) -> Vec<Value> {
    let ours = ours(filters);
    filters
        .iter()
        .filter(|f| !ours.contains(f))
        .cloned()
        .collect()
}

/// Program ids of dnstrace's filters on both hooks of `dev`.
fn our_filter_programs(lab: &Lab, ns: &str, dev: &str) -> BTreeSet<u64> {
    ["ingress", "egress"]
        .iter()
        .flat_map(|dir| ours(&filters(lab, ns, dev, dir)))
        .map(|f| f["options"]["prog"]["id"].as_u64().expect("prog id"))
        .collect()
}

fn has_clsact(lab: &Lab, ns: &str, dev: &str) -> bool {
    lab.run(ns, &["tc", "qdisc", "show", "dev", dev])
        .expect("tc qdisc")
        .contains("clsact")
}

/// Every BPF program `pid` holds a file descriptor on (programs and links).
fn held_programs(pid: u32) -> BTreeSet<u64> {
    let mut ids = BTreeSet::new();
    for fd in fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .expect("fdinfo")
        .flatten()
    {
        let info = fs::read_to_string(fd.path()).unwrap_or_default();
        ids.extend(
            info.lines()
                .filter_map(|l| l.strip_prefix("prog_id:"))
                .filter_map(|id| id.trim().parse::<u64>().ok()),
        );
    }
    ids
}

fn program_exists(id: u64) -> bool {
    std::process::Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("bpftool")
        .success()
}

/// Waits until none of `ids` is loaded; returns those still loaded after [`GONE_WITHIN`].
fn wait_programs_gone(ids: &BTreeSet<u64>) -> Vec<u64> {
    let deadline = Instant::now() + GONE_WITHIN;
    loop {
        let left: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|&id| program_exists(id))
            .collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Nothing of dnstrace's pinned on a bpffs (it pins nothing).
fn assert_nothing_pinned() {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for dir in mounts
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .collect::<Vec<_>>()
                .get(1..3)
                .map(|f| (f[0], f[1]))
        })
        .filter(|(_, fstype)| *fstype == "bpf")
        .map(|(dir, _)| dir)
    {
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            assert!(
                !name.contains("dnstrace") && !name.starts_with("dt_"),
                "pinned: {dir}/{name}"
            );
        }
    }
}

/// Starts a netlink-mode tracer on `dev`, SIGKILLs it once attached, and returns
/// (program ids its filters use, its stderr).
fn killed_netlink_run(p: &Pair, name: &str) -> (BTreeSet<u64>, String) {
    let before = our_filter_programs(&p.lab, &p.a, &p.dev);
    let t = start(&p.lab, &p.a, name, &["-i", &p.dev, "--tc-mode", "netlink"]);
    let progs: BTreeSet<u64> = our_filter_programs(&p.lab, &p.a, &p.dev)
        .difference(&before)
        .copied()
        .collect();
    assert_eq!(progs.len(), 2, "{name}: an ingress and an egress program");
    assert!(held_programs(t.proc.pid).is_superset(&progs));
    p.lab.signal(&t.proc, Signal::Kill).expect("SIGKILL");
    p.lab
        .wait_exit(&t.proc, Duration::from_secs(5))
        .expect("wait")
        .expect("dead after SIGKILL");
    (progs, t.stderr())
}

/// `dnstrace cleanup ARGS` in `ns` (setns only, like the tracer); its output.
fn cleanup(lab: &Lab, ns: &str, args: &[&str]) -> CmdOutput {
    let mut cmd = lab
        .cmd_setns(ns, dnstrace_bin().expect("DNSTRACE_BIN"))
        .expect("setns");
    cmd.arg("cleanup").args(args);
    output(cmd)
}

fn output(mut cmd: std::process::Command) -> CmdOutput {
    let out = cmd.output().expect("run");
    CmdOutput {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn assert_bare(p: &Pair, when: &str) {
    for dir in ["ingress", "egress"] {
        let left = filters(&p.lab, &p.a, &p.dev, dir);
        assert!(left.is_empty(), "{when}: {dir} filters left: {left:?}");
    }
}

/// SIGINT and SIGTERM, in tcx and in netlink mode, with the socket hop and
/// drops: afterwards no filter, no clsact (we created it), no program that the
/// process held is still loaded, nothing pinned.
#[test]
fn sigint_and_sigterm_leave_nothing_in_tcx_and_netlink() {
    if !ready() {
        return;
    }
    let p = pair("sig");
    for mode in ["tcx", "netlink"] {
        for signal in [Signal::Int, Signal::Term] {
            let when = format!("{mode}, {signal:?}");
            assert!(!has_clsact(&p.lab, &p.a, &p.dev), "{when}: clean before");
            let t = start(
                &p.lab,
                &p.a,
                &format!("{mode}-{signal:?}"),
                &["-i", &p.dev, "--tc-mode", mode, "--socket-hop", "--drops"],
            );
            let held = held_programs(t.proc.pid);
            // tc in and out, socket in and out, and the drop program.
            assert!(held.len() >= 5, "{when}: programs held: {held:?}");
            let nl = our_filter_programs(&p.lab, &p.a, &p.dev);
            assert_eq!(
                nl.is_empty(),
                mode == "tcx",
                "{when}: netlink filters {nl:?}"
            );
            t.stop(signal).unwrap_or_else(|e| panic!("{when}: {e:#}"));
            assert_bare(&p, &when);
            assert!(
                !has_clsact(&p.lab, &p.a, &p.dev),
                "{when}: the clsact dnstrace added is removed"
            );
            let left = wait_programs_gone(&held);
            assert!(left.is_empty(), "{when}: programs still loaded: {left:?}");
            assert_nothing_pinned();
        }
    }
}

/// A SIGKILLed netlink run leaves its filters (and through them its programs
/// and ring): the kernel keeps them. The next run removes them before
/// attaching, says so, and takes the same priority again, so killed runs do
/// not pile up; a run in tcx mode cleans them too.
#[test]
fn sigkilled_netlink_runs_are_removed_by_the_next_start() {
    if !ready() {
        return;
    }
    let p = pair("kil");
    let (first, _) = killed_netlink_run(&p, "k1");
    assert!(
        first.iter().all(|&id| program_exists(id)),
        "the kernel keeps a killed run's netlink filters and their programs"
    );
    let (second, stderr) = killed_netlink_run(&p, "k2");
    for dir in ["ingress", "egress"] {
        let f = ours(&filters(&p.lab, &p.a, &p.dev, dir));
        assert_eq!(f.len(), 1, "{dir}: killed runs pile up: {f:#?}");
        let handle = f[0]["options"]["handle"].as_str().unwrap_or_default();
        assert!(OUR_HANDLES.contains(&handle), "{dir}: handle {handle}");
        assert_eq!(
            f[0]["pref"], 53,
            "{dir}: the first run's priority is free again"
        );
    }
    assert_eq!(
        stderr.matches(REMOVED_AT_START).count(),
        2,
        "the second run says what it removed: {stderr}"
    );
    let left = wait_programs_gone(&first);
    assert!(
        left.is_empty(),
        "the first run's programs unloaded: {left:?}"
    );

    // A tcx run removes a killed netlink run's filters as well, and its own
    // links leave with it.
    let t = start(&p.lab, &p.a, "tcx", &["-i", &p.dev, "--tc-mode", "tcx"]);
    assert_bare(&p, "a tcx run after a killed netlink run");
    let held = held_programs(t.proc.pid);
    let trace = t.stop(Signal::Int).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        trace.stderr.matches(REMOVED_AT_START).count(),
        2,
        "{}",
        trace.stderr
    );
    let left = wait_programs_gone(&second.union(&held).copied().collect());
    assert!(left.is_empty(), "programs still loaded: {left:?}");
    assert_bare(&p, "after the tcx run");
}

/// `dnstrace cleanup` finds a killed run's filters; `--dry-run` only says so,
/// without it they go (and their programs and ring with them); a second
/// cleanup finds nothing.
#[test]
fn cleanup_command_removes_a_killed_runs_filters() {
    if !ready() {
        return;
    }
    let p = pair("cln");
    let (progs, _) = killed_netlink_run(&p, "k");
    let dry = cleanup(&p.lab, &p.a, &["--dry-run"]);
    assert!(dry.success(), "{dry:?}");
    assert_eq!(
        dry.stdout.matches("would remove: ").count(),
        2,
        "{}",
        dry.stdout
    );
    assert!(dry.stdout.contains(&p.dev), "{}", dry.stdout);
    assert_eq!(
        our_filter_programs(&p.lab, &p.a, &p.dev),
        progs,
        "dry run removes nothing"
    );

    let out = cleanup(&p.lab, &p.a, &["-i", &p.dev]);
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout.matches("removed: ").count(), 2, "{}", out.stdout);
    assert_bare(&p, "after dnstrace cleanup");
    let left = wait_programs_gone(&progs);
    assert!(left.is_empty(), "programs still loaded: {left:?}");

    let again = cleanup(&p.lab, &p.a, &[]);
    assert!(again.success(), "{again:?}");
    assert_eq!(again.stdout.trim(), "no dnstrace tc filters found");
    let missing = cleanup(&p.lab, &p.a, &["-i", "nosuchif0"]);
    assert!(
        !missing.success(),
        "an unknown interface is an error: {missing:?}"
    );
}

/// A SIGKILLed tcx run leaves nothing: its links and programs go with the
/// process, and neither the next start nor `dnstrace cleanup` finds anything.
#[test]
fn sigkilled_tcx_run_leaves_nothing() {
    if !ready() {
        return;
    }
    let p = pair("ktx");
    let t = start(
        &p.lab,
        &p.a,
        "k",
        &["-i", &p.dev, "--tc-mode", "tcx", "--socket-hop", "--drops"],
    );
    let held = held_programs(t.proc.pid);
    assert!(held.len() >= 5, "programs held: {held:?}");
    p.lab.signal(&t.proc, Signal::Kill).expect("SIGKILL");
    p.lab
        .wait_exit(&t.proc, Duration::from_secs(5))
        .expect("wait")
        .expect("dead after SIGKILL");
    let left = wait_programs_gone(&held);
    assert!(
        left.is_empty(),
        "programs still loaded after SIGKILL: {left:?}"
    );
    assert_bare(&p, "after SIGKILL");
    assert!(!has_clsact(&p.lab, &p.a, &p.dev), "tcx adds no clsact");
    let out = cleanup(&p.lab, &p.a, &[]);
    assert_eq!(out.stdout.trim(), "no dnstrace tc filters found", "{out:?}");
    let t = start(&p.lab, &p.a, "next", &["-i", &p.dev, "--tc-mode", "tcx"]);
    let trace = t.stop(Signal::Term).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(!trace.stderr.contains(REMOVED_AT_START), "{}", trace.stderr);
}

/// `dnstrace watch --output json --packets … ARGS` in a new pid namespace
/// (`unshare -p -f --mount-proc`), entered into `ns` with setns only: it cannot
/// see the other instances' processes.
fn start_in_pid_namespace(lab: &Lab, ns: &str, name: &str, args: &[&str]) -> (Proc, String) {
    let ready = lab.dir().join(format!("{name}.ready"));
    let err = lab.dir().join(format!("{name}.err"));
    let mut cmd = lab.cmd_setns(ns, "unshare").expect("setns");
    cmd.args(["-p", "-f", "--mount-proc"])
        .arg(dnstrace_bin().expect("DNSTRACE_BIN"))
        .args(["watch", "--output", "json", "--packets", "--ready-file"])
        .arg(&ready)
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(lab.dir().join(format!("{name}.jsonl"))).expect("out"))
        .stderr(File::create(&err).expect("err"));
    let proc = lab.spawn(name, cmd).expect("spawn");
    lab.wait_for_file(&proc, &ready, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e:#}: {}", fs::read_to_string(&err).unwrap_or_default()));
    (proc, err.display().to_string())
}

/// Foreign filters (prio 1 handle 1, one at dnstrace's default priority, one
/// that even uses dnstrace's handle value), a running dnstrace, and another one
/// in its own pid namespace are all left alone: by a new run that cleans up a
/// killed one, and by `dnstrace cleanup` run from yet another pid namespace.
#[test]
fn foreign_filters_and_running_instances_are_untouched() {
    if !ready() {
        return;
    }
    let p = pair("frn");
    let (lab, ns, dev) = (&p.lab, p.a.as_str(), p.dev.as_str());
    lab.run(ns, &["tc", "qdisc", "add", "dev", dev, "clsact"])
        .expect("clsact");
    // Classic BPF that never matches ("ret 0"): classification continues.
    for (dir, prio, handle) in [
        ("ingress", "1", "1"),
        ("egress", "1", "1"),
        ("ingress", "53", "0xd7530001"),
        ("egress", "53", "0x35"),
    ] {
        lab.run(
            ns,
            &[
                "tc",
                "filter",
                "add",
                "dev",
                dev,
                dir,
                "prio",
                prio,
                "handle",
                handle,
                "bpf",
                "bytecode",
                "1,6 0 0 0,",
            ],
        )
        .unwrap_or_else(|e| panic!("foreign filter {dir} prio {prio}: {e:#}"));
    }
    let theirs = |dir| foreign(&filters(lab, ns, dev, dir));
    let before = (theirs("ingress"), theirs("egress"));
    assert_eq!((before.0.len(), before.1.len()), (2, 2));

    let server: std::net::IpAddr = "10.77.0.2".parse().unwrap();
    let _dns = lab
        .start_dnsmasq(&p.b, "dnsmasq", &[server], &["--address=/r.test/10.0.0.1"])
        .expect("dnsmasq");
    let running = start(lab, ns, "running", &["-i", dev, "--tc-mode", "netlink"]);
    let (_, _) = killed_netlink_run(&p, "killed");
    let (other, other_err) =
        start_in_pid_namespace(lab, ns, "pidns", &["-i", dev, "--tc-mode", "netlink"]);
    let other_stderr = fs::read_to_string(&other_err).unwrap_or_default();
    assert_eq!(
        other_stderr.matches(REMOVED_AT_START).count(),
        2,
        "the killed run's filters, and only those: {other_stderr}"
    );
    for dir in ["ingress", "egress"] {
        let f = ours(&filters(lab, ns, dev, dir));
        assert_eq!(
            f.len(),
            2,
            "{dir}: the two running instances' filters: {f:#?}"
        );
        let prios: BTreeSet<u64> = f.iter().filter_map(|f| f["pref"].as_u64()).collect();
        assert_eq!(prios.len(), 2, "{dir}: each at its own priority: {f:#?}");
        assert!(
            !prios.contains(&1) && !prios.contains(&53),
            "{dir}: free ones: {prios:?}"
        );
    }

    // From a third pid namespace, where neither instance is visible in /proc.
    let mut cmd = lab.cmd_setns(ns, "unshare").expect("setns");
    cmd.args(["-p", "-f", "--mount-proc"])
        .arg(dnstrace_bin().expect("DNSTRACE_BIN"))
        .arg("cleanup");
    let out = output(cmd);
    assert!(out.success(), "{out:?}");
    assert_eq!(
        out.stdout
            .matches("kept (a running dnstrace holds it)")
            .count(),
        4,
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("removed"), "{}", out.stdout);
    assert_eq!(
        (theirs("ingress"), theirs("egress")),
        before,
        "foreign filters unchanged"
    );

    // Both instances still trace.
    let dig = lab
        .run(
            ns,
            &[
                "dig",
                "+short",
                "+time=2",
                "+tries=1",
                "@10.77.0.2",
                "www.r.test",
            ],
        )
        .expect("dig");
    assert_eq!(dig.trim(), "10.0.0.1");
    running
        .wait_packet(|p| p["qname"] == "www.r.test." && p["dir"] == "egress")
        .unwrap_or_else(|e| panic!("{e:#}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let other_out = lab.dir().join("pidns.jsonl");
    while !fs::read_to_string(&other_out)
        .unwrap_or_default()
        .contains("www.r.test.")
    {
        assert!(
            Instant::now() < deadline,
            "the pid-namespace instance saw the query"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let status = lab
        .stop(&other, Signal::Int, Duration::from_secs(10))
        .expect("stop");
    assert!(
        status.success(),
        "{status}: {}",
        fs::read_to_string(&other_err).unwrap_or_default()
    );
    running
        .stop(Signal::Term)
        .unwrap_or_else(|e| panic!("{e:#}"));
    for dir in ["ingress", "egress"] {
        let f = filters(lab, ns, dev, dir);
        assert!(ours(&f).is_empty(), "{dir}: ours gone: {f:#?}");
    }
    assert_eq!(
        (theirs("ingress"), theirs("egress")),
        before,
        "foreign filters unchanged"
    );
    assert!(
        has_clsact(lab, ns, dev),
        "the clsact we did not create stays"
    );
}

// ---- traffic ----

/// Runs `f` on a thread inside netns `ns`: sockets it creates belong to `ns`.
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let file = File::open(Path::new("/run/netns").join(ns)).expect("netns file");
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: plain syscall on a valid fd; it only moves this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("netns thread")
    })
}

/// Datagrams of every kind a tracer may look at: DNS queries and answers, a
/// hostile one, empty, tiny, and large.
fn payloads() -> Vec<Vec<u8>> {
    let mut query = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
    for label in ["www", "example", "test"] {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    query.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
    let mut answer = query.clone();
    answer[2] = 0x81;
    answer[3] = 0x80;
    // A compression pointer to itself.
    let hostile = vec![
        0xab, 0xcd, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1,
    ];
    let large: Vec<u8> = (0..1400u32).map(|i| (i * 7 + 3) as u8).collect();
    vec![query, answer, hostile, vec![], vec![0x42], large]
}

/// Sends every payload from ns a (10.77.0.1:40053) to 10.77.0.2 on ports 53
/// and 5300 and back, and one DNS-over-TCP exchange; checks that each socket
/// received exactly what was sent.
fn exchange(p: &Pair) {
    let (srv53, srv5300, listener) = in_netns(&p.b, || {
        (
            UdpSocket::bind("10.77.0.2:53").expect("bind 53"),
            UdpSocket::bind("10.77.0.2:5300").expect("bind 5300"),
            TcpListener::bind("10.77.0.2:53").expect("listen 53"),
        )
    });
    let client = in_netns(&p.a, || {
        UdpSocket::bind("10.77.0.1:40053").expect("bind client")
    });
    for s in [&srv53, &srv5300, &client] {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    let mut buf = vec![0u8; 4096];
    for (server, port) in [(&srv53, 53), (&srv5300, 5300)] {
        for payload in payloads() {
            client
                .send_to(
                    &payload,
                    SocketAddr::from((Ipv4Addr::new(10, 77, 0, 2), port)),
                )
                .expect("send");
            let (n, from) = server.recv_from(&mut buf).expect("server receives");
            assert_eq!(&buf[..n], &payload[..], "a → b, port {port}");
            server.send_to(&payload, from).expect("reply");
            let (n, _) = client.recv_from(&mut buf).expect("client receives");
            assert_eq!(&buf[..n], &payload[..], "b → a, port {port}");
        }
    }
    // DNS over TCP: two length-prefixed messages, echoed back.
    let mut stream_bytes = Vec::new();
    for m in &payloads()[..2] {
        stream_bytes.extend_from_slice(&(m.len() as u16).to_be_bytes());
        stream_bytes.extend_from_slice(m);
    }
    let mut tcp = in_netns(&p.a, || {
        TcpStream::connect("10.77.0.2:53").expect("connect")
    });
    let (mut conn, _) = listener.accept().expect("accept");
    tcp.write_all(&stream_bytes).expect("write");
    tcp.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut got = Vec::new();
    conn.read_to_end(&mut got).expect("server reads");
    assert_eq!(got, stream_bytes, "TCP a → b");
    conn.write_all(&got).expect("echo");
    drop(conn);
    let mut back = Vec::new();
    tcp.read_to_end(&mut back).expect("client reads");
    assert_eq!(back, stream_bytes, "TCP b → a");
}

/// The IPv4 packets in a pcap file (Ethernet), with the IP id and header
/// checksum zeroed (the kernel picks a new id per datagram).
fn ip_packets(file: &Path) -> Vec<Vec<u8>> {
    let data = fs::read(file).expect("pcap");
    assert!(data.len() >= 24, "pcap header");
    let le = data[..4] == [0xd4, 0xc3, 0xb2, 0xa1];
    let u32_at = |o: usize| {
        let b: [u8; 4] = data[o..o + 4].try_into().unwrap();
        if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    assert_eq!(u32_at(20), 1, "Ethernet");
    let mut packets = Vec::new();
    let mut off = 24;
    while off + 16 <= data.len() {
        let cap = u32_at(off + 8) as usize;
        let frame = &data[off + 16..(off + 16 + cap).min(data.len())];
        off += 16 + cap;
        if frame.len() > 34 && frame[12..14] == [0x08, 0x00] {
            let mut ip = frame[14..].to_vec();
            ip[4..6].fill(0);
            ip[10..12].fill(0);
            packets.push(ip);
        }
    }
    packets
}

/// What crossed the peer's end of the veth during one exchange, as tcpdump saw it.
fn captured_exchange(p: &Pair, name: &str) -> Vec<Vec<u8>> {
    let file = p.lab.dir().join(format!("{name}.pcap"));
    let mut cmd = p.lab.cmd_setns(&p.b, "tcpdump").expect("setns");
    cmd.args([
        "-i",
        &p.peer,
        "--immediate-mode",
        "-U",
        "-n",
        "-s",
        "0",
        "-w",
    ])
    .arg(&file)
    .arg("udp or tcp");
    let tcpdump = p
        .lab
        .spawn_logged(&format!("tcpdump-{name}"), cmd)
        .expect("tcpdump");
    p.lab
        .wait_for_log(&tcpdump, "listening on", Duration::from_secs(10))
        .expect("tcpdump started");
    exchange(p);
    std::thread::sleep(Duration::from_millis(200));
    p.lab
        .stop(&tcpdump, Signal::Int, Duration::from_secs(5))
        .expect("stop tcpdump");
    ip_packets(&file)
}

/// UDP payloads and TCP data of `packets`, in order (TCP ports and sequence
/// numbers differ between runs; the data must not).
fn l4_data(packets: &[Vec<u8>]) -> Vec<Vec<u8>> {
    packets
        .iter()
        .filter_map(|ip| {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let l4 = &ip[ihl..];
            match ip[9] {
                17 => Some(l4.to_vec()),
                6 => {
                    let doff = usize::from(l4[12] >> 4) * 4;
                    (l4.len() > doff).then(|| l4[doff..].to_vec())
                }
                _ => None,
            }
        })
        .collect()
}

/// Traffic through a traced interface is byte-for-byte what it is without
/// the tracer, in tcx and netlink mode (with the socket hop on): captured on
/// the far end of the veth, and as received by the sockets at both ends.
#[test]
fn traffic_is_unchanged_byte_for_byte() {
    if !ready() {
        return;
    }
    let p = pair("byt");
    let baseline = captured_exchange(&p, "none");
    let udp = |pk: &[Vec<u8>]| {
        pk.iter()
            .filter(|ip| ip[9] == 17)
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        udp(&baseline).len(),
        2 * 2 * payloads().len(),
        "every datagram captured"
    );
    for mode in ["tcx", "netlink"] {
        let t = start(
            &p.lab,
            &p.a,
            mode,
            &["-i", &p.dev, "--tc-mode", mode, "--socket-hop"],
        );
        let traced = captured_exchange(&p, mode);
        let trace = t.stop(Signal::Int).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(
            trace.stderr.contains(&format!("via {mode}")),
            "{}",
            trace.stderr
        );
        let seen = |dir: &str| {
            trace
                .packets
                .iter()
                .filter(|pk| pk["iface"] == p.dev.as_str() && pk["dir"] == dir)
                .count()
        };
        assert!(
            // Port 53 only: every datagram each way, plus the TCP segments.
            seen("egress") > payloads().len() && seen("ingress") > payloads().len(),
            "{mode}: the tracer was on the path ({} egress, {} ingress)",
            seen("egress"),
            seen("ingress")
        );
        assert_eq!(
            udp(&traced),
            udp(&baseline),
            "{mode}: UDP datagrams, headers included"
        );
        assert_eq!(
            l4_data(&traced),
            l4_data(&baseline),
            "{mode}: UDP and TCP data"
        );
    }
}

//! Privileged tests of how dnstrace fails: bad values are refused before anything
//! is attached, an error after attaching leaves nothing behind, and failed output
//! (a full disk, a closed pipe, a full `--pcap` filesystem) is reported with the
//! documented exit status. Run them with `cargo xtask test` (root).

use std::{
    fs::{self, File},
    io::{BufRead as _, BufReader},
    net::IpAddr,
    os::{
        fd::{FromRawFd as _, OwnedFd},
        unix::process::ExitStatusExt as _,
    },
    path::Path,
    process::{ExitStatus, Stdio},
    time::{Duration, Instant},
};

use dnstrace_tests::{Lab, Signal, Tracer, VethEnd, dnstrace_bin, skip_without_root};
use serde_json::Value;

fn ready() -> bool {
    !skip_without_root() && dnstrace_bin().is_some()
}

/// A lab with namespaces `a` and `b` joined by `n` veth pairs: `a`'s ends are returned,
/// the i-th with 10.54.i.1/24 (its peer in `b` has .2).
fn pairs(tag: &str, n: usize) -> (Lab, String, String, Vec<String>) {
    let lab = Lab::new(tag).expect("lab");
    let a = lab.add_netns("a").expect("netns");
    let b = lab.add_netns("b").expect("netns");
    let mut devs = Vec::new();
    for i in 0..n {
        let dev = format!("{}a{i}", lab.prefix());
        let peer = format!("{}b{i}", lab.prefix());
        let (ours, theirs) = (format!("10.54.{i}.1/24"), format!("10.54.{i}.2/24"));
        lab.add_veth(
            &VethEnd {
                ns: &a,
                name: &dev,
                addrs: &[&ours],
            },
            &VethEnd {
                ns: &b,
                name: &peer,
                addrs: &[&theirs],
            },
        )
        .expect("veth");
        devs.push(dev);
    }
    (lab, a, b, devs)
}

fn tc_filters(lab: &Lab, ns: &str, dev: &str, dir: &str) -> String {
    lab.run(ns, &["tc", "filter", "show", "dev", dev, dir])
        .expect("tc filter show")
}

fn has_clsact(lab: &Lab, ns: &str, dev: &str) -> bool {
    lab.run(ns, &["tc", "qdisc", "show", "dev", dev])
        .expect("tc qdisc")
        .contains("clsact")
}

/// Nothing of ours on `dev`: no clsact, no filter either way.
fn assert_clean(lab: &Lab, ns: &str, dev: &str, what: &str) {
    assert_eq!(tc_filters(lab, ns, dev, "ingress").trim(), "", "{what}");
    assert_eq!(tc_filters(lab, ns, dev, "egress").trim(), "", "{what}");
    assert!(!has_clsact(lab, ns, dev), "{what}: clsact left on {dev}");
}

/// Runs `dnstrace <args>` in `ns` to its end (at most 20 s): (status, stderr).
fn run_to_end(lab: &Lab, ns: &str, name: &str, args: &[&str]) -> (ExitStatus, String) {
    let err = lab.dir().join(format!("{name}.err"));
    let mut cmd = lab.cmd_setns(ns, dnstrace_bin().unwrap()).expect("cmd");
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&err).expect("stderr file"));
    let proc = lab.spawn(name, cmd).expect("spawn");
    let status = lab
        .wait_exit(&proc, Duration::from_secs(20))
        .expect("wait")
        .unwrap_or_else(|| panic!("{name}: dnstrace still running after 20 s"));
    (status, fs::read_to_string(&err).unwrap_or_default())
}

/// Starts `dnstrace watch <args> --ready-file …` in `ns` with stdout on `stdout`,
/// and waits until it is ready.
fn spawn_ready(
    lab: &Lab,
    ns: &str,
    name: &str,
    args: &[&str],
    stdout: Stdio,
) -> (dnstrace_tests::Proc, std::path::PathBuf) {
    let err = lab.dir().join(format!("{name}.err"));
    let ready = lab.dir().join(format!("{name}.ready"));
    let mut cmd = lab.cmd_setns(ns, dnstrace_bin().unwrap()).expect("cmd");
    cmd.arg("watch")
        .args(args)
        .arg("--ready-file")
        .arg(&ready)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(File::create(&err).expect("stderr file"));
    let proc = lab.spawn(name, cmd).expect("spawn");
    lab.wait_for_file(&proc, &ready, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e:#}: {}", fs::read_to_string(&err).unwrap_or_default()));
    (proc, err)
}

/// One query from `ns` to `server` (answered or not), so that the tracer has output.
fn query(lab: &Lab, ns: &str, server: IpAddr, names: &[String]) {
    let at = format!("@{server}");
    let mut argv = vec!["dig", "+tries=1", "+time=1", at.as_str()];
    argv.extend(names.iter().map(String::as_str));
    // No server needs to answer: the query packets are the tracer's input.
    let _ = lab.exec(ns, &argv).expect("dig");
}

/// Each value that used to panic (exit 101, sometimes after attaching) and each
/// out-of-range value is refused with exit 2 and a message naming the flag, and
/// nothing is attached. The edge value --tc-priority 65535 works.
#[test]
fn bad_values_exit_2_and_attach_nothing() {
    if !ready() {
        return;
    }
    let (lab, a, _b, devs) = pairs("fbad", 1);
    let dev = &devs[0];
    let huge = "99999999999999999999";
    let cases: &[(&[&str], &str)] = &[
        (&["--duration", huge], "--duration"),
        (&["--timeout", huge], "--timeout"),
        (&["--upstream-every", huge], "--upstream-every"),
        (&["--queue", "18446744073709551615"], "--queue"),
        (&["--queue", "0"], "--queue"),
        (&["--tc-priority", "65536"], "--tc-priority"),
        (&["--tc-priority", "1"], "--tc-priority"),
        (&["--ring-size", "5000"], "--ring-size"),
        (&["--ring-size", "4294967296"], "--ring-size"),
        (&["--snaplen", "9000"], "--snaplen"),
        (&["--port", "0"], "--port"),
        (&["--timeout", "0"], "--timeout"),
        (&["-i", "no/such"], "--iface"),
    ];
    for (i, (bad, flag)) in cases.iter().enumerate() {
        let mut args = vec!["watch", "-i", dev, "--tc-mode", "netlink"];
        args.extend_from_slice(bad);
        let (status, stderr) = run_to_end(&lab, &a, &format!("bad{i}"), &args);
        assert_eq!(status.code(), Some(2), "{bad:?}: {status}: {stderr}");
        assert!(stderr.contains(flag), "{bad:?} names {flag}: {stderr}");
        assert!(!stderr.contains("panicked"), "{bad:?}: {stderr}");
        assert_clean(&lab, &a, dev, &format!("after {bad:?}"));
    }
    // Nothing to capture is a usage error too.
    let (status, stderr) = run_to_end(&lab, &a, "nothing", &["watch"]);
    assert_eq!(status.code(), Some(2), "{stderr}");

    let t = Tracer::start(
        &lab,
        &a,
        "prio",
        &["-i", dev, "--tc-mode", "netlink", "--tc-priority", "65535"],
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let filters = tc_filters(&lab, &a, dev, "ingress");
    assert!(filters.contains("pref 65535 "), "{filters}");
    t.stop(Signal::Int).unwrap_or_else(|e| panic!("{e:#}"));
    assert_clean(&lab, &a, dev, "after --tc-priority 65535");
}

/// An attach that fails after others succeeded removes those (filters and the clsact
/// we added), leaves someone else's filters alone and writes no ready file; so does a
/// --pcap that cannot be created after attaching.
#[test]
fn error_after_attaching_leaves_nothing_attached() {
    if !ready() {
        return;
    }
    let (lab, a, _b, devs) = pairs("fatt", 2);
    let (first, second) = (&devs[0], &devs[1]);
    // Someone else's filters hold every priority dnstrace may take on the second
    // interface's ingress (65530 and up).
    lab.run(&a, &["tc", "qdisc", "add", "dev", second, "clsact"])
        .expect("clsact");
    for prio in 65530..=65535 {
        let rule = format!("filter add dev {second} ingress prio {prio} u32 match u32 0 0");
        let mut argv = vec!["tc"];
        argv.extend(rule.split_whitespace());
        lab.run(&a, &argv).expect("foreign filter");
    }
    let foreign = tc_filters(&lab, &a, second, "ingress");
    let ready_file = lab.dir().join("att.ready");
    let ready_arg = ready_file.to_str().unwrap();
    let (status, stderr) = run_to_end(
        &lab,
        &a,
        "att",
        &[
            "watch",
            "-i",
            first,
            "-i",
            second,
            "--tc-mode",
            "netlink",
            "--tc-priority",
            "65530",
            "--ready-file",
            ready_arg,
        ],
    );
    assert_eq!(status.code(), Some(1), "{status}: {stderr}");
    assert!(stderr.contains(second.as_str()), "names {second}: {stderr}");
    assert!(!ready_file.exists(), "no ready file after a failure");
    assert_clean(&lab, &a, first, "first interface after the second failed");
    assert_eq!(
        tc_filters(&lab, &a, second, "ingress"),
        foreign,
        "foreign filters untouched"
    );
    assert!(has_clsact(&lab, &a, second), "the foreign clsact stays");

    let (status, stderr) = run_to_end(
        &lab,
        &a,
        "pcap",
        &[
            "watch",
            "-i",
            first,
            "--tc-mode",
            "netlink",
            "--pcap",
            "/nonexistent-dnstrace-dir/x.pcapng",
            "--ready-file",
            ready_arg,
        ],
    );
    assert_eq!(status.code(), Some(1), "{status}: {stderr}");
    assert!(stderr.contains("pcapng"), "{stderr}");
    assert!(!ready_file.exists(), "no ready file after a failure");
    assert_clean(&lab, &a, first, "after --pcap failed");
}

/// `-i X` given twice (or around another) hooks X once: each packet is seen once.
#[test]
fn interface_given_twice_captures_each_packet_once() {
    if !ready() {
        return;
    }
    let (lab, a, _b, devs) = pairs("ftwi", 1);
    let dev = &devs[0];
    let server: IpAddr = "10.54.0.2".parse().unwrap();
    for (n, args) in [
        &["-i", dev, "-i", dev][..],
        &["-i", dev, "-i", "lo", "-i", dev],
    ]
    .iter()
    .enumerate()
    {
        let t =
            Tracer::start(&lab, &a, &format!("twice{n}"), args).unwrap_or_else(|e| panic!("{e:#}"));
        let qname = format!("twice{n}.test");
        query(&lab, &a, server, std::slice::from_ref(&qname));
        t.wait_packet(|p| p["qname"] == format!("{qname}."))
            .unwrap_or_else(|e| panic!("{e:#}"));
        std::thread::sleep(Duration::from_millis(300));
        let trace = t.stop(Signal::Int).unwrap_or_else(|e| panic!("{e:#}"));
        let seen: Vec<&Value> = trace
            .packets_for(&qname)
            .into_iter()
            .filter(|p| p["iface"] == dev.as_str() && p["dir"] == "egress")
            .collect();
        assert_eq!(seen.len(), 1, "{args:?}: one query, seen once: {seen:#?}");
    }
}

/// stdout on a full device: exit 1 with a message naming stdout, no advice about
/// the ring size, nothing left attached.
#[test]
fn stdout_full_is_an_error_that_names_stdout() {
    if !ready() {
        return;
    }
    let (lab, a, _b, devs) = pairs("ffu", 1);
    let dev = &devs[0];
    let full = File::options()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let (proc, err) = spawn_ready(
        &lab,
        &a,
        "full",
        &[
            "-i",
            dev,
            "--tc-mode",
            "netlink",
            "--output",
            "text",
            "--packets",
        ],
        Stdio::from(full),
    );
    query(
        &lab,
        &a,
        "10.54.0.2".parse().unwrap(),
        &["full.test".to_owned()],
    );
    let status = lab
        .wait_exit(&proc, Duration::from_secs(10))
        .expect("wait")
        .unwrap_or_else(|| panic!("still running with stdout full"));
    let stderr = fs::read_to_string(&err).unwrap_or_default();
    assert_eq!(status.code(), Some(1), "{status}: {stderr}");
    assert!(
        stderr.contains("stdout") && stderr.contains("No space left on device"),
        "{stderr}"
    );
    assert!(!stderr.contains("--ring-size"), "{stderr}");
    assert_clean(&lab, &a, dev, "after stdout failed");
}

/// `dnstrace watch … | head -1`: once the reader has gone, dnstrace detaches and
/// ends by SIGPIPE at once, even with nothing more to write, and says nothing of
/// lost events.
#[test]
fn closed_pipe_ends_promptly_and_quietly() {
    if !ready() {
        return;
    }
    let (lab, a, _b, devs) = pairs("fpi", 1);
    let dev = &devs[0];
    let mut fds = [0; 2];
    // SAFETY: a valid array of two fds for pipe2 to fill.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: pipe2 just created both fds, and nothing else owns them.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let (proc, err) = spawn_ready(
        &lab,
        &a,
        "pipe",
        &[
            "-i",
            dev,
            "--tc-mode",
            "netlink",
            "--output",
            "text",
            "--packets",
        ],
        Stdio::from(write),
    );
    query(
        &lab,
        &a,
        "10.54.0.2".parse().unwrap(),
        &["pipe.test".to_owned()],
    );
    let mut reader = BufReader::new(File::from(read));
    let mut line = String::new();
    reader.read_line(&mut line).expect("a first line");
    assert!(!line.is_empty());
    // What `head -1` does next: exit.
    drop(reader);
    let closed = Instant::now();
    let status = lab
        .wait_exit(&proc, Duration::from_secs(10))
        .expect("wait")
        .unwrap_or_else(|| panic!("still running 10 s after its reader went away"));
    let took = closed.elapsed();
    let stderr = fs::read_to_string(&err).unwrap_or_default();
    assert_eq!(status.signal(), Some(libc::SIGPIPE), "{status}: {stderr}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(!stderr.contains("lost"), "{stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
    assert_clean(&lab, &a, dev, "after the pipe closed");
    eprintln!("exited {took:?} after the reader went away");
}

/// --pcap on a filesystem that fills up: the run ends non-zero, the summary keeps
/// its `pcap` section with the error, and stdout's records are complete.
#[test]
fn pcap_on_a_full_filesystem_fails_with_the_error_in_the_summary() {
    if !ready() {
        return;
    }
    let (lab, a, b, devs) = pairs("fpfs", 1);
    let dev = &devs[0];
    let server: IpAddr = "10.54.0.2".parse().unwrap();
    let _dns = lab
        .start_dnsmasq_quiet(&b, "dnsmasq", &[server], &["--address=/full.test/10.0.0.1"])
        .expect("dnsmasq");
    // A 16 KiB tmpfs, mounted in dnstrace's own mount namespace only.
    let mnt = lab.dir().join("small");
    fs::create_dir_all(&mnt).expect("mount point");
    let pcap = mnt.join("x.pcapng");
    let out = lab.dir().join("pfs.jsonl");
    let err = lab.dir().join("pfs.err");
    let ready_file = lab.dir().join("pfs.ready");
    let script = format!(
        "mount -t tmpfs -o size=16k dnstrace-test '{}' && exec \"$0\" \"$@\"",
        mnt.display()
    );
    let mut cmd = lab.cmd_setns(&a, "unshare").expect("cmd");
    cmd.args(["-m", "--propagation", "private", "sh", "-c", &script])
        .arg(dnstrace_bin().unwrap())
        .args([
            "watch",
            "--output",
            "json",
            "-i",
            dev,
            "--tc-mode",
            "netlink",
        ])
        .arg("--pcap")
        .arg(&pcap)
        .arg("--ready-file")
        .arg(&ready_file)
        .stdin(Stdio::null())
        .stdout(File::create(&out).expect("stdout file"))
        .stderr(File::create(&err).expect("stderr file"));
    let proc = lab.spawn("pfs", cmd).expect("spawn");
    lab.wait_for_file(&proc, &ready_file, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e:#}: {}", fs::read_to_string(&err).unwrap_or_default()));
    // About 300 bytes per packet in the file: 2 × 80 lookups are well over 16 KiB.
    let names: Vec<String> = (0..80).map(|i| format!("q{i}.full.test")).collect();
    query(&lab, &a, server, &names);
    std::thread::sleep(Duration::from_millis(500));
    let status = lab
        .stop(&proc, Signal::Int, Duration::from_secs(10))
        .expect("stop");
    let stderr = fs::read_to_string(&err).unwrap_or_default();
    assert_eq!(status.code(), Some(1), "{status}: {stderr}");
    assert!(
        stderr.contains("pcapng") && stderr.contains("No space left"),
        "{stderr}"
    );
    let text = fs::read_to_string(&out).expect("stdout");
    let summary: Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["type"] == "summary")
        .unwrap_or_else(|| panic!("no summary: {stderr}"));
    let error = summary["pcap"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("No space left"), "{}", summary["pcap"]);
    assert!(
        summary["lookups"]["finished"].as_u64().unwrap_or(0) >= 80,
        "the capture went on: {summary}"
    );
    assert!(
        !Path::new(&pcap).exists(),
        "the tmpfs was private to dnstrace"
    );
    assert_clean(&lab, &a, dev, "after the pcap failed");
}

/// A full stderr never panics (it used to, after attaching, leaving the clsact
/// behind): the run goes on, detaches and ends as usual.
#[test]
fn full_stderr_does_not_stop_the_run() {
    if !ready() {
        return;
    }
    let (lab, a, _b, devs) = pairs("fse", 1);
    let dev = &devs[0];
    let out = lab.dir().join("fse.jsonl");
    let mut cmd = lab.cmd_setns(&a, dnstrace_bin().unwrap()).expect("cmd");
    cmd.args([
        "watch",
        "--output",
        "json",
        "-i",
        dev,
        "--tc-mode",
        "netlink",
    ])
    .args(["--duration", "1s"])
    .stdin(Stdio::null())
    .stdout(File::create(&out).expect("stdout file"))
    .stderr(
        File::options()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full"),
    );
    let proc = lab.spawn("fse", cmd).expect("spawn");
    let status = lab
        .wait_exit(&proc, Duration::from_secs(20))
        .expect("wait")
        .unwrap_or_else(|| panic!("still running"));
    assert_eq!(status.code(), Some(0), "{status}");
    let text = fs::read_to_string(&out).expect("stdout");
    assert!(text.contains("\"type\":\"summary\""), "{text}");
    assert_clean(&lab, &a, dev, "after a run with stderr full");
    // A usage error with stderr full is still a usage error.
    let mut cmd = lab.cmd_setns(&a, dnstrace_bin().unwrap()).expect("cmd");
    cmd.args(["watch", "-i", dev, "--queue", "0"])
        .stdin(Stdio::null())
        .stderr(
            File::options()
                .write(true)
                .open("/dev/full")
                .expect("/dev/full"),
        );
    let proc = lab.spawn("fse2", cmd).expect("spawn");
    let status = lab
        .wait_exit(&proc, Duration::from_secs(20))
        .expect("wait")
        .unwrap_or_else(|| panic!("still running"));
    assert_eq!(status.code(), Some(2), "{status}");
}

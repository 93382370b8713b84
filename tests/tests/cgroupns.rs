//! The socket hop from inside a cgroup namespace, as in a DaemonSet that has
//! capabilities but is not privileged: dnstrace sits in a cgroup of its own,
//! in a cgroup namespace whose root is that cgroup, and its /sys/fs/cgroup is
//! a cgroup2 mount made inside the namespace, which shows only that subtree.
//! Attached there, the socket hop would see no one else's sockets. Built with
//! real `unshare --cgroup --mount` (util-linux); run with `cargo xtask test`.

use std::{
    ffi::{OsStr, OsString},
    fs, io,
    path::{Path, PathBuf},
    process::Stdio,
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use dnstrace_tests::{Lab, Tracer, VethEnd, dnstrace_bin, fqdn, skip_without_root};

/// Moves itself into the cgroup folder `$1`, then, in a new cgroup namespace
/// (rooted at that cgroup) and a private mount namespace, replaces the cgroup2
/// mount at `$2` with the namespace's own, and runs the rest of its arguments.
const IN_OWN_CGROUPNS: &str = r#"set -e
cg=$1 mnt=$2
shift 2
echo $$ > "$cg/cgroup.procs"
exec unshare --cgroup --mount --propagation private \
    sh -c 'umount "$0" && mount -t cgroup2 none "$0" && exec "$@"' "$mnt" "$@"
"#;

/// Runs its arguments as a child, not with exec: pid 1 of a new pid namespace
/// stays in the host's cgroup and mount namespaces, as the host's init is
/// for a pod with hostPID. The no-op traps keep sh from exiting 130 when the
/// lab's SIGINT reaches the whole process group; the child gets default
/// handlers back at exec.
const AS_INIT: &str = r#"trap : INT TERM; "$@"; exit $?"#;

/// The cgroup2 mount point of the root of the hierarchy, as this process
/// sees it (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts).
fn cgroup2_root() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (head, tail) = line.split_once(" - ")?;
        let f: Vec<&str> = head.split_whitespace().collect();
        let point = f.get(4)?;
        (tail.starts_with("cgroup2 ") && f.get(3) == Some(&"/")).then(|| PathBuf::from(point))
    })
}

fn ready() -> Option<PathBuf> {
    if skip_without_root() || dnstrace_bin().is_none() {
        return None;
    }
    let root = cgroup2_root();
    if root.is_none() {
        eprintln!("skipped: no cgroup2 hierarchy mounted (cgroup v1 only)");
    }
    root
}

/// A child cgroup of the root, `dtcgns-<pid>-<n>`, removed on drop after
/// killing whatever is still in it (the lab stops its processes first: create
/// this before the lab). Leftovers of dead test runs are removed on creation.
struct ChildCgroup(PathBuf);

impl ChildCgroup {
    fn new(root: &Path) -> ChildCgroup {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        if let Ok(entries) = fs::read_dir(root) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(pid) = name
                    .strip_prefix("dtcgns-")
                    .and_then(|rest| rest.split('-').next())
                else {
                    continue;
                };
                if !Path::new("/proc").join(pid).exists() {
                    eprintln!("cgroupns: removing the stale cgroup {name}");
                    drop(ChildCgroup(entry.path()));
                }
            }
        }
        let path = root.join(format!(
            "dtcgns-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        ChildCgroup(path)
    }

    fn procs(&self) -> Vec<u32> {
        fs::read_to_string(self.0.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for ChildCgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match fs::remove_dir(&self.0) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(e) if Instant::now() >= deadline => {
                    eprintln!("cgroupns: could not remove {}: {e}", self.0.display());
                    return;
                }
                Err(_) => {
                    // Only this test's processes are in it (cgroup.kill: 5.14+).
                    if fs::write(self.0.join("cgroup.kill"), "1").is_err() {
                        for pid in self.procs() {
                            // SAFETY: plain syscall.
                            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                        }
                    }
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

/// `sh -c AS_INIT` in a new pid namespace, running `sh <script> <cgroup>
/// <mount point>`, which gets the tracer's command line after that. With
/// `init`, the script runs as a child of pid 1; without, it is pid 1.
fn wrapper(lab: &Lab, cg: &ChildCgroup, mnt: &Path, init: bool) -> Vec<OsString> {
    let script = lab
        .write_file("in-own-cgroupns.sh", IN_OWN_CGROUPNS)
        .expect("script");
    let mut argv: Vec<OsString> = ["unshare", "--pid", "--fork", "--mount-proc"]
        .map(OsString::from)
        .into();
    if init {
        argv.extend(["sh", "-c", AS_INIT, "init"].map(OsString::from));
    }
    argv.extend([
        OsString::from("sh"),
        script.into(),
        cg.0.clone().into(),
        mnt.into(),
    ]);
    argv
}

/// A pod netns and a node netns joined by a veth, dnsmasq on the node side.
struct PodLab {
    lab: Lab,
    node: String,
    pod: String,
    server: String,
}

fn pod_lab(tag: &str) -> PodLab {
    let lab = Lab::new(tag).expect("lab");
    let node = lab.add_netns("node").expect("node netns");
    let pod = lab.add_netns("pod").expect("pod netns");
    let (n0, p0) = (format!("{}n0", lab.prefix()), format!("{}p0", lab.prefix()));
    lab.add_veth(
        &VethEnd {
            ns: &node,
            name: &n0,
            addrs: &["10.231.7.1/24"],
        },
        &VethEnd {
            ns: &pod,
            name: &p0,
            addrs: &["10.231.7.2/24"],
        },
    )
    .expect("veth");
    let server = "10.231.7.1".to_owned();
    let dns = lab
        .start_dnsmasq(
            &node,
            "dns",
            &[server.parse().unwrap()],
            &["--address=/cgns.test/10.0.0.53"],
        )
        .expect("dnsmasq");
    lab.wait_dns_ready(
        &node,
        server.parse().unwrap(),
        &dns,
        Duration::from_secs(10),
    )
    .expect("dnsmasq ready");
    PodLab {
        lab,
        node,
        pod,
        server,
    }
}

/// dnstrace in its own cgroup namespace, with pid 1 (hostPID) in the host's:
/// it attaches the socket hop at the host's root through /proc/1/root and
/// sees a query sent from a pod by a process in another cgroup. The old code
/// attached to its own cgroup2 mount, the namespace's subtree, and saw none.
#[test]
fn socket_hop_in_own_cgroupns_attaches_at_host_root() {
    let Some(mnt) = ready() else {
        return;
    };
    let cg = ChildCgroup::new(&mnt);
    let l = pod_lab("cgns");
    let wrap = wrapper(&l.lab, &cg, &mnt, true);
    let wrap: Vec<&OsStr> = wrap.iter().map(OsString::as_os_str).collect();
    let tracer = Tracer::start_wrapped(&l.lab, &l.node, "trace", &wrap, &["--socket-hop"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    // The set-up is what it claims: the tracer is alone in the child cgroup,
    // in another cgroup namespace than this test and its clients.
    let inside = cg.procs();
    assert_eq!(inside.len(), 1, "the tracer is in {}", cg.0.display());
    assert_ne!(
        fs::read_link(format!("/proc/{}/ns/cgroup", inside[0])).unwrap(),
        fs::read_link("/proc/self/ns/cgroup").unwrap()
    );

    let qname = format!("{}.cgns.test", l.lab.prefix());
    let out = l
        .lab
        .run(
            &l.pod,
            &[
                "dig",
                "+short",
                "+tries=1",
                "+time=2",
                &format!("@{}", l.server),
                &qname,
            ],
        )
        .expect("dig");
    assert_eq!(out.trim(), "10.0.0.53");
    let want = fqdn(&qname);
    tracer
        .wait_packet(|p| p["qname"] == want.as_str() && p["dir"] == "socket-in" && p["qr"] == true)
        .unwrap_or_else(|e| panic!("the reply delivered to dig: {e:#}"));
    let trace = tracer
        .stop(dnstrace_tests::Signal::Int)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let hop: Vec<_> = trace
        .packets
        .iter()
        .filter(|p| p["qname"] == want.as_str() && p["iface"] == "socket")
        .collect();
    // The tracer runs in the node netns, where dnsmasq is; dig is in the pod's.
    let node_netns = &trace.summary["netns"];
    let query = |dir: &str| -> Vec<&&serde_json::Value> {
        hop.iter()
            .filter(|p| p["dir"] == dir && p["qr"] == false)
            .collect()
    };
    let sent = query("socket-out");
    assert_eq!(sent.len(), 1, "dig's query leaving its socket: {hop:#?}");
    assert_ne!(&sent[0]["netns"], node_netns, "sent from the pod: {hop:#?}");
    let delivered = query("socket-in");
    assert_eq!(
        delivered.len(),
        1,
        "the query delivered to dnsmasq: {hop:#?}"
    );
    assert_eq!(&delivered[0]["netns"], node_netns, "{hop:#?}");
    // The start line names the root it attached to.
    assert!(
        trace
            .stderr
            .contains("socket hop via cgroup_skb on the host's cgroup root /proc/1/root/"),
        "{}",
        trace.stderr
    );
    drop(l);
    drop(cg);
}

/// dnstrace in its own cgroup namespace and pid 1 of its pid namespace (a
/// container without hostPID): nothing it can reach is the cgroup root, so
/// it refuses to start with one line that says why and what to do, instead
/// of tracing its own subtree. The old code started and saw nothing.
#[test]
fn socket_hop_without_host_root_refuses() {
    let Some(mnt) = ready() else {
        return;
    };
    let bin = dnstrace_bin().unwrap();
    let cg = ChildCgroup::new(&mnt);
    let lab = Lab::new("cgnr").expect("lab");
    let ns = lab.add_netns("node").expect("netns");
    let ready_file = lab.dir().join("refuse.ready");
    let err = lab.dir().join("refuse.err");
    let wrap = wrapper(&lab, &cg, &mnt, false);
    let mut cmd = lab.cmd_setns(&ns, &wrap[0]).expect("setns");
    cmd.args(&wrap[1..])
        .arg(&bin)
        .args(["watch", "--output", "json", "--socket-hop", "--ready-file"])
        .arg(&ready_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&err).unwrap());
    let proc = lab.spawn("refuse", cmd).expect("spawn");
    let status = lab.wait_exit(&proc, Duration::from_secs(20)).expect("wait");
    let stderr = fs::read_to_string(&err).unwrap_or_default();
    let Some(status) = status else {
        panic!("dnstrace is running, tracing only its own subtree: {stderr}");
    };
    assert!(!status.success(), "{status}: {stderr}");
    assert!(!ready_file.exists());
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    for needle in [
        "the socket hop needs the root of the cgroup v2 tree",
        "shares cgroup namespace",
        "below the root",
        "hostPID",
        "--no-socket-hop",
    ] {
        assert!(lines[0].contains(needle), "{needle:?} in {stderr}");
    }
    drop(lab);
    drop(cg);
}

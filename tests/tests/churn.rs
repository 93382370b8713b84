//! Pods that come and go while `dnstrace watch --auto` runs: 100 pod netns with their
//! veth (host side in the lab's node netns, as a CNI plugin makes them), created and
//! deleted one after the other while every live pod sends queries to a DNS server on
//! the node. Each host-side name comes back once as another device (another ifindex),
//! and every tenth veth is made under a temporary name and renamed at once, as some CNI
//! plugins do.
//!
//! A pod "lived long enough" when its veth was reported attached (a `coverage`
//! record) before its first query; here every pod waits for that, so every one of
//! them must be seen at its own veth. Each pod's last query is in flight when its veth
//! is deleted: `unknown` for the coverage gap, never `unanswered`.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{BufRead as _, BufReader, Seek as _, SeekFrom},
    net::IpAddr,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use dnstrace_tests::{Lab, Proc, Signal, Tracer, VethEnd, dnstrace_bin, one_line};
use serde_json::Value;

const PODS: usize = 100;
/// Host-side names: pod `i` and pod `i + NAMES` share one.
const NAMES: usize = 50;
/// Pods alive at once.
const WINDOW: usize = 5;
const SERVER: &str = "10.77.0.53";
/// Where dnsmasq forwards `slow.churn.test`: routed into an ifb device, which drops
/// what it sends, so those lookups stay open until the client gives up.
const BLACKHOLE: &str = "10.77.9.9";
/// After the first this many pods, the tracer's RSS is the baseline.
const RSS_AFTER: usize = 20;
/// Pods whose veth is made under a temporary name, then renamed.
const RENAMED_EVERY: usize = 10;
/// How much the tracer's RSS may grow over the last 80 pods.
const RSS_GROWTH_MAX_KB: u64 = 6 * 1024;

fn ready() -> bool {
    !dnstrace_tests::skip_without_root() && dnstrace_bin().is_some()
}

/// A pod: its netns, host-side veth and the processes in it.
struct Pod {
    ns: String,
    veth: String,
    ifindex: u64,
    queries: Option<Proc>,
    slow: Option<Proc>,
}

/// Reads a growing JSON-lines file from where it stopped last time.
struct Tail {
    file: BufReader<fs::File>,
    partial: String,
    records: Vec<Value>,
}

impl Tail {
    fn open(path: &Path) -> Tail {
        Tail {
            file: BufReader::new(fs::File::open(path).expect("the tracer's output")),
            partial: String::new(),
            records: Vec::new(),
        }
    }

    /// Reads what was written since the last call (complete lines only).
    fn poll(&mut self) {
        loop {
            let mut line = String::new();
            let n = self.file.read_line(&mut line).expect("reading the output");
            if n == 0 {
                return;
            }
            self.partial.push_str(&line);
            if !self.partial.ends_with('\n') {
                // Not complete yet: read it again next time.
                let back = self.partial.len() as i64;
                self.file.seek(SeekFrom::Current(-back)).expect("seek");
                self.partial.clear();
                return;
            }
            let rec: Value = serde_json::from_str(self.partial.trim_end()).expect("a JSON line");
            self.partial.clear();
            self.records.push(rec);
        }
    }

    fn coverage(&self, event: &str, iface: &str, ifindex: u64) -> bool {
        self.records.iter().any(|r| {
            r["type"] == "coverage"
                && r["event"] == event
                && r["iface"] == iface
                && r["ifindex"] == ifindex
        })
    }

    /// The device was reported attached (under whatever name), and is now reported
    /// under `iface`: attached under it, or renamed to it.
    fn watched(&self, iface: &str, ifindex: u64) -> bool {
        let attached = self.records.iter().any(|r| {
            r["type"] == "coverage" && r["event"] == "attached" && r["ifindex"] == ifindex
        });
        attached
            && (self.coverage("attached", iface, ifindex)
                || self.coverage("renamed", iface, ifindex))
    }
}

fn ifindex(lab: &Lab, ns: &str, dev: &str) -> u64 {
    let out = lab
        .run(ns, &["ip", "-j", "link", "show", "dev", dev])
        .expect("ip link show");
    let v: Value = serde_json::from_str(&out).expect("ip -j prints JSON");
    v[0]["ifindex"].as_u64().expect("an ifindex")
}

fn vm_rss_kb(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("the tracer runs");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Ids of the BPF programs a process holds a file descriptor on.
fn held_programs(pid: u32) -> BTreeSet<u64> {
    let mut ids = BTreeSet::new();
    for fd in fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(info) = fs::read_to_string(fd.path()) {
            ids.extend(
                info.lines()
                    .filter_map(|l| l.strip_prefix("prog_id:"))
                    .filter_map(|id| id.trim().parse::<u64>().ok()),
            );
        }
    }
    ids
}

fn program_exists(lab: &Lab, ns: &str, id: u64) -> bool {
    lab.exec(ns, &["bpftool", "prog", "show", "id", &id.to_string()])
        .is_ok_and(|o| o.success())
}

fn create_pod(lab: &Lab, node: &str, i: usize) -> Pod {
    let p = lab.prefix();
    let ns = lab.add_netns(&format!("pod{i}")).expect("pod netns");
    let veth = format!("{p}v{:02}", i % NAMES);
    let (gw, addr) = (format!("10.78.{i}.1/24"), format!("10.78.{i}.2/24"));
    if i % RENAMED_EVERY == 3 {
        let tmp = format!("{p}t{:02}", i % NAMES);
        lab.ip(
            node,
            &[
                "link", "add", &tmp, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        )
        .expect("pod veth");
        lab.ip(node, &["link", "set", &tmp, "name", &veth])
            .expect("renaming the veth");
        lab.add_addr(node, &veth, &gw).expect("gateway address");
        lab.add_addr(&ns, "eth0", &addr).expect("pod address");
        lab.ip(node, &["link", "set", &veth, "up"])
            .expect("veth up");
        lab.ip(&ns, &["link", "set", "eth0", "up"])
            .expect("eth0 up");
    } else {
        lab.add_veth(
            &VethEnd {
                ns: node,
                name: &veth,
                addrs: &[&gw],
            },
            &VethEnd {
                ns: &ns,
                name: "eth0",
                addrs: &[&addr],
            },
        )
        .expect("pod veth");
    }
    lab.add_route(&ns, &format!("default via 10.78.{i}.1"))
        .expect("pod route");
    let ifindex = ifindex(lab, node, &veth);
    Pod {
        ns,
        veth,
        ifindex,
        queries: None,
        slow: None,
    }
}

/// `dig` in a loop from the pod: `q<i>-<n>.fast.churn.test`, answered by the server.
fn start_queries(lab: &Lab, pod: &Pod, i: usize) -> Proc {
    let script = format!(
        "n=0; while :; do dig +time=1 +tries=1 +short @{SERVER} q{i}-$n.fast.churn.test >/dev/null; \
         n=$((n+1)); sleep 0.05; done"
    );
    let mut cmd = lab.cmd(&pod.ns, "sh");
    cmd.args(["-c", &script]);
    lab.spawn(&format!("q{i}"), cmd).expect("query loop")
}

/// One query that nothing will answer in time: in flight when the pod goes.
fn start_slow(lab: &Lab, pod: &Pod, i: usize) -> Proc {
    let mut cmd = lab.cmd(&pod.ns, "dig");
    cmd.args([
        "+time=4",
        "+tries=1",
        &format!("@{SERVER}"),
        &format!("s{i}.slow.churn.test"),
    ]);
    lab.spawn(&format!("s{i}"), cmd).expect("slow query")
}

/// Deletes the pod the way a runtime does: its veth goes, then its processes and netns.
fn delete_pod(lab: &Lab, node: &str, pod: &mut Pod) {
    lab.ip(node, &["link", "del", &pod.veth])
        .expect("deleting the veth");
    for proc in [pod.queries.take(), pod.slow.take()].into_iter().flatten() {
        let _ = lab.stop(&proc, Signal::Kill, Duration::from_secs(2));
    }
    lab.del_netns(&pod.ns).expect("deleting the pod netns");
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {timeout:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn churn(tag: &str, tc_mode: &str) {
    if !ready() {
        return;
    }
    let lab = Lab::new(tag).expect("lab");
    let p = lab.prefix().to_owned();
    let node = lab.add_netns("node").expect("node netns");
    let dns_dev = format!("{p}dns0");
    lab.add_ifb(&node, &dns_dev, &[&format!("{SERVER}/32")])
        .expect("server address");
    lab.add_route(&node, &format!("{BLACKHOLE}/32 dev {dns_dev}"))
        .expect("blackhole route");
    let server: IpAddr = SERVER.parse().unwrap();
    let _dns = lab
        .start_dnsmasq(
            &node,
            "dns",
            &[server],
            &[
                "--address=/fast.churn.test/10.77.1.1",
                &format!("--server=/slow.churn.test/{BLACKHOLE}"),
            ],
        )
        .expect("dnsmasq");
    let tracer = Tracer::start(
        &lab,
        &node,
        "trace",
        &[
            "--auto",
            "--no-socket-hop",
            "--no-drops",
            "--hops",
            "all",
            "--tc-mode",
            tc_mode,
        ],
    )
    .expect("dnstrace");
    let pid = tracer.proc.pid;
    let mut tail = Tail::open(&tracer.out);

    let mut pods: Vec<Pod> = Vec::with_capacity(PODS);
    let mut rss_first = 0;
    let mut programs = BTreeSet::new();
    let started = Instant::now();
    for i in 0..PODS + WINDOW + 1 {
        if i < PODS {
            let mut pod = create_pod(&lab, &node, i);
            wait_until(
                &format!("{} (ifindex {}) reported attached", pod.veth, pod.ifindex),
                Duration::from_secs(10),
                || {
                    tail.poll();
                    tail.watched(&pod.veth, pod.ifindex)
                },
            );
            pod.queries = Some(start_queries(&lab, &pod, i));
            pods.push(pod);
        }
        if let Some(j) = i.checked_sub(WINDOW - 1).filter(|&j| j < PODS) {
            pods[j].slow = Some(start_slow(&lab, &pods[j], j));
        }
        if let Some(k) = i.checked_sub(WINDOW).filter(|&k| k < PODS) {
            // The slow query has had a step's time to cross the veth.
            thread::sleep(Duration::from_millis(150));
            delete_pod(&lab, &node, &mut pods[k]);
        }
        if i == RSS_AFTER {
            rss_first = vm_rss_kb(pid);
            programs = held_programs(pid);
        }
    }
    let churn_secs = started.elapsed().as_secs_f64();
    // The last slow lookups end at the tracer's timeout (5 s) after their query.
    let slow = tracer
        .wait_lookups(
            |l| {
                l["qname"]
                    .as_str()
                    .is_some_and(|q| q.ends_with(".slow.churn.test."))
            },
            PODS,
            Duration::from_secs(30),
        )
        .expect("every slow lookup finished");
    let rss_last = vm_rss_kb(pid);
    assert!(!programs.is_empty(), "the tracer holds its programs");
    let trace = tracer.stop(Signal::Int).expect("dnstrace exits 0");

    // Coverage: every attach and every detach, with the device's own index.
    tail.poll();
    let coverage: Vec<&Value> = tail
        .records
        .iter()
        .filter(|r| r["type"] == "coverage")
        .collect();
    for r in &coverage {
        for field in [
            "time", "node", "schema", "event", "iface", "ifindex", "netns",
        ] {
            assert!(!r[field].is_null(), "{field} missing: {r}");
        }
        assert_ne!(r["event"], "attach_failed", "{r}");
    }
    let mut missing = Vec::new();
    for pod in &pods {
        if !tail.watched(&pod.veth, pod.ifindex) {
            missing.push(format!("attached {} ifindex {}", pod.veth, pod.ifindex));
        }
        if !tail.coverage("detached", &pod.veth, pod.ifindex) {
            missing.push(format!("detached {} ifindex {}", pod.veth, pod.ifindex));
        }
    }
    // One way of attaching for the whole run: a device that vanishes or is renamed
    // while it is being attached is no reason to change it.
    let modes: BTreeSet<&str> = coverage
        .iter()
        .filter(|r| r["event"] == "attached")
        .filter_map(|r| r["mode"].as_str())
        .collect();
    assert_eq!(modes.len(), 1, "attached in several ways: {modes:?}");
    assert!(missing.is_empty(), "coverage records missing: {missing:?}");
    let indexes: BTreeSet<u64> = pods.iter().map(|p| p.ifindex).collect();
    assert_eq!(indexes.len(), PODS, "each name came back as another device");
    let last = coverage.last().expect("coverage records");
    assert_eq!(last["event"], "detached", "{last}");
    assert_eq!(last["totals"]["attached"], PODS as u64, "{last}");
    assert_eq!(last["totals"]["detached"], PODS as u64, "{last}");

    // Every lookup of every pod was seen at its own veth: a hop there, and its packets
    // carry that veth's ifindex.
    let pod_of = |qname: &str| -> Option<usize> {
        let label = qname.split('.').next()?;
        let n = label
            .strip_prefix('q')
            .or_else(|| label.strip_prefix('s'))?;
        n.split('-').next()?.parse().ok()
    };
    let mut at_index: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    for pk in &trace.packets {
        if let Some(q) = pk["qname"].as_str() {
            at_index
                .entry(q)
                .or_default()
                .insert(pk["ifindex"].as_u64().unwrap_or(0));
        }
    }
    let mut lookups = 0;
    let mut captured = 0;
    let mut problems = Vec::new();
    let mut verdicts: BTreeMap<String, u64> = BTreeMap::new();
    for l in &trace.lookups {
        let Some(q) = l["qname"].as_str().filter(|q| q.ends_with(".churn.test.")) else {
            continue;
        };
        let Some(i) = pod_of(q).filter(|&i| i < PODS) else {
            problems.push(format!("not one of the pods' names: {}", one_line(l)));
            continue;
        };
        lookups += 1;
        *verdicts
            .entry(l["verdict"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
        let pod = &pods[i];
        let hop_there = l["hops"]
            .as_array()
            .is_some_and(|h| h.iter().any(|h| h["iface"] == pod.veth.as_str()));
        let index_there = at_index.get(q).is_some_and(|s| s.contains(&pod.ifindex));
        if hop_there && index_there {
            captured += 1;
        } else {
            problems.push(format!(
                "not seen at {} (ifindex {}): {}",
                pod.veth,
                pod.ifindex,
                one_line(l)
            ));
        }
        let verdict = l["verdict"].as_str().unwrap_or("?");
        if q.ends_with(".slow.churn.test.") {
            let detail = l["detail"].as_str().unwrap_or("");
            if verdict != "unknown"
                || !detail.contains(&format!("interface {} went away", pod.veth))
            {
                problems.push(format!(
                    "in flight when its veth went: {} ({detail})",
                    one_line(l)
                ));
            }
        } else if verdict == "unanswered" {
            problems.push(format!("unanswered: {}", one_line(l)));
        }
    }
    assert_eq!(slow.len(), PODS);

    // Nothing left behind: no pod netns, no filter, qdisc or program of ours.
    let leftover_netns: Vec<String> = fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("{p}-pod")))
        .collect();
    let mut leftover_tc = Vec::new();
    let links: Value =
        serde_json::from_str(&lab.run(&node, &["ip", "-j", "link", "show"]).unwrap()).unwrap();
    for link in links.as_array().unwrap() {
        let dev = link["ifname"].as_str().unwrap();
        for dir in ["ingress", "egress"] {
            let f = lab
                .run(&node, &["tc", "filter", "show", "dev", dev, dir])
                .unwrap();
            if f.contains("dt_tc_") {
                leftover_tc.push(format!("{dev} {dir}: {f}"));
            }
        }
    }
    let qdiscs = lab.run(&node, &["tc", "qdisc", "show"]).unwrap();
    if qdiscs.contains("clsact") {
        leftover_tc.push(qdiscs);
    }
    let leftover_programs: Vec<u64> = programs
        .iter()
        .copied()
        .filter(|&id| program_exists(&lab, &node, id))
        .collect();
    let warnings: Vec<&str> = trace
        .stderr
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();

    eprintln!(
        "churn ({tc_mode}): {PODS} pods in {churn_secs:.1} s ({NAMES} names, each twice); \
         {lookups} lookups, {captured} captured at their pod's veth; verdicts {verdicts:?}; \
         coverage records {}; leftovers: {} netns, {} tc, {} programs; \
         RSS after {RSS_AFTER} pods {rss_first} kB, at the end {rss_last} kB",
        coverage.len(),
        leftover_netns.len(),
        leftover_tc.len(),
        leftover_programs.len()
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(lookups >= 2 * PODS, "{lookups} lookups");
    assert_eq!(captured, lookups);
    assert!(
        leftover_netns.is_empty() && leftover_tc.is_empty() && leftover_programs.is_empty(),
        "left behind: {leftover_netns:?} {leftover_tc:?} programs {leftover_programs:?}"
    );
    assert!(warnings.is_empty(), "warnings: {warnings:?}");
    assert!(
        trace.stderr.contains("detached"),
        "no detach message: {}",
        trace.stderr
    );
    assert!(
        rss_last <= rss_first + RSS_GROWTH_MAX_KB,
        "RSS grew from {rss_first} kB to {rss_last} kB over {} pods",
        PODS - RSS_AFTER
    );
}

#[test]
fn pods_come_and_go_tcx() {
    churn("ch", "auto");
}

#[test]
fn pods_come_and_go_netlink() {
    churn("chn", "netlink");
}

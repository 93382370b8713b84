//! Every failure mode of shared FAILURE-MODES.md, reproduced for real on a lab
//! node (see `dnstrace_tests::Scenario`): the client in the pod sees the
//! symptom, and the real tracer (`dnstrace watch --auto` in the node netns)
//! sees on the wire why, and gives the lookup its verdict.
//!
//! Needs root. Without `DNSTRACE_BIN` only the client-visible symptom is
//! checked (run them with `cargo xtask test`).

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use dnstrace_tests::{
    ClientLookup, Node, NodeOptions, OLD_ROUTER, PUBLIC_RESOLVER_IP, Scenario, Signal, Trace,
    Tracer, dnstrace_bin, fqdn, one_line, skip_without_root,
};
use serde_json::Value;

/// Lookups end this long after the client's last try without an answer.
const LOOKUP_TIMEOUT: &str = "3s";
const WAIT_LOOKUPS: Duration = Duration::from_secs(20);

/// A scenario that ran: the node, what the client saw and, with
/// `DNSTRACE_BIN`, what the tracer wrote.
struct Run {
    scenario: Scenario,
    node: Node,
    seen: Vec<ClientLookup>,
    trace: Option<Trace>,
}

/// Builds and applies `scenario`, starts the tracer (if `DNSTRACE_BIN` is
/// set), runs the scenario's client, waits for the tracer to finish every
/// lookup it must report and stops it. `None` (after saying why) without root.
fn run(scenario: Scenario, tag: &str) -> Option<Run> {
    if skip_without_root() {
        return None;
    }
    let started = Instant::now();
    // Names of the node's own: the socket hop and the drop tracepoint see
    // every netns, and other labs on this machine ask www.example.test too.
    let options = NodeOptions {
        own_names: true,
        ..scenario.node_options()
    };
    let node = scenario
        .build_with(tag, options)
        .expect("build the scenario");
    let built = started.elapsed();
    let tracer = match dnstrace_bin() {
        Some(_) => Some(
            Tracer::start(
                &node.lab,
                &node.node_ns,
                "trace",
                &["--auto", "--timeout", LOOKUP_TIMEOUT],
            )
            .expect("start dnstrace"),
        ),
        None => {
            eprintln!("{scenario}: checking what the client sees only");
            None
        }
    };
    let t = Instant::now();
    let seen = scenario.run_client(&node).expect("run the client");
    let client_time = t.elapsed();
    eprintln!("{scenario}: {}", scenario.describe());
    for s in &seen {
        eprintln!("  $ {}\n    {}", s.command, s.summary());
    }
    let trace = tracer.map(|tracer| {
        for e in scenario.expect(&node) {
            // One lookup per client process that asked this server this question.
            let want = seen
                .iter()
                .filter(|s| {
                    s.command.contains(&format!("@{}", e.server.ip()))
                        && s.command.contains(e.qname.trim_end_matches('.'))
                })
                .count()
                .max(1);
            // Not all in time: the checks below say what is missing.
            let _ = tracer.wait_lookups(|l| e.is_for(l), want, WAIT_LOOKUPS);
        }
        let trace = tracer.stop(Signal::Int).expect("stop dnstrace");
        for l in &trace.lookups {
            eprintln!("  dnstrace: {}", one_line(l));
        }
        trace
    });
    eprintln!(
        "{scenario}: built in {built:?}, client {client_time:?}, total {:?}",
        started.elapsed()
    );
    Some(Run {
        scenario,
        node,
        seen,
        trace,
    })
}

impl Run {
    /// Asserts the verdict, culprit and last hop of every expected lookup.
    fn assert_verdicts(&self) {
        let Some(trace) = &self.trace else { return };
        for e in self.scenario.expect(&self.node) {
            if let Err(problem) = e.check_all(&trace.lookups) {
                panic!("{}: {}: {problem:#}", self.scenario, e.banner());
            }
        }
    }

    /// Packets for the scenario's question(s).
    fn packets(&self, qname: &str) -> Vec<&Value> {
        self.trace
            .as_ref()
            .map(|t| t.packets_for(qname))
            .unwrap_or_default()
    }

    fn trace(&self) -> Option<&Trace> {
        self.trace.as_ref()
    }
}

fn is_query(p: &Value) -> bool {
    p["qr"] == false
}

fn is_reply(p: &Value) -> bool {
    p["qr"] == true
}

fn at<'v>(packets: &[&'v Value], iface: &str, dir: &str) -> Vec<&'v Value> {
    packets
        .iter()
        .filter(|p| p["iface"] == iface && p["dir"] == dir)
        .copied()
        .collect()
}

/// The drops of the node's own question: the drop tracepoint sees every netns,
/// and other labs' drops (a server's readiness probe, say) are not this one's.
fn own_drops<'t>(trace: &'t Trace, n: &Node) -> Vec<&'t Value> {
    trace
        .drops()
        .into_iter()
        .filter(|d| d["qname"] == fqdn(&n.www_name))
        .collect()
}

fn ip_of(addr: &Value) -> String {
    let a = addr.as_str().unwrap_or("");
    a.rsplit_once(':').map_or(a, |(ip, _)| ip).to_owned()
}

#[test]
fn upstream_rejects_edns() {
    let Some(r) = run(Scenario::UpstreamRejectsEdns, "edns") else {
        return;
    };
    let n = &r.node;
    // The pod sees nothing wrong: unbound retried without EDNS.
    assert_eq!(r.seen.len(), 1);
    assert_eq!(r.seen[0].status(), Some("NOERROR"), "{}", r.seen[0].text());
    assert!(r.seen[0].out.stdout.contains(&n.www_a.to_string()));
    // The old router really answered FORMERR to a query with OPT, then
    // answered the retry without OPT.
    let router = std::fs::read_to_string(n.lab.dir().join(format!("{OLD_ROUTER}.log"))).unwrap();
    let formerr = router.find("FORMERR to ").expect(&router);
    let answered = router.find("without OPT: NOERROR").expect(&router);
    assert!(formerr < answered, "{router}");
    assert!(router.contains("query had OPT (udp=1232"), "{router}");

    let Some(_) = r.trace() else { return };
    let packets = r.packets(&n.www_name);
    let upstream = format!("{}:53", n.resolver_ip);
    let up_in = at(&packets, &n.uplink, "ingress");
    let up_out = at(&packets, &n.uplink, "egress");
    let formerr: Vec<_> = up_in
        .iter()
        .filter(|p| is_reply(p) && p["rcode"] == "FORMERR" && p["src"] == upstream.as_str())
        .collect();
    assert_eq!(
        formerr.len(),
        1,
        "one FORMERR in from {upstream}: {up_in:#?}"
    );
    let query: Vec<_> = up_out
        .iter()
        .filter(|p| is_query(p) && p["id"] == formerr[0]["id"])
        .collect();
    assert_eq!(query.len(), 1, "{up_out:#?}");
    assert!(!query[0]["edns"].is_null(), "the rejected query had OPT");
    assert_eq!(
        query[0]["src"].as_str().unwrap().split(':').next(),
        Some(&*n.node_ip.to_string())
    );
    // The retry without OPT, and its NOERROR.
    let retry: Vec<_> = up_out
        .iter()
        .filter(|p| is_query(p) && p["edns"].is_null() && p["dst"] == upstream.as_str())
        .collect();
    assert_eq!(retry.len(), 1, "{up_out:#?}");
    assert!(
        up_in
            .iter()
            .any(|p| is_reply(p) && p["id"] == retry[0]["id"] && p["rcode"] == "NOERROR")
    );
    r.assert_verdicts();
}

#[test]
fn upstream_disagreement() {
    let Some(r) = run(Scenario::UpstreamDisagreement, "dis") else {
        return;
    };
    let n = &r.node;
    let statuses: Vec<_> = r
        .seen
        .iter()
        .map(|s| s.status().unwrap_or("none"))
        .collect();
    assert!(r.seen.len() >= 5, "{statuses:?}");
    assert!(
        statuses.contains(&"NOERROR") && statuses.contains(&"NXDOMAIN"),
        "the pod sees NOERROR and NXDOMAIN for the same name: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == "NOERROR" || *s == "NXDOMAIN"),
        "{statuses:?}"
    );

    let Some(_) = r.trace() else { return };
    let packets = r.packets(&n.www_name);
    let up_in = at(&packets, &n.uplink, "ingress");
    let answers: BTreeSet<(String, String)> = up_in
        .iter()
        .filter(|p| is_reply(p))
        .map(|p| (ip_of(&p["src"]), p["rcode"].as_str().unwrap().to_owned()))
        .collect();
    let want: BTreeSet<(String, String)> = [
        (n.resolver_ip.to_string(), "NOERROR".to_owned()),
        (PUBLIC_RESOLVER_IP.to_string(), "NXDOMAIN".to_owned()),
    ]
    .into();
    assert_eq!(
        answers, want,
        "each upstream answers the same question its own way"
    );
    r.assert_verdicts();
}

#[test]
fn loopback_nameserver() {
    let Some(r) = run(Scenario::LoopbackNameserver, "lo") else {
        return;
    };
    let n = &r.node;
    assert_eq!(r.seen.len(), 1);
    assert!(r.seen[0].refused(), "{}", r.seen[0].text());
    assert!(r.seen[0].status().is_none());

    let Some(trace) = r.trace() else { return };
    let packets = r.packets(&n.www_name);
    let node_netns = &trace.summary["netns"];
    let sent: Vec<_> = packets
        .iter()
        .filter(|p| p["dir"] == "socket-out" && p["dst"] == "127.0.0.53:53")
        .collect();
    assert_eq!(sent.len(), 2, "dig's two tries: {packets:#?}");
    assert!(
        sent.iter().all(|p| p["netns"] != *node_netns),
        "sent in the pod's netns"
    );
    assert!(
        packets
            .iter()
            .all(|p| p["dir"] == "socket-out" || p["dir"] == "drop"),
        "never reaches an interface or a server: {packets:#?}"
    );
    let drops: Vec<_> = packets.iter().filter(|p| p["dir"] == "drop").collect();
    assert!(
        drops
            .iter()
            .all(|d| d["drop_reason"] == "NO_SOCKET" && d["netns"] == sent[0]["netns"]),
        "nothing listens there: {drops:#?}"
    );
    r.assert_verdicts();
}

#[test]
fn forwarding_loop() {
    let Some(r) = run(Scenario::ForwardingLoop, "loop") else {
        return;
    };
    let n = &r.node;
    assert_eq!(r.seen.len(), 1);
    // dnsmasq's in-flight table fills up and REFUSED unwinds the loop.
    assert_eq!(r.seen[0].status(), Some("REFUSED"), "{}", r.seen[0].text());
    assert!(r.seen[0].elapsed < Duration::from_secs(2));

    let Some(_) = r.trace() else { return };
    let packets = r.packets(&n.www_name);
    let to_nodelocal: BTreeSet<u64> = at(&packets, &n.cdns_veth, "ingress")
        .iter()
        .filter(|p| is_query(p) && p["dst"] == format!("{}:53", n.nodelocal_ip))
        .filter_map(|p| p["id"].as_u64())
        .collect();
    let to_coredns: BTreeSet<u64> = at(&packets, &n.cdns_veth, "egress")
        .iter()
        .filter(|p| {
            is_query(p)
                && p["src"]
                    .as_str()
                    .unwrap()
                    .starts_with(&n.node_ip.to_string())
        })
        .filter_map(|p| p["id"].as_u64())
        .collect();
    eprintln!(
        "forwarded copies: {} CoreDNS → node-local-dns, {} node-local-dns → CoreDNS",
        to_nodelocal.len(),
        to_coredns.len()
    );
    assert!(
        to_nodelocal.len() >= 3 && to_coredns.len() >= 3,
        "it circulates"
    );
    // …and stops by itself: nothing after the REFUSED reached the pod.
    let ts = |p: &Value| p["ts_ns"].as_u64().unwrap();
    let refused = at(&packets, &n.pod_veth, "egress")
        .into_iter()
        .find(|p| is_reply(p) && p["rcode"] == "REFUSED")
        .expect("REFUSED to the pod");
    let last_query = packets
        .iter()
        .filter(|p| is_query(p))
        .map(|p| ts(p))
        .max()
        .unwrap();
    assert!(
        last_query < ts(refused),
        "no lap after the pod got its answer"
    );
    r.assert_verdicts();
    let pod_lookup = r
        .trace()
        .unwrap()
        .lookups
        .iter()
        .find(|l| r.scenario.expect(n)[0].is_for(l))
        .unwrap();
    assert!(pod_lookup["culprit"].as_str().unwrap().contains(" <-> "));
    // The whole storm is that one lookup: no copy of it surfaces as a lookup of its own.
    let ours = r.trace().unwrap().lookups_for(&n.www_name);
    assert_eq!(
        ours.len(),
        1,
        "{:?}",
        ours.iter().map(|l| one_line(l)).collect::<Vec<_>>()
    );
}

#[test]
fn reply_from_unexpected_source() {
    let Some(r) = run(Scenario::ReplyFromUnexpectedSource, "brg") else {
        return;
    };
    let n = &r.node;
    assert!(n.bridge.is_some());
    assert_eq!(r.seen.len(), 1);
    let warning = r.seen[0]
        .unexpected_source()
        .unwrap_or_else(|| r.seen[0].text());
    assert!(
        warning.contains("unexpected reply source") && warning.contains(&n.cdns_ip.to_string()),
        "kdig: {warning}"
    );
    // dig 9.18 (connected socket) never sees it.
    let dig = n
        .query(
            &n.pod_ns,
            n.cluster_ip,
            &n.www_name,
            "A",
            &["+tries=1", "+time=1"],
        )
        .unwrap();
    assert!(dig.stdout.contains("timed out"), "{}", dig.stdout);

    let Some(_) = r.trace() else { return };
    let packets = r.packets(&n.www_name);
    let to_pod: Vec<_> = at(&packets, &n.pod_veth, "egress")
        .into_iter()
        .filter(|p| is_reply(p))
        .collect();
    assert!(!to_pod.is_empty(), "{packets:#?}");
    for p in &to_pod {
        assert_eq!(p["src"], format!("{}:53", n.cdns_ip), "DNAT not reversed");
        assert_eq!(ip_of(&p["dst"]), n.pod_ip.to_string());
    }
    let bridge = n.bridge.as_deref().unwrap();
    let pod = n.pod_ip.to_string();
    assert!(
        at(&packets, bridge, "egress")
            .iter()
            .all(|p| !is_reply(p) || ip_of(&p["dst"]) != pod),
        "the reply to the pod is bridged (switched), not routed through {bridge}"
    );
    r.assert_verdicts();
}

#[test]
fn left_via_uplink() {
    let Some(r) = run(Scenario::LeftViaUplink, "upl") else {
        return;
    };
    let n = &r.node;
    assert_eq!(r.seen.len(), 1);
    assert!(
        r.seen[0].timed_out() && r.seen[0].status().is_none(),
        "{}",
        r.seen[0].text()
    );
    // The ClusterIP still works.
    assert_eq!(
        n.query_short(&n.pod_ns, n.cluster_ip, &n.www_name, "A", &[])
            .unwrap(),
        [n.www_a.to_string()]
    );

    let Some(trace) = r.trace() else { return };
    let packets = r.packets(&n.www_name);
    let left: Vec<_> = at(&packets, &n.uplink, "egress")
        .into_iter()
        .filter(|p| is_query(p) && p["dst"] == format!("{}:53", n.nodelocal_ip))
        .collect();
    assert_eq!(left.len(), 2, "both tries leave: {packets:#?}");
    assert!(
        left.iter()
            .all(|p| ip_of(&p["src"]) == n.node_ip.to_string()),
        "SNAT"
    );
    let nodelocal = format!("{}:53", n.nodelocal_ip);
    assert!(
        packets
            .iter()
            .all(|p| !is_reply(p) || p["src"] != nodelocal.as_str()),
        "never answered"
    );
    assert!(
        !packets
            .iter()
            .any(|p| p["dir"] == "socket-in" && p["netns"] == trace.summary["netns"]),
        "never delivered on the node"
    );
    let drops = own_drops(trace, n);
    assert!(drops.is_empty(), "{drops:#?}");
    r.assert_verdicts();
}

#[test]
fn truncated_no_tcp() {
    let Some(r) = run(Scenario::TruncatedNoTcp, "tc") else {
        return;
    };
    let n = &r.node;
    assert_eq!(r.seen.len(), 1);
    assert_eq!(r.seen[0].status(), Some("NOERROR"));
    assert!(r.seen[0].flags().contains(&"tc"), "{}", r.seen[0].text());

    let Some(trace) = r.trace() else { return };
    let packets = r.packets(&n.big_name);
    let to_pod: Vec<_> = at(&packets, &n.pod_veth, "egress")
        .into_iter()
        .filter(|p| is_reply(p))
        .collect();
    assert_eq!(to_pod.len(), 1, "{packets:#?}");
    assert!(
        to_pod[0]["flags"]
            .as_array()
            .unwrap()
            .contains(&"tc".into())
    );
    assert_eq!(to_pod[0]["proto"], "udp");
    let pod = n.pod_ip.to_string();
    assert!(
        trace
            .packets
            .iter()
            .all(|p| !(p["proto"] == "tcp" && ip_of(&p["src"]) == pod)),
        "the pod never tries TCP"
    );
    r.assert_verdicts();
}

#[test]
fn dropped() {
    let Some(r) = run(Scenario::Dropped, "drp") else {
        return;
    };
    let n = &r.node;
    assert_eq!(r.seen.len(), 1);
    assert!(r.seen[0].timed_out(), "{}", r.seen[0].text());
    // node-local-dns's own path (OUTPUT, not FORWARD) still works.
    assert_eq!(
        n.query_short(&n.pod_ns, n.nodelocal_ip, &n.www_name, "A", &[])
            .unwrap(),
        [n.www_a.to_string()]
    );

    let Some(trace) = r.trace() else { return };
    let drops = own_drops(trace, n);
    assert_eq!(drops.len(), 2, "dig's two tries: {drops:#?}");
    for d in drops {
        assert_eq!(d["drop_reason"], "NETFILTER_DROP");
        assert_eq!(d["iface"], n.pod_veth.as_str());
        assert_eq!(d["dst"], format!("{}:53", n.cdns_ip), "after DNAT");
        assert_eq!(d["qname"], fqdn(&n.www_name));
        assert_eq!(d["netns"], trace.summary["netns"], "in the node's netns");
    }
    r.assert_verdicts();
}

#[test]
fn healthy() {
    let Some(r) = run(Scenario::Healthy, "ok") else {
        return;
    };
    let n = &r.node;
    assert_eq!(r.seen.len(), 2);
    for s in &r.seen {
        assert_eq!(s.status(), Some("NOERROR"), "{}", s.text());
        assert!(s.out.stdout.contains(&n.www_a.to_string()));
    }

    let Some(trace) = r.trace() else { return };
    let drops = own_drops(trace, n);
    assert!(drops.is_empty(), "{drops:#?}");
    // The socket hop sees every netns of the machine: judge this lab's lookups only.
    let ours = trace.lookups_for(&n.www_name);
    assert!(!ours.is_empty());
    for l in ours {
        assert_eq!(l["verdict"], "ok", "{}", one_line(l));
    }
    r.assert_verdicts();
}

/// The bridged node itself is healthy while br_netfilter is on (the kubenet
/// default): the reply is un-DNATed. Only the scenario's sysctl breaks it.
#[test]
fn bridged_node_reverses_dnat_with_bridge_nf_call_iptables() {
    if skip_without_root() {
        return;
    }
    let node = Node::with_options("brok", NodeOptions::bridged()).expect("bridged node");
    let out = node
        .kquery(&node.pod_ns, node.cluster_ip, &node.www_name, "A", &[])
        .unwrap();
    assert!(out.success(), "{}{}", out.stdout, out.stderr);
    assert!(
        !out.stdout.contains("unexpected reply source"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&node.www_a.to_string()),
        "{}",
        out.stdout
    );
    assert_eq!(
        node.query_short(&node.pod_ns, node.cluster_ip, &node.www_name, "A", &[])
            .unwrap(),
        [node.www_a.to_string()]
    );
}

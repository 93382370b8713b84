//! Scenario fixtures (one per failure mode of FAILURE-MODES.md, plus healthy paths) and
//! focused tests of the matching rules.
use super::scenario::{self, Row, Scenario};
use super::*;

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                scenario::assert_scenario(stringify!($name));
            }
        )*
        const SCENARIOS: &[&str] = &[$(stringify!($name)),*];
    };
}

scenarios!(
    // The failure modes of FAILURE-MODES.md, in its order.
    edns_formerr,
    random_upstream,
    loopback_nameserver,
    forwarding_loop,
    reply_unexpected_source,
    masquerade_vanish,
    truncated_no_tcp,
    kernel_drop,
    // Healthy paths and the bookkeeping around them.
    healthy_direct,
    healthy_nodelocal,
    client_retry,
    tc_then_tcp,
    nxdomain_ok,
    loss_unknown,
    flood,
    evicted_unknown,
    transparent_forwarder,
);

#[test]
fn every_fixture_has_a_test() {
    let mut files: Vec<String> = std::fs::read_dir(scenario::dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut named: Vec<&str> = SCENARIOS.to_vec();
    named.sort();
    assert_eq!(files, named);
}

/// A query row: `at` is "iface dir" or "socket-out NETNS" / "socket-in NETNS".
fn q(ts_ms: f64, at: &str, src: &str, dst: &str, id: u16) -> Row {
    let (iface, dir, netns) = match at.split_once(' ') {
        Some((d @ ("socket-out" | "socket-in"), n)) => ("socket", d, Some(n.parse().unwrap())),
        Some((iface, dir)) => (iface, dir, None),
        None => panic!("bad point {at:?}"),
    };
    Row {
        ts_ms,
        iface: iface.into(),
        dir: dir.into(),
        netns,
        src: src.into(),
        dst: dst.into(),
        id: Some(id),
        ..Row::default()
    }
}

/// A reply row.
fn r(ts_ms: f64, at: &str, src: &str, dst: &str, id: u16, rcode: &str) -> Row {
    Row {
        rcode: Some(rcode.into()),
        ..q(ts_ms, at, src, dst, id)
    }
}

fn run(rows: Vec<Row>) -> scenario::Outcome {
    run_with(Scenario::default(), rows)
}

fn run_with(mut sc: Scenario, rows: Vec<Row>) -> scenario::Outcome {
    sc.events = rows;
    scenario::run(&sc)
}

fn only(out: &scenario::Outcome) -> &Lookup {
    assert_eq!(
        out.lookups.len(),
        1,
        "want one lookup:\n{}",
        scenario::summary(&out.lookups)
    );
    &out.lookups[0]
}

const POD: &str = "10.244.0.10:40000";
const CIP: &str = "10.96.0.10:53";
const CDNS: &str = "10.244.1.10:53";

/// The pod's query to the ClusterIP, DNATed to CoreDNS, delivered there.
fn pod_to_coredns(t: f64, id: u16) -> Vec<Row> {
    vec![
        q(t, "socket-out 2", POD, CIP, id),
        q(t + 0.01, "lxcpod0 ingress", POD, CIP, id),
        q(t + 0.02, "lxccdns0 egress", POD, CDNS, id),
        q(t + 0.03, "socket-in 3", POD, CDNS, id),
    ]
}

/// CoreDNS's reply, un-DNATed on the way back.
fn coredns_to_pod(t: f64, id: u16, rcode: &str) -> Vec<Row> {
    vec![
        r(t, "socket-out 3", CDNS, POD, id, rcode),
        r(t + 0.01, "lxccdns0 ingress", CDNS, POD, id, rcode),
        r(t + 0.02, "lxcpod0 egress", CIP, POD, id, rcode),
        r(t + 0.03, "socket-in 2", CIP, POD, id, rcode),
    ]
}

#[test]
fn one_message_across_dnat_is_one_hop_chain() {
    let mut rows = pod_to_coredns(0.0, 7);
    rows.extend(coredns_to_pod(1.0, 7, "NOERROR"));
    let out = run(rows);
    let l = only(&out);
    assert_eq!(l.verdict, Verdict::Ok);
    assert_eq!(l.hops.len(), 8);
    assert!(l.children.is_empty());
    assert_eq!((l.client.as_str(), l.server.as_str()), (POD, CIP));
    // The DNATed hop keeps its own addresses.
    assert_eq!(l.hops[2].dst.to_string(), CDNS);
    assert_eq!(l.latency_ms, Some(1.03));
    assert_eq!(l.netns, Some(2));
    assert_eq!(out.stats.orphan_responses, 0);
}

#[test]
fn a_reply_matches_whatever_its_source() {
    let mut rows = pod_to_coredns(0.0, 7);
    // An address the query never went to.
    rows.push(r(
        1.0,
        "lxcpod0 egress",
        "192.0.2.99:5353",
        POD,
        7,
        "NOERROR",
    ));
    rows.push(r(1.01, "socket-in 2", "192.0.2.99:5353", POD, 7, "NOERROR"));
    let out = run(rows);
    let l = only(&out);
    assert_eq!(l.verdict, Verdict::ReplyFromUnexpectedSource);
    assert_eq!(l.culprit.as_deref(), Some("192.0.2.99:5353"));
    assert_eq!(l.rcode.as_deref(), Some("NOERROR"));
    assert_eq!(
        l.hint.as_deref().map(|h| h.contains("br_netfilter")),
        Some(true)
    );
}

#[test]
fn a_reply_to_someone_else_does_not_match() {
    let mut rows = pod_to_coredns(0.0, 7);
    rows.push(r(
        1.0,
        "lxcpod0 egress",
        CIP,
        "10.244.0.99:40000",
        7,
        "NOERROR",
    ));
    let out = run(rows);
    assert_eq!(only(&out).verdict, Verdict::Unanswered);
    assert_eq!(out.stats.orphan_responses, 1);
}

#[test]
fn forwards_nest_three_deep_and_match_names_case_insensitively() {
    // pod → node-local-dns → CoreDNS → a resolver pod (netns 4) → upstream, and the
    // resolver uses 0x20 case randomisation.
    let mut rows = vec![
        q(0.00, "socket-out 2", POD, "169.254.25.10:53", 1),
        q(0.01, "socket-in 1", POD, "169.254.25.10:53", 1),
        q(0.10, "socket-out 1", "198.51.100.10:51000", CIP, 2),
        q(0.11, "lxccdns0 egress", "198.51.100.10:51000", CDNS, 2),
        q(0.12, "socket-in 3", "198.51.100.10:51000", CDNS, 2),
        q(
            0.20,
            "socket-out 3",
            "10.244.1.10:52000",
            "10.244.2.10:53",
            3,
        ),
        q(
            0.21,
            "socket-in 4",
            "10.244.1.10:52000",
            "10.244.2.10:53",
            3,
        ),
    ];
    let mut deep = q(
        0.30,
        "socket-out 4",
        "10.244.2.10:53000",
        "203.0.113.53:53",
        4,
    );
    deep.qname = Some("wWw.ExAmPlE.tEsT.".into());
    let mut back = r(
        0.90,
        "socket-in 4",
        "203.0.113.53:53",
        "10.244.2.10:53000",
        4,
        "NOERROR",
    );
    back.qname = deep.qname.clone();
    rows.extend([
        deep.clone(),
        Row {
            ts_ms: 0.32,
            iface: "eth0".into(),
            dir: "egress".into(),
            netns: None,
            src: "198.51.100.10:53000".into(),
            ..deep
        },
        back,
        r(
            0.95,
            "socket-in 3",
            "10.244.2.10:53",
            "10.244.1.10:52000",
            3,
            "NOERROR",
        ),
        r(
            0.97,
            "socket-in 1",
            CIP,
            "198.51.100.10:51000",
            2,
            "NOERROR",
        ),
        r(0.99, "socket-in 2", "169.254.25.10:53", POD, 1, "NOERROR"),
    ]);
    let out = run(rows);
    let l = only(&out);
    assert_eq!(l.verdict, Verdict::Ok, "{}", l.detail);
    assert_eq!(l.descendants(), 3);
    let d1 = &l.children[0];
    let d2 = &d1.children[0];
    let d3 = &d2.children[0];
    assert_eq!(d1.server, CIP);
    assert_eq!(d2.server, "10.244.2.10:53");
    assert_eq!(d3.server, "203.0.113.53:53");
    assert_eq!(d3.hops.len(), 3);
    assert!(d3.children.is_empty());
    assert_eq!(out.upstreams.len(), 1);
}

#[test]
fn retransmissions_count_once_per_send_and_concurrent_queries_stay_apart() {
    let mut rows = pod_to_coredns(0.0, 7);
    rows.extend(pod_to_coredns(1000.0, 7)); // same ID, same socket: one retry
    rows.extend(pod_to_coredns(2000.0, 7)); // again: two
    // Another pod (netns 4, its own veth) asks the same question meanwhile.
    rows.push(q(2000.5, "socket-out 4", "10.244.0.20:40000", CIP, 9));
    rows.push(q(2000.51, "lxcpod1 ingress", "10.244.0.20:40000", CIP, 9));
    // The same pod, a new socket and ID, 50 ms later: a concurrent lookup, not a retry.
    rows.push(q(2050.0, "socket-out 2", "10.244.0.10:40001", CIP, 8));
    rows.extend(coredns_to_pod(2100.0, 7, "NOERROR"));
    let out = run(rows);
    assert_eq!(out.lookups.len(), 3, "{}", scenario::summary(&out.lookups));
    let first = &out.lookups[0];
    assert_eq!(
        (first.verdict, first.retries, first.hops.len()),
        (Verdict::Ok, 2, 16)
    );
    assert_eq!(out.lookups[1].client, "10.244.0.20:40000");
    assert_eq!(out.lookups[2].client, "10.244.0.10:40001");
    assert!(
        out.lookups[1..]
            .iter()
            .all(|l| l.retries == 0 && l.verdict == Verdict::Unanswered)
    );
}

#[test]
fn deadline_is_timeout_plus_grace_after_the_last_client_query() {
    let mut c = Correlator::new(Config::default());
    for row in pod_to_coredns(0.0, 7) {
        assert!(
            c.ingest(scenario::event(&row, "x.", "A"), scenario::ns(row.ts_ms))
                .is_empty()
        );
    }
    // Retransmitted at 1 s: the deadline moves to 1 s + 5.5 s.
    let again = q(1000.0, "socket-out 2", POD, CIP, 7);
    c.ingest(scenario::event(&again, "x.", "A"), scenario::ns(1000.0));
    assert!(c.expire(6_499_999_999).is_empty());
    assert_eq!(c.stats().live_lookups, 1);
    let done = c.expire(6_500_000_000);
    assert_eq!(done.len(), 1);
    assert_eq!((done[0].verdict, done[0].retries), (Verdict::Unanswered, 1));
    assert_eq!(c.stats().live_lookups, 0);
    assert!(c.finish(7_000_000_000).is_empty());
}

#[test]
fn stopping_before_the_timeout_is_unknown() {
    let sc = Scenario {
        end_ms: Some(100.0),
        ..Scenario::default()
    };
    let out = run_with(sc, pod_to_coredns(0.0, 7));
    let l = only(&out);
    assert_eq!(l.verdict, Verdict::Unknown);
    assert!(
        l.detail.contains("capture stopped 100 ms after"),
        "{}",
        l.detail
    );
}

#[test]
fn hops_per_leg_are_capped_and_counted() {
    let rows: Vec<Row> = (0..100)
        .map(|i| q(f64::from(i) * 300.0, "lxcpod0 ingress", POD, CIP, 7))
        .collect();
    let mut sc = Scenario::default();
    sc.config.timeout_ms = Some(60_000);
    let out = run_with(sc, rows);
    let l = only(&out);
    assert_eq!(l.hops.len(), state::MAX_HOPS);
    assert_eq!(l.hops_omitted, 100 - state::MAX_HOPS as u32);
    assert_eq!(l.retries, 99);
    assert_eq!(out.stats.hops_omitted, 100 - state::MAX_HOPS as u64);
}

#[test]
fn forwarded_queries_per_lookup_are_capped_and_absorbed() {
    // A forwarder storm: 100 new queries for the same question from CoreDNS's netns.
    let mut rows = pod_to_coredns(0.0, 7);
    for i in 0..100u16 {
        let t = 0.1 + f64::from(i) * 0.01;
        rows.push(q(
            t,
            "socket-out 3",
            &format!("10.244.1.10:{}", 50000 + i),
            "203.0.113.53:53",
            100 + i,
        ));
    }
    let out = run(rows);
    let l = only(&out);
    assert_eq!(l.children.len(), state::MAX_LEGS - 1);
    assert_eq!(l.children_omitted, 100 - (state::MAX_LEGS as u32 - 1));
    assert_eq!(out.stats.started, 1);
}

#[test]
fn loop_between_two_forwarders() {
    // node-local-dns → CoreDNS → node-local-dns → CoreDNS …
    let nld = "169.254.25.10:53";
    let mut rows = vec![
        q(0.00, "socket-out 2", POD, nld, 1),
        q(0.01, "socket-in 1", POD, nld, 1),
    ];
    for k in 0..3u16 {
        let t = 0.1 + f64::from(k) * 0.2;
        let p = 51000 + k;
        rows.push(q(
            t,
            "socket-out 1",
            &format!("198.51.100.10:{p}"),
            CDNS,
            10 + k,
        ));
        rows.push(q(
            t + 0.01,
            "socket-in 3",
            &format!("198.51.100.10:{p}"),
            CDNS,
            10 + k,
        ));
        rows.push(q(
            t + 0.1,
            "socket-out 3",
            &format!("10.244.1.10:{p}"),
            nld,
            20 + k,
        ));
        rows.push(q(
            t + 0.11,
            "socket-in 1",
            &format!("10.244.1.10:{p}"),
            nld,
            20 + k,
        ));
    }
    let out = run(rows);
    let l = only(&out);
    assert_eq!(l.verdict, Verdict::ForwardingLoop, "{}", l.detail);
    assert_eq!(l.descendants(), 6);
    assert!(
        l.detail.contains("3 forwarded copies, nested 6 deep"),
        "{}",
        l.detail
    );
}

#[test]
fn server_error_blames_the_deepest_hop_it_came_out_of() {
    let up = "203.0.113.53:53";
    let mut rows = pod_to_coredns(0.0, 7);
    rows.push(q(0.1, "socket-out 3", "10.244.1.10:52000", up, 70));
    rows.push(q(0.2, "eth0 egress", "198.51.100.10:52000", up, 70));
    rows.push(r(
        5.0,
        "eth0 ingress",
        up,
        "198.51.100.10:52000",
        70,
        "SERVFAIL",
    ));
    rows.push(r(
        5.1,
        "socket-in 3",
        up,
        "10.244.1.10:52000",
        70,
        "SERVFAIL",
    ));
    rows.extend(coredns_to_pod(6.0, 7, "SERVFAIL"));
    // Second lookup: the upstream is silent and CoreDNS answers SERVFAIL itself.
    let pod2 = "10.244.0.10:40001";
    rows.push(q(100.0, "socket-out 2", pod2, CIP, 8));
    rows.push(q(100.1, "socket-in 3", pod2, CDNS, 8));
    rows.push(q(100.2, "socket-out 3", "10.244.1.10:52001", up, 80));
    rows.push(r(2100.0, "socket-out 3", CDNS, pod2, 8, "SERVFAIL"));
    rows.push(r(2100.1, "socket-in 2", CIP, pod2, 8, "SERVFAIL"));
    let out = run(rows);
    assert_eq!(out.lookups.len(), 2);
    let (a, b) = (&out.lookups[0], &out.lookups[1]);
    assert_eq!(a.verdict, Verdict::ServerError);
    assert_eq!(a.culprit.as_deref(), Some(up));
    assert_eq!(a.last_hop.as_deref(), Some("eth0 ingress"));
    assert_eq!(b.verdict, Verdict::ServerError);
    assert_eq!(b.culprit.as_deref(), Some(CDNS));
    assert!(
        b.detail.contains("203.0.113.53:53 no reply"),
        "{}",
        b.detail
    );
}

#[test]
fn missing_coverage_turns_silence_into_unknown() {
    // Last seen entering the host from the pod, towards node-local-dns: only the socket
    // hop could show whether it was delivered.
    let rows = vec![q(0.0, "lxcpod0 ingress", POD, "169.254.25.10:53", 1)];
    let mut sc = Scenario::default();
    sc.config.socket = Some(false);
    let out = run_with(sc, rows.clone());
    let l = only(&out);
    assert_eq!(l.verdict, Verdict::Unknown);
    assert!(
        l.detail.contains("socket hop is not watched"),
        "{}",
        l.detail
    );
    // The same with an unwatched uplink.
    let mut sc = Scenario::default();
    sc.config.ifaces = Some(vec!["lxcpod0".into()]);
    let out = run_with(sc, rows.clone());
    assert!(only(&out).detail.contains("uplink eth0 is not watched"));
    // Full coverage: unanswered, blaming where it was going.
    let out = run(rows);
    let l = only(&out);
    assert_eq!(l.verdict, Verdict::Unanswered);
    assert_eq!(l.culprit.as_deref(), Some("169.254.25.10:53"));
    assert_eq!(l.last_hop.as_deref(), Some("lxcpod0 ingress"));
}

#[test]
fn lookup_json_uses_the_documented_names() {
    let mut rows = pod_to_coredns(0.0, 7);
    rows[0].edns = Some(scenario::EdnsRow {
        udp: 1232,
        dnssec_ok: false,
    });
    rows.extend(coredns_to_pod(1.0, 7, "NXDOMAIN"));
    let out = run(rows);
    let v = serde_json::to_value(only(&out)).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    for k in [
        "client",
        "server",
        "qname",
        "qtype",
        "rcode",
        "verdict",
        "culprit",
        "last_hop",
        "hint",
        "latency_ms",
        "detail",
        "hops",
        "children",
        "retries",
        "start_ts_ns",
        "netns",
    ] {
        assert!(keys.contains(&k), "missing {k} in {keys:?}");
    }
    assert_eq!(v["verdict"], "ok");
    assert_eq!(v["rcode"], "NXDOMAIN");
    let hop = &v["hops"][0];
    assert_eq!(hop["dir"], "socket-out");
    assert_eq!(hop["src"], POD);
    assert_eq!(hop["edns"]["udp"], 1232);
    assert_eq!(hop["edns"]["do"], false);
    assert_eq!(hop["proto"], "udp");
    assert_eq!(v["hops"][7]["rcode"], "NXDOMAIN");
    for verdict in Verdict::ALL {
        assert_eq!(serde_json::to_value(verdict).unwrap(), verdict.as_str());
    }
}

#[test]
fn severities() {
    assert_eq!(Verdict::Ok.severity(), Severity::Ok);
    assert_eq!(Verdict::Unknown.severity(), Severity::Info);
    assert_eq!(Verdict::UpstreamRejectsEdns.severity(), Severity::Warning);
    assert_eq!(Verdict::Unanswered.severity(), Severity::Error);
    assert!(Severity::Error > Severity::Warning && Severity::Info > Severity::Ok);
}

#[test]
fn parallel_queries_to_two_nameservers_are_one_lookup() {
    // musl sends the same query (same socket and ID) to every nameserver at once.
    let other = "10.96.0.11:53";
    let rows = vec![
        q(0.00, "socket-out 2", POD, CIP, 5),
        q(0.01, "socket-out 2", POD, other, 5),
        q(0.02, "lxcpod0 ingress", POD, CIP, 5),
        q(0.03, "lxcpod0 ingress", POD, other, 5),
        r(0.50, "lxcpod0 egress", other, POD, 5, "NOERROR"),
        r(0.51, "socket-in 2", other, POD, 5, "NOERROR"),
    ];
    let out = run(rows);
    let l = only(&out);
    assert_eq!((l.verdict, l.retries, l.hops.len()), (Verdict::Ok, 1, 6));
    assert_eq!(l.server, CIP);
}

#[test]
fn placed_names_the_lookup_and_leg_of_each_event() {
    let sc = Scenario::default();
    let mut c = Correlator::new(sc.config.build());
    let mut feed = |row: Row| {
        let t = scenario::ns(row.ts_ms);
        let done = c.ingest(scenario::event(&row, "www.example.test.", "A"), t);
        (c.placed(), done)
    };
    // A client query opens lookup 1 at leg 0; its next hop (DNAT rewrote the destination).
    let (p, _) = feed(q(0.0, "lxcpod0 ingress", POD, CIP, 7));
    assert_eq!(
        p,
        Some(Placement {
            lookup: 1,
            leg: Some(0)
        })
    );
    let (p, _) = feed(q(0.1, "eth0 egress", POD, CDNS, 7));
    assert_eq!(
        p,
        Some(Placement {
            lookup: 1,
            leg: Some(0)
        })
    );
    // Another client: lookup 2.
    let (p, _) = feed(q(0.2, "lxcpod1 ingress", "10.244.0.11:41000", CIP, 9));
    assert_eq!(
        p,
        Some(Placement {
            lookup: 2,
            leg: Some(0)
        })
    );
    // CoreDNS forwards lookup 1 upstream with a new ID: leg 1 of lookup 1.
    let (p, _) = feed(q(
        1.0,
        "eth0 egress",
        "10.244.1.10:5000",
        "192.0.2.53:53",
        77,
    ));
    assert_eq!(
        p,
        Some(Placement {
            lookup: 1,
            leg: Some(1)
        })
    );
    // A reply nobody asked for is placed nowhere.
    let (p, _) = feed(r(1.5, "eth0 ingress", "192.0.2.99:53", POD, 999, "NOERROR"));
    assert_eq!(p, None);
    // The reply reaching the client finishes lookup 1; the finished record has that id.
    let (p, done) = feed(r(2.0, "lxcpod0 egress", CIP, POD, 7, "NOERROR"));
    assert_eq!(
        p,
        Some(Placement {
            lookup: 1,
            leg: Some(0)
        })
    );
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].id, 1);
    assert!(done[0].children.iter().all(|child| child.id == 1));
    let rest = c.finish(scenario::ns(10_000.0));
    assert_eq!(rest.iter().map(|l| l.id).collect::<Vec<_>>(), [2]);
}

/// A loop storm longer than the leg cap (pod → node-local-dns ⇄ CoreDNS, 200
/// copies, each with its own ID and port) stays one lookup: the copies past the
/// cap, and every later sighting and reply of them, are counted, not new lookups.
#[test]
fn loop_storm_past_the_leg_cap_is_one_lookup() {
    let nld = "169.254.25.10:53";
    let mut rows = vec![
        q(0.0, "socket-out 2", POD, nld, 1),
        q(0.01, "lxcpod0 ingress", POD, nld, 1),
        q(0.02, "socket-in 1", POD, nld, 1),
    ];
    let copies = 200u16;
    for n in 0..copies {
        let t = 0.1 + f64::from(n) * 0.05;
        let (at_out, at_in, src, dst) = if n % 2 == 0 {
            (
                "socket-out 1",
                "socket-in 3",
                format!("198.51.100.10:{}", 30000 + n),
                CDNS,
            )
        } else {
            (
                "socket-out 3",
                "socket-in 1",
                format!("10.244.1.10:{}", 30000 + n),
                nld,
            )
        };
        rows.push(q(t, at_out, &src, dst, 100 + n));
        rows.push(q(t + 0.01, at_in, &src, dst, 100 + n));
    }
    // The innermost copy is refused; the refusals unwind back to the pod.
    for n in (0..copies).rev() {
        let t = 20.0 + f64::from(copies - n) * 0.05;
        let (at_out, at_in, src, dst) = if n % 2 == 0 {
            (
                "socket-out 3",
                "socket-in 1",
                CDNS.to_owned(),
                format!("198.51.100.10:{}", 30000 + n),
            )
        } else {
            (
                "socket-out 1",
                "socket-in 3",
                nld.to_owned(),
                format!("10.244.1.10:{}", 30000 + n),
            )
        };
        rows.push(r(t, at_out, &src, &dst, 100 + n, "REFUSED"));
        rows.push(r(t + 0.01, at_in, &src, &dst, 100 + n, "REFUSED"));
    }
    rows.push(r(40.0, "socket-out 1", nld, POD, 1, "REFUSED"));
    rows.push(r(40.01, "lxcpod0 egress", nld, POD, 1, "REFUSED"));
    rows.push(r(40.02, "socket-in 2", nld, POD, 1, "REFUSED"));
    let out = run(rows);
    let l = only(&out);
    assert_eq!(l.verdict, Verdict::ForwardingLoop, "{}", l.detail);
    assert_eq!(l.rcode.as_deref(), Some("REFUSED"));
    assert!(
        out.stats.legs_omitted > 0,
        "the storm went past the leg cap"
    );
    assert_eq!(
        out.stats.orphan_responses, 0,
        "every refusal belongs to the lookup"
    );
}

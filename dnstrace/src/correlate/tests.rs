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
    drop_other_socket,
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

/// Pod A on this node asks a server pod on another node across a VXLAN overlay: the
/// uplink sees the query and the reply inside the tunnel, with the pods' own addresses.
#[test]
fn a_lookup_across_an_overlay_is_one_chain_with_the_tunnel_on_the_uplink_hops() {
    const SERVER: &str = "10.244.1.10:53";
    let out_tunnel = "vxlan 42 10.0.0.1:51000 10.0.0.2:4789";
    let in_tunnel = "vxlan 42 10.0.0.2:33000 10.0.0.1:4789";
    let tunneled = |row: Row, t: &str| Row {
        tunnel: Some(t.into()),
        ..row
    };
    let out = run(vec![
        q(0.0, "socket-out 2", POD, SERVER, 7),
        q(0.01, "lxcpod0 ingress", POD, SERVER, 7),
        q(0.02, "vxlan0 egress", POD, SERVER, 7),
        tunneled(q(0.03, "eth0 egress", POD, SERVER, 7), out_tunnel),
        tunneled(r(0.5, "eth0 ingress", SERVER, POD, 7, "NOERROR"), in_tunnel),
        r(0.51, "vxlan0 ingress", SERVER, POD, 7, "NOERROR"),
        r(0.52, "lxcpod0 egress", SERVER, POD, 7, "NOERROR"),
        r(0.53, "socket-in 2", SERVER, POD, 7, "NOERROR"),
    ]);
    let l = only(&out);
    assert_eq!(
        l.verdict,
        Verdict::Ok,
        "{}",
        scenario::summary(&out.lookups)
    );
    assert_eq!(l.hops.len(), 8);
    let tunnels: Vec<Option<String>> = l
        .hops
        .iter()
        .map(|h| h.tunnel.map(|t| t.to_string()))
        .collect();
    let mut want = vec![None; 8];
    want[3] = Some("vxlan vni 42 10.0.0.1:51000→10.0.0.2:4789".to_owned());
    want[4] = Some("vxlan vni 42 10.0.0.2:33000→10.0.0.1:4789".to_owned());
    assert_eq!(tunnels, want);
    let json = serde_json::to_value(&l.hops[3]).unwrap();
    assert_eq!(json["src"], POD);
    assert_eq!(
        json["tunnel"],
        serde_json::json!({"kind": "vxlan", "vni": 42, "src": "10.0.0.1:51000", "dst": "10.0.0.2:4789"})
    );
    assert!(
        serde_json::to_value(&l.hops[2])
            .unwrap()
            .get("tunnel")
            .is_none()
    );

    // Never answered: the detail says which tunnel it was last seen leaving in.
    let out = run(vec![
        q(0.0, "lxcpod0 ingress", POD, SERVER, 8),
        tunneled(q(0.03, "eth0 egress", POD, SERVER, 8), out_tunnel),
    ]);
    let l = only(&out);
    assert_eq!(l.verdict, Verdict::Unanswered);
    assert_eq!(l.last_hop.as_deref(), Some("eth0 egress"));
    let seen =
        "(10.244.0.10:40000 → 10.244.1.10:53, inside vxlan vni 42 10.0.0.1:51000→10.0.0.2:4789)";
    assert!(l.detail.contains(seen), "{}", l.detail);
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
    assert_eq!(
        (l.client.to_string(), l.server.to_string()),
        (POD.into(), CIP.into())
    );
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
    assert_eq!(l.rcode.map(|r| r.name()).as_deref(), Some("NOERROR"));
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
    assert_eq!(d1.server.to_string(), CIP);
    assert_eq!(d2.server.to_string(), "10.244.2.10:53");
    assert_eq!(d3.server.to_string(), "203.0.113.53:53");
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
    assert_eq!(out.lookups[1].client.to_string(), "10.244.0.20:40000");
    assert_eq!(out.lookups[2].client.to_string(), "10.244.0.10:40001");
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
        l.detail.contains("6 forwarded copies, nested 6 deep"),
        "{}",
        l.detail
    );
}

/// Forwarders that coalesce identical in-flight questions (dnsmasq, BIND): the question
/// goes node-local-dns → ClusterIP (CoreDNS) → node-local-dns → ClusterIP once, and then
/// each forwarder only retransmits its pending query (same ID) until a fetch timeout ends
/// in SERVFAIL. No storm: two copies per address pair. CoreDNS's copy to node-local-dns,
/// which the pod asked first (a server already on its path), is the loop.
#[test]
fn loop_between_coalescing_forwarders_is_caught_at_the_first_repetition() {
    let nld = "169.254.25.10:53";
    let node = "198.51.100.10";
    let mut rows = vec![
        q(0.00, "socket-out 2", POD, nld, 1),
        q(0.01, "lxcpod0 ingress", POD, nld, 1),
        q(0.02, "socket-in 1", POD, nld, 1),
    ];
    // node-local-dns (host netns 1) → ClusterIP, DNATed to CoreDNS (netns 3).
    let to_cdns = |rows: &mut Vec<Row>, t: f64, port: u16, id: u16| {
        let src = format!("{node}:{port}");
        rows.push(q(t, "socket-out 1", &src, CIP, id));
        rows.push(q(t + 0.01, "lxccdns0 egress", &src, CDNS, id));
        rows.push(q(t + 0.02, "socket-in 3", &src, CDNS, id));
    };
    // CoreDNS (netns 3) → node-local-dns, as the node's resolv.conf says.
    let to_nld = |rows: &mut Vec<Row>, t: f64, port: u16, id: u16| {
        let src = format!("10.244.1.10:{port}");
        rows.push(q(t, "socket-out 3", &src, nld, id));
        rows.push(q(t + 0.01, "lxccdns0 ingress", &src, nld, id));
        rows.push(q(t + 0.02, "socket-in 1", &src, nld, id));
    };
    to_cdns(&mut rows, 0.1, 51000, 0x10);
    to_nld(&mut rows, 0.2, 52000, 0x20);
    to_cdns(&mut rows, 0.3, 51001, 0x11);
    to_nld(&mut rows, 0.4, 52001, 0x21);
    // Then only retransmissions of the pending queries, same IDs, every ~1.5 s.
    for k in 1..=3u16 {
        let t = f64::from(k) * 1400.0;
        to_cdns(&mut rows, t, 51000, 0x10);
        to_nld(&mut rows, t + 100.0, 52000, 0x20);
    }
    let out = run(rows);
    let l = only(&out);
    assert_eq!(l.verdict, Verdict::ForwardingLoop, "{}", l.detail);
    assert_eq!(
        l.culprit.as_deref(),
        Some("10.244.1.10:53 <-> 169.254.25.10:53"),
        "{}",
        l.detail
    );
    // CoreDNS's copy reaches node-local-dns, which the pod itself asked.
    assert!(
        l.detail.contains(
            "the copy sent to 169.254.25.10:53 at depth 2 reaches a server already asked at depth 0"
        ),
        "{}",
        l.detail
    );
    assert_eq!(l.last_hop.as_deref(), Some("socket-in (netns 1)"));
}

/// A client asking a forwarder that asks the same server the client could have asked is
/// no loop: only a server already on the copy's own path counts.
#[test]
fn the_same_upstream_under_two_lookups_is_no_loop() {
    let up = "203.0.113.53:53";
    let mut rows = pod_to_coredns(0.0, 7);
    rows.push(q(0.1, "socket-out 3", "10.244.1.10:52000", up, 70));
    rows.push(q(0.2, "eth0 egress", "198.51.100.10:52000", up, 70));
    rows.push(r(
        0.5,
        "eth0 ingress",
        up,
        "198.51.100.10:52000",
        70,
        "NOERROR",
    ));
    rows.push(r(
        0.6,
        "socket-in 3",
        up,
        "10.244.1.10:52000",
        70,
        "NOERROR",
    ));
    rows.extend(coredns_to_pod(0.7, 7, "NOERROR"));
    // The pod then asks the upstream itself.
    rows.push(q(10.0, "socket-out 2", POD, up, 8));
    rows.push(r(10.5, "socket-in 2", up, POD, 8, "NOERROR"));
    let out = run(rows);
    assert_eq!(out.lookups.len(), 2);
    assert!(
        out.lookups.iter().all(|l| l.verdict == Verdict::Ok),
        "{:?}",
        out.lookups.iter().map(|l| &l.detail).collect::<Vec<_>>()
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
    assert_eq!(l.server.to_string(), CIP);
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
    assert_eq!(l.rcode.map(|r| r.name()).as_deref(), Some("REFUSED"));
    assert!(
        out.stats.legs_omitted > 0,
        "the storm went past the leg cap"
    );
    assert_eq!(
        out.stats.orphan_responses, 0,
        "every refusal belongs to the lookup"
    );
}

/// A drop beyond the node (the router's netns, on a machine that also hosts it) after the
/// query left through the uplink is a consequence: the first fault in path order is the
/// query to the node-local address leaving the node.
#[test]
fn left_via_uplink_then_dropped_further_on_is_left_via_uplink() {
    let nld = "169.254.25.10:53";
    let snat = "198.51.100.10:40000";
    let rows = vec![
        q(0.00, "socket-out 2", POD, nld, 1),
        q(0.01, "lxcpod0 ingress", POD, nld, 1),
        q(0.03, "eth0 egress", snat, nld, 1),
        Row {
            netns: Some(9),
            drop_reason: Some("NETFILTER_DROP".into()),
            ..q(0.05, "eth0 drop", snat, nld, 1)
        },
    ];
    let out = run(rows);
    let l = only(&out);
    assert_eq!(l.verdict, Verdict::LeftViaUplink, "{}", l.detail);
    assert_eq!(l.culprit.as_deref(), Some("eth0"));
    assert_eq!(l.last_hop.as_deref(), Some("eth0 egress"));
    assert!(
        l.detail
            .contains("further on it was dropped at eth0 drop (netns 9): NETFILTER_DROP"),
        "{}",
        l.detail
    );
}

/// A node firewall that drops the overlay's datagrams: the drop of the encapsulated
/// query is on this node even though the overlay device (an uplink to the routes) saw the
/// query first; once the datagram has left by the underlay, a drop is further on.
#[test]
fn a_dropped_overlay_datagram_is_dropped_until_it_left_by_the_underlay() {
    const SERVER: &str = "10.244.1.10:53";
    let tunnel = "vxlan 42 10.0.0.1:51000 10.0.0.2:4789";
    let both_uplinks = || Scenario {
        config: scenario::ConfigRow {
            uplinks: Some(vec!["eth0".into(), "vxlan0".into()]),
            ..Default::default()
        },
        ..Scenario::default()
    };
    let drop = |ts: f64, netns: u64| Row {
        netns: Some(netns),
        drop_reason: Some("NETFILTER_DROP".into()),
        tunnel: Some(tunnel.into()),
        ..q(ts, "vxlan0 drop", POD, SERVER, 9)
    };
    let out = run_with(
        both_uplinks(),
        vec![
            q(0.0, "lxcpod0 ingress", POD, SERVER, 9),
            q(0.01, "vxlan0 egress", POD, SERVER, 9),
            drop(0.02, 1),
        ],
    );
    let l = only(&out);
    assert_eq!(l.verdict, Verdict::Dropped, "{}", l.detail);
    assert_eq!(l.culprit.as_deref(), Some("vxlan0 (NETFILTER_DROP)"));
    assert!(
        l.detail.ends_with(
            "at vxlan0 inside vxlan vni 42 10.0.0.1:51000→10.0.0.2:4789: NETFILTER_DROP"
        ),
        "{}",
        l.detail
    );
    assert!(
        l.hint
            .as_deref()
            .is_some_and(|h| h.contains("udp 4789 (vxlan)")),
        "{:?}",
        l.hint
    );
    let out = run_with(
        both_uplinks(),
        vec![
            q(0.0, "lxcpod0 ingress", POD, SERVER, 9),
            q(0.01, "vxlan0 egress", POD, SERVER, 9),
            Row {
                tunnel: Some(tunnel.into()),
                ..q(0.02, "eth0 egress", POD, SERVER, 9)
            },
            drop(0.05, 7),
        ],
    );
    let l = only(&out);
    assert_eq!(l.verdict, Verdict::Unanswered, "{}", l.detail);
    assert!(
        l.detail.contains("further on it was dropped"),
        "{}",
        l.detail
    );
}

/// A drop on the node before the query could leave is still the cause.
#[test]
fn a_drop_on_the_node_before_the_uplink_is_dropped() {
    let up = "203.0.113.53:53";
    let mut rows = pod_to_coredns(0.0, 7);
    rows.push(q(0.1, "socket-out 3", "10.244.1.10:52000", up, 70));
    rows.push(Row {
        drop_reason: Some("NETFILTER_DROP".into()),
        ..q(0.2, "lxccdns0 drop", "10.244.1.10:52000", up, 70)
    });
    let out = run_with(
        Scenario {
            end_ms: Some(20_000.0),
            ..Scenario::default()
        },
        rows,
    );
    let l = only(&out);
    assert_eq!(l.verdict, Verdict::Dropped, "{}", l.detail);
    assert_eq!(l.culprit.as_deref(), Some("lxccdns0 (NETFILTER_DROP)"));
}

/// One forwarder, the same question, different servers, different rcodes: disagreement,
/// with no uplink known and the upstreams' own netns visible to the socket hop (so the
/// forwarded queries end in a socket-in, not a departure).
fn random_upstream_without_uplink(first: &str, second: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    for (k, (up, rcode)) in [(first, "NOERROR"), (second, "NXDOMAIN"), (first, "NOERROR")]
        .into_iter()
        .enumerate()
    {
        let t = k as f64 * 1000.0;
        let id = 10 + k as u16;
        let pod = format!("10.244.0.10:{}", 40100 + k);
        let fwd = format!("10.244.1.10:{}", 52100 + k);
        let node = format!("198.51.100.10:{}", 52100 + k);
        rows.extend([
            q(t, "socket-out 2", &pod, CIP, id),
            q(t + 0.02, "lxccdns0 egress", &pod, CDNS, id),
            q(t + 0.03, "socket-in 3", &pod, CDNS, id),
            q(t + 0.1, "socket-out 3", &fwd, up, 100 + id),
            q(t + 0.12, "up0 egress", &node, up, 100 + id),
            q(t + 0.15, "socket-in 9", &node, up, 100 + id),
            r(t + 1.0, "socket-out 9", up, &node, 100 + id, rcode),
            r(t + 1.02, "up0 ingress", up, &node, 100 + id, rcode),
            r(t + 1.05, "socket-in 3", up, &fwd, 100 + id, rcode),
            r(t + 1.1, "socket-out 3", CDNS, &pod, id, rcode),
            r(t + 1.2, "socket-in 2", CIP, &pod, id, rcode),
        ]);
    }
    rows
}

#[test]
fn disagreement_needs_no_uplink() {
    let no_uplink = || Scenario {
        config: scenario::ConfigRow {
            uplinks: Some(Vec::new()),
            ..Default::default()
        },
        ..Scenario::default()
    };
    let rows = random_upstream_without_uplink("203.0.113.53:53", "203.0.113.54:53");
    let out = run_with(no_uplink(), rows);
    let verdicts: Vec<Verdict> = out.lookups.iter().map(|l| l.verdict).collect();
    assert_eq!(
        verdicts,
        [
            Verdict::Ok,
            Verdict::UpstreamDisagreement,
            Verdict::UpstreamDisagreement
        ],
        "{}",
        scenario::summary(&out.lookups)
    );
    let l = &out.lookups[1];
    assert_eq!(l.culprit.as_deref(), Some("203.0.113.54:53"));
    assert!(
        l.detail
            .contains("it fails only when forwarded to 203.0.113.54:53"),
        "{}",
        l.detail
    );
    // The same answers from one server only: no disagreement.
    let rows = random_upstream_without_uplink("203.0.113.53:53", "203.0.113.53:53");
    let out = run_with(no_uplink(), rows);
    assert!(
        out.lookups.iter().all(|l| l.verdict == Verdict::Ok),
        "{}",
        scenario::summary(&out.lookups)
    );
}

/// node-local-dns's own query to the ClusterIP, seen first at the socket hop after the
/// host's OUTPUT DNAT (so already addressed to the CoreDNS pod), whose reply comes back
/// correctly reverse-NATed from the ClusterIP: not a reply from an unexpected source,
/// even when it could not be attached to a client lookup.
#[test]
fn a_host_query_seen_after_output_dnat_takes_its_reverse_nat_reply() {
    let src = "198.51.100.10:51000";
    let rows = vec![
        q(0.00, "socket-out 1", src, CDNS, 9),
        q(0.01, "lxccdns0 egress", src, CDNS, 9),
        q(0.02, "socket-in 3", src, CDNS, 9),
        r(0.30, "socket-out 3", CDNS, src, 9, "NOERROR"),
        r(0.31, "lxccdns0 ingress", CDNS, src, 9, "NOERROR"),
        r(0.32, "socket-in 1", CIP, src, 9, "NOERROR"),
    ];
    let out = run(rows);
    let l = only(&out);
    assert_eq!(l.verdict, Verdict::Ok, "{}", l.detail);
    // A pod's socket is seen before any NAT: there a stray source is still flagged.
    let rows = vec![
        q(0.00, "socket-out 2", POD, CIP, 9),
        q(0.01, "lxcpod0 ingress", POD, CIP, 9),
        r(0.32, "lxcpod0 egress", "10.244.9.9:53", POD, 9, "NOERROR"),
        r(0.33, "socket-in 2", "10.244.9.9:53", POD, 9, "NOERROR"),
    ];
    let out = run(rows);
    assert_eq!(only(&out).verdict, Verdict::ReplyFromUnexpectedSource);
}

/// dnsperf: after an answer, the same socket asks the same question again with a new ID
/// (or the same ID, reused): a new lookup each time, never a retry of the answered one.
#[test]
fn a_new_query_after_an_answer_is_a_new_lookup() {
    let mut rows = Vec::new();
    for (k, id) in [7u16, 8, 8].into_iter().enumerate() {
        let t = k as f64 * 300.0;
        rows.extend(pod_to_coredns(t, id));
        rows.extend(coredns_to_pod(t + 0.5, id, "NOERROR"));
    }
    let out = run(rows);
    assert_eq!(out.lookups.len(), 3, "{}", scenario::summary(&out.lookups));
    for l in &out.lookups {
        assert_eq!((l.verdict, l.retries), (Verdict::Ok, 0), "{}", l.detail);
        assert!(
            l.latency_ms.is_some_and(|ms| ms < 1.0),
            "{:?}",
            l.latency_ms
        );
    }
    assert_eq!(out.stats.orphan_responses, 0);
}

/// Two sockets of one client (dnsperf/dnsload style) with the same ID and question in
/// flight together: each socket's sightings stay with its own message, so each forwarded
/// query finds its parent, and no forwarder query becomes a root lookup whose
/// reverse-NATed reply looks unexpected (issue 9, defect 4: 4,014 false alarms in
/// 100,000 lookups at 10k qps).
#[test]
fn two_sockets_reusing_an_id_keep_their_own_messages() {
    let nld = "169.254.25.10:53";
    let (a, b) = ("10.244.0.10:40001", "10.244.0.10:40002");
    let (fa, fb) = ("198.51.100.10:51001", "198.51.100.10:51002");
    let rows = vec![
        q(0.00, "socket-out 2", a, nld, 7),
        q(0.01, "lxcpod0 ingress", a, nld, 7),
        q(0.02, "socket-out 2", b, nld, 7),
        q(0.03, "lxcpod0 ingress", b, nld, 7),
        q(0.04, "socket-in 1", a, nld, 7),
        q(0.05, "socket-in 1", b, nld, 7),
        // node-local-dns's queries, seen by the socket hop after the OUTPUT DNAT.
        q(0.10, "socket-out 1", fa, CDNS, 70),
        q(0.11, "socket-out 1", fb, CDNS, 71),
        q(0.12, "lxccdns0 egress", fa, CDNS, 70),
        q(0.13, "lxccdns0 egress", fb, CDNS, 71),
        r(0.40, "lxccdns0 ingress", CDNS, fa, 70, "NOERROR"),
        r(0.41, "socket-in 1", CIP, fa, 70, "NOERROR"),
        r(0.42, "lxccdns0 ingress", CDNS, fb, 71, "NOERROR"),
        r(0.43, "socket-in 1", CIP, fb, 71, "NOERROR"),
        r(0.50, "lxcpod0 egress", nld, a, 7, "NOERROR"),
        r(0.51, "socket-in 2", nld, a, 7, "NOERROR"),
        r(0.60, "lxcpod0 egress", nld, b, 7, "NOERROR"),
        r(0.61, "socket-in 2", nld, b, 7, "NOERROR"),
    ];
    let out = run(rows);
    assert_eq!(out.lookups.len(), 2, "{}", scenario::summary(&out.lookups));
    for (l, client, ms) in [(&out.lookups[0], a, 0.51), (&out.lookups[1], b, 0.59)] {
        assert_eq!(l.client.to_string(), client);
        assert_eq!((l.verdict, l.retries), (Verdict::Ok, 0), "{}", l.detail);
        assert_eq!(l.children.len(), 1, "{}", scenario::summary(&out.lookups));
        assert_eq!(l.latency_ms, Some(ms));
        assert_eq!(l.hops.len(), 5, "{:?}", l.hops);
    }
}

/// During a stall, the forwarder asks upstream again from a new port and gets the answer;
/// the late reply to its abandoned first query finds that socket closed (NO_SOCKET). The
/// client got its answer: the drop is a consequence, not the lookup's fault.
#[test]
fn a_late_reply_to_a_superseded_forwarded_query_is_no_drop() {
    let up = "203.0.113.53:53";
    let mut rows = pod_to_coredns(0.0, 7);
    rows.push(q(0.1, "socket-out 3", "10.244.1.10:52000", up, 70));
    rows.push(q(68.0, "socket-out 3", "10.244.1.10:52001", up, 71));
    rows.push(r(
        68.5,
        "socket-in 3",
        up,
        "10.244.1.10:52001",
        71,
        "NOERROR",
    ));
    rows.push(Row {
        netns: Some(3),
        drop_reason: Some("NO_SOCKET".into()),
        ..r(68.6, "eth0 drop", up, "10.244.1.10:52000", 70, "NOERROR")
    });
    rows.extend(coredns_to_pod(68.7, 7, "NOERROR"));
    let out = run(rows);
    let l = only(&out);
    assert_eq!(l.verdict, Verdict::Ok, "{}", l.detail);
    assert_eq!(l.children.len(), 2, "{}", scenario::summary(&out.lookups));
}

/// A pod's query crosses its veth to a server on the node; the server's reply finds the
/// pod gone (deleted with its veth). Without the gap that is `unanswered`; with it, the
/// lookup is `unknown` and says why. A lookup of a new pod with the same veth name,
/// started after the gap, is judged as usual.
#[test]
fn an_interface_gone_while_a_lookup_crossed_it_is_a_coverage_gap() {
    let ms = |t: f64| (t * 1e6) as u64;
    let server = "10.244.0.1:53";
    let pod = |t: f64, id: u16| {
        vec![
            q(t, "socket-out 2", POD, server, id),
            q(t + 0.01, "vethpod1 ingress", POD, server, id),
            q(t + 0.02, "socket-in 1", POD, server, id),
            r(t + 0.5, "socket-out 1", server, POD, id, "NOERROR"),
        ]
    };
    let judge = |gone_at: Option<f64>| {
        let mut c = Correlator::new(Config {
            uplinks: Vec::new(),
            host_netns: scenario::HOST_NETNS,
            ..Config::default()
        });
        let mut out = Vec::new();
        let mut rows = pod(0.0, 7);
        rows.extend(pod(100.0, 8));
        for row in &rows {
            if let Some(g) = gone_at
                && ms(row.ts_ms) > ms(g)
                && ms(row.ts_ms) < ms(g) + ms(1.0)
            {
                c.iface_gone("vethpod1", ms(g));
            }
            out.extend(c.expire(ms(row.ts_ms)));
            out.extend(c.ingest(
                scenario::event(row, "www.example.test.", "A"),
                ms(row.ts_ms),
            ));
        }
        out.extend(c.expire(ms(60_000.0)));
        out
    };
    let before = judge(None);
    assert_eq!(before.len(), 2);
    assert!(
        before.iter().all(|l| l.verdict == Verdict::Unanswered),
        "{before:?}"
    );
    // The veth went away 0.2 ms after the query crossed it, before the reply came.
    let after = judge(Some(0.2));
    assert_eq!(after.len(), 2);
    assert_eq!(after[0].verdict, Verdict::Unknown, "{}", after[0].detail);
    assert!(
        after[0].detail.contains("interface vethpod1 went away")
            && after[0].detail.contains("coverage gap"),
        "{}",
        after[0].detail
    );
    assert_eq!(after[1].verdict, Verdict::Unanswered, "{}", after[1].detail);
}

/// Pods come and go for as long as dnstrace runs, each with a veth of its own name. Their
/// names are given back once nothing refers to them: more of them than a hop's 16-bit
/// interface id can tell apart still get their own names, and the table stays small.
#[test]
fn names_of_interfaces_gone_are_given_back() {
    let ms = |t: f64| (t * 1e6) as u64;
    let server = "10.244.0.1:53";
    let mut c = Correlator::new(Config {
        uplinks: Vec::new(),
        host_netns: scenario::HOST_NETNS,
        timeout_ns: ms(100.0),
        ..Config::default()
    });
    let pods = 70_000u32;
    let mut last = Vec::new();
    for n in 0..pods {
        let t = f64::from(n) * 100.0;
        let veth = format!("veth{n:x}");
        c.iface_watched(&veth);
        let rows = [
            q(t, &format!("{veth} ingress"), POD, server, n as u16),
            r(
                t + 1.0,
                &format!("{veth} egress"),
                server,
                POD,
                n as u16,
                "NOERROR",
            ),
        ];
        for row in &rows {
            c.expire(ms(row.ts_ms));
            last = c.ingest(
                scenario::event(row, "www.example.test.", "A"),
                ms(row.ts_ms),
            );
        }
        c.iface_gone(&veth, ms(t + 50.0));
    }
    // The last pod's lookup names its own veth, not the overflow slot.
    assert_eq!(last.len(), 1);
    let want = format!("veth{:x}", pods - 1);
    assert!(
        last[0].hops.iter().all(|h| *h.iface == *want),
        "{:?}",
        last[0].hops
    );
    assert_eq!(last[0].verdict, Verdict::Ok);
    // Only the interfaces of the last second or so are still named.
    assert!(c.ifaces.len() < 64, "{} names held", c.ifaces.len());
    // A name that comes back before it was given back keeps its id.
    let id = c.ifaces.find(&want).expect("the last veth is still named");
    c.iface_watched(&want);
    c.expire(ms(f64::from(pods) * 100.0 + 60_000.0));
    assert_eq!(c.ifaces.find(&want), Some(id));
}

/// The task that sent the query (the socket hop's pid and comm) is the lookup's; one seen
/// only on tc has none, and neither has a forwarded query.
#[test]
fn the_socket_hops_task_is_the_lookups() {
    let out = run(vec![
        Row {
            task: Some("4242 curl".into()),
            ..q(0.0, "socket-out 7", "10.0.0.2:40000", "10.0.0.1:53", 1)
        },
        q(0.1, "eth0 egress", "10.0.0.2:40000", "10.0.0.1:53", 1),
        r(
            1.0,
            "eth0 ingress",
            "10.0.0.1:53",
            "10.0.0.2:40000",
            1,
            "NOERROR",
        ),
        r(
            1.1,
            "socket-in 7",
            "10.0.0.1:53",
            "10.0.0.2:40000",
            1,
            "NOERROR",
        ),
    ]);
    let l = only(&out);
    assert_eq!(l.netns, Some(7));
    assert_eq!(l.origin.pid, Some(4242));
    assert_eq!(l.origin.comm.as_deref(), Some("curl"));
    let out = run(vec![
        q(0.0, "eth0 egress", "10.0.0.2:40000", "10.0.0.1:53", 1),
        r(
            1.0,
            "eth0 ingress",
            "10.0.0.1:53",
            "10.0.0.2:40000",
            1,
            "NOERROR",
        ),
    ]);
    assert_eq!(only(&out).origin, Origin::default());
}

/// Heap bytes held by this thread, counted by the test binary's allocator.
mod heap {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static LIVE: Cell<isize> = const { Cell::new(0) };
        static PEAK: Cell<isize> = const { Cell::new(0) };
    }

    fn add(n: isize) {
        let _ = LIVE.try_with(|l| {
            let v = l.get() + n;
            l.set(v);
            let _ = PEAK.try_with(|p| p.set(p.get().max(v)));
        });
    }

    pub struct Counting;

    // SAFETY: every call is passed on to the system allocator unchanged.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            add(l.size() as isize);
            // SAFETY: the caller's contract, passed on.
            unsafe { System.alloc(l) }
        }
        unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
            add(l.size() as isize);
            // SAFETY: the caller's contract, passed on.
            unsafe { System.alloc_zeroed(l) }
        }
        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            add(-(l.size() as isize));
            // SAFETY: the caller's contract, passed on.
            unsafe { System.dealloc(p, l) }
        }
        unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
            add(new as isize - l.size() as isize);
            // SAFETY: the caller's contract, passed on.
            unsafe { System.realloc(p, l, new) }
        }
    }

    #[global_allocator]
    static A: Counting = Counting;

    /// (bytes held now, most held since the last call).
    pub fn now_and_peak() -> (isize, isize) {
        let live = LIVE.with(Cell::get);
        let peak = PEAK.with(|p| p.replace(live));
        (live, peak)
    }
}

/// The state each live lookup costs under a flood of distinct unanswered queries (one
/// sighting each), measured as heap bytes at the cap: the lookup, its leg and hop, the
/// indexes, and the most held at once (tables growing). `--memory-budget` divides by it.
#[test]
fn live_lookup_state_is_small() {
    const CAP: usize = 20_000;
    let mut c = Correlator::new(Config {
        max_lookups: CAP,
        host_netns: scenario::HOST_NETNS,
        ..Config::default()
    });
    let event = |i: u64| {
        let src = format!("10.244.{}.{}:{}", i % 250, i % 200 + 2, 1024 + i % 60_000);
        let row = q(
            1000.0 + i as f64 * 0.01,
            "veth1 ingress",
            &src,
            "10.96.0.10:53",
            i as u16,
        );
        scenario::event(&row, &format!("n{i:x}.flood.test."), "A")
    };
    let (base, _) = heap::now_and_peak();
    let mut peak = 0;
    for i in 0..3 * CAP as u64 {
        // Each event is built here and its own heap (name, interface) goes with it; what
        // stays is the correlator's.
        let ev = event(i);
        let ts = ev.packet.meta.ts_ns;
        drop(c.ingest(ev, ts));
        if i % 1000 == 0 {
            drop(c.expire(ts));
        }
        peak = peak.max(heap::now_and_peak().1);
    }
    assert_eq!(c.stats().live_lookups, CAP);
    assert_eq!(c.stats().evicted, 2 * CAP as u64);
    let (live, _) = heap::now_and_peak();
    let per = (live - base) as usize / CAP;
    let peak_per = (peak - base) as usize / CAP;
    eprintln!("heap per live lookup: {per} B held, {peak_per} B at the peak");
    assert!(per <= LOOKUP_STATE_BYTES, "{per} B per live lookup");
    assert!(
        peak_per <= LOOKUP_STATE_BYTES,
        "{peak_per} B per live lookup at the peak"
    );
}

/// `ingest_into` appends to what the caller holds, in the order `ingest` returns them: what
/// was there first stays first.
#[test]
fn ingest_into_appends_in_order() {
    let mut c = Correlator::new(Config {
        max_lookups: 1,
        host_netns: scenario::HOST_NETNS,
        ..Config::default()
    });
    let mut out = Vec::new();
    let rows = [
        (
            q(1.0, "veth1 ingress", "10.244.0.2:1000", "10.96.0.10:53", 1),
            "a.test.",
        ),
        (
            r(
                2.0,
                "veth1 egress",
                "10.96.0.10:53",
                "10.244.0.2:1000",
                1,
                "NOERROR",
            ),
            "a.test.",
        ),
        (
            q(3.0, "veth1 ingress", "10.244.0.3:1000", "10.96.0.10:53", 2),
            "b.test.",
        ),
        // At the cap of one: b is evicted.
        (
            q(4.0, "veth1 ingress", "10.244.0.4:1000", "10.96.0.10:53", 3),
            "c.test.",
        ),
    ];
    for (row, name) in rows {
        let e = scenario::event(&row, name, "A");
        let at = e.packet.meta.ts_ns;
        c.ingest_into(e, at, &mut out);
    }
    let got: Vec<(&str, Verdict)> = out.iter().map(|l| (&*l.qname, l.verdict)).collect();
    assert_eq!(
        got,
        [("a.test.", Verdict::Ok), ("b.test.", Verdict::Unknown)]
    );
}

/// `expire_into` and `finish_into` end the same lookups as `expire` and `finish`, in the
/// same order, a batch at a time.
#[test]
fn batches_end_what_one_call_ends() {
    let run = |batch: Option<usize>| {
        let mut c = Correlator::new(Config {
            host_netns: scenario::HOST_NETNS,
            ..Config::default()
        });
        for i in 0..7u16 {
            let src = format!("10.244.0.{}:1000", i + 2);
            let row = q(
                1.0 + f64::from(i),
                "veth1 ingress",
                &src,
                "10.96.0.10:53",
                i,
            );
            let e = scenario::event(&row, &format!("n{i}.test."), "A");
            let at = e.packet.meta.ts_ns;
            c.ingest(e, at);
        }
        // Five are past their deadline at 5.5 s + 5 ms; two are still open.
        let (due, end) = (5_505_000_000, 5_506_000_000);
        let mut out = Vec::new();
        let mut calls = 0;
        match batch {
            None => {
                out.extend(c.expire(due));
                let expired = out.len();
                out.extend(c.finish(end));
                (expired, out, calls)
            }
            Some(n) => {
                while c.expire_into(due, n, &mut out) {
                    calls += 1;
                }
                let expired = out.len();
                while c.finish_into(end, n, &mut out) {
                    calls += 1;
                }
                (expired, out, calls)
            }
        }
    };
    let (expired, whole, _) = run(None);
    assert_eq!((expired, whole.len()), (5, 7));
    let (expired, batched, calls) = run(Some(2));
    // Batches of 2, 2 and 1 of the expired (two calls say more are due), then the two
    // open ones in one batch.
    assert_eq!((expired, calls), (5, 2));
    assert_eq!(batched, whole);
}

/// Runs `sc` with and without an ok lookup's hops built: both are written the same, JSON
/// and text, compact records and full; a lookup with a problem is built the same either
/// way. Returns the lookups and how many of them were ok.
fn built_without_hops_alike(name: &str, sc: &Scenario) -> (usize, usize) {
    use crate::cli::Hops;
    use crate::sink::{Names, lookup_json, lookup_text};
    fn strip(l: &mut Lookup) {
        l.hops.clear();
        l.children.iter_mut().for_each(strip);
    }
    let with = scenario::run(sc);
    let mut cfg = sc.config.build();
    cfg.ok_hops = false;
    let without = scenario::run_config(sc, cfg);
    assert_eq!(with.lookups.len(), without.lookups.len(), "{name}");
    let mut ok = 0;
    for (a, b) in with.lookups.iter().zip(&without.lookups) {
        for hops in [Hops::Problems, Hops::None] {
            let names = Names::new(scenario::HOST_NETNS, []).with_hops(hops);
            assert_eq!(lookup_json(a, &names), lookup_json(b, &names), "{name}");
            assert_eq!(lookup_text(a, &names), lookup_text(b, &names), "{name}");
        }
        if a.verdict != Verdict::Ok {
            assert_eq!(a, b, "{name}: a problem is built with its hops");
            continue;
        }
        ok += 1;
        let trail = b
            .trail
            .as_ref()
            .expect("an ok lookup without hops has a trail");
        assert_eq!(
            trail.hop_count,
            a.hops.len() + a.hops_omitted as usize,
            "{name}"
        );
        assert!(b.detail.is_empty() && b.last_hop.is_none(), "{name}");
        let mut a = a.clone();
        strip(&mut a);
        a.trail = b.trail.clone();
        a.detail.clear();
        a.last_hop = None;
        assert_eq!(&a, b, "{name}: only the hops, detail and last hop differ");
    }
    (with.lookups.len(), ok)
}

/// An `ok` lookup built without its hops (`Config::ok_hops` off, as `watch` and `replay`
/// do when nothing shows them) is written exactly as one built with them, in every
/// fixture.
#[test]
fn an_ok_lookup_built_without_its_hops_is_written_the_same() {
    let (mut total, mut ok) = (0, 0);
    for name in SCENARIOS {
        let (t, o) = built_without_hops_alike(name, &scenario::load(name));
        total += t;
        ok += o;
    }
    assert!(ok >= 10 && ok < total, "{ok} ok lookups of {total}");
}

/// The same past the places a trail keeps on the stack, with places first seen at the
/// same instant (their order is the order they were seen in).
#[test]
fn a_trail_through_many_places_is_the_one_the_hops_give() {
    for places in [3, 16, 17, 40] {
        let mut rows = vec![q(0.0, "socket-out 2", POD, CIP, 7)];
        for k in 0..places {
            let at = format!("if{} ingress", places - k);
            rows.push(q(0.01 + (k / 2) as f64 * 0.001, &at, POD, CIP, 7));
        }
        rows.push(r(1.0, "socket-in 2", CIP, POD, 7, "NOERROR"));
        let sc = Scenario {
            events: rows,
            ..Scenario::default()
        };
        let name = format!("{places} places");
        assert_eq!(built_without_hops_alike(&name, &sc), (1, 1), "{name}");
    }
}

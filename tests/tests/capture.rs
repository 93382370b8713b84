//! Privileged end-to-end tests of the capture path: the real eBPF programs in
//! the real kernel, inside network namespaces this test creates, with real DNS
//! servers and clients. Run them with `cargo xtask test` (root).

use std::{
    collections::BTreeMap,
    fs,
    net::IpAddr,
    time::{Duration, Instant},
};

use dnstrace_tests::{
    Lab, Node, Signal, Tracer, VethEnd, dnstrace_bin, program_ids, skip_without_root,
};
use serde_json::Value;

/// The shared tracer (`dnstrace watch --output json --packets`) in `ns`.
fn start<'a>(lab: &'a Lab, ns: &str, name: &str, args: &[&str]) -> Tracer<'a> {
    Tracer::start(lab, ns, name, args).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Stops it with `signal`, checks it exited 0, and returns (packets, summary).
fn stop(tracer: Tracer, signal: Signal) -> (Vec<Value>, Value) {
    let trace = tracer.stop(signal).unwrap_or_else(|e| panic!("{e:#}"));
    (trace.packets, trace.summary)
}

fn ready() -> bool {
    !skip_without_root() && dnstrace_bin().is_some()
}

/// Packets seen at `iface`/`dir` with DNS id `id` and the given QR bit.
fn at<'v>(packets: &'v [Value], iface: &str, dir: &str, qr: bool, id: u64) -> Vec<&'v Value> {
    packets
        .iter()
        .filter(|p| p["iface"] == iface && p["dir"] == dir && p["qr"] == qr && p["id"] == id)
        .collect()
}

/// The DNS ids of queries for `qname` sent with `proto`, as seen at `iface`/`dir`.
fn query_ids(packets: &[Value], iface: &str, dir: &str, proto: &str, qname: &str) -> Vec<u64> {
    packets
        .iter()
        .filter(|p| {
            p["iface"] == iface
                && p["dir"] == dir
                && p["proto"] == proto
                && p["qr"] == false
                && p["qname"] == qname
        })
        .filter_map(|p| p["id"].as_u64())
        .collect()
}

fn counters(summary: &Value) -> (u64, u64, u64, u64, u64) {
    let k = &summary["kernel"];
    let u = &summary["userspace"];
    (
        k["dns_seen"].as_u64().unwrap(),
        k["emitted"].as_u64().unwrap(),
        summary["lost"].as_u64().unwrap(),
        u["received"].as_u64().unwrap(),
        u["dropped"].as_u64().unwrap(),
    )
}

/// Asserts nothing was lost anywhere and userspace got every event the kernel saw.
fn assert_lossless(summary: &Value) {
    let (seen, emitted, lost, received, dropped) = counters(summary);
    assert_eq!(lost, 0, "events lost in the kernel: {summary}");
    assert_eq!(dropped, 0, "events dropped in userspace: {summary}");
    assert_eq!(
        seen, emitted,
        "kernel saw {seen} but emitted {emitted}: {summary}"
    );
    assert_eq!(
        emitted, received,
        "kernel emitted {emitted}, userspace got {received}"
    );
}

/// (a) UDP and TCP, query and response, at both ends of the pod veth, with
/// matching ids and the right directions. One tracer per namespace.
#[test]
fn udp_and_tcp_seen_at_both_ends_of_a_veth() {
    if !ready() {
        return;
    }
    let node = Node::new("vab").expect("node");
    let pod_side = start(&node.lab, &node.pod_ns, "pod", &["-i", &node.pod_eth]);
    let node_side = start(&node.lab, &node.node_ns, "node", &["-i", &node.pod_veth]);
    for extra in [&[][..], &["+tcp"][..]] {
        let out = node
            .query_short(&node.pod_ns, node.cluster_ip, &node.www_name, "A", extra)
            .expect("query");
        assert_eq!(out, vec![node.www_a.to_string()]);
    }
    let (pod, pod_summary) = stop(pod_side, Signal::Int);
    let (host, host_summary) = stop(node_side, Signal::Int);
    assert_lossless(&pod_summary);
    assert_lossless(&host_summary);
    let qname = format!("{}.", node.www_name);
    for proto in ["udp", "tcp"] {
        let ids = query_ids(&pod, &node.pod_eth, "egress", proto, &qname);
        assert_eq!(ids.len(), 1, "{proto}: one query leaves the pod: {pod:#?}");
        let id = ids[0];
        // The query leaves the pod and arrives on the node side of the same veth.
        let q_in = at(&host, &node.pod_veth, "ingress", false, id);
        assert_eq!(
            q_in.len(),
            1,
            "{proto} query {id:#x} at {} ingress",
            node.pod_veth
        );
        assert_eq!(q_in[0]["proto"], proto);
        assert_eq!(
            q_in[0]["src"].as_str().unwrap().split(':').next(),
            Some(&*node.pod_ip.to_string())
        );
        assert_eq!(q_in[0]["dst"], format!("{}:53", node.cluster_ip));
        // The reply goes the other way with the same id, un-DNATed.
        let r_out = at(&host, &node.pod_veth, "egress", true, id);
        let r_in = at(&pod, &node.pod_eth, "ingress", true, id);
        assert_eq!(
            (r_out.len(), r_in.len()),
            (1, 1),
            "{proto} reply {id:#x} at both ends"
        );
        for r in [r_out[0], r_in[0]] {
            assert_eq!(r["rcode"], "NOERROR");
            assert_eq!(r["src"], format!("{}:53", node.cluster_ip));
            assert_eq!(r["answers"][0]["data"], node.www_a.to_string());
        }
        // Same message bytes on both ends: same lengths.
        assert_eq!(
            q_in[0]["wire_len"],
            at(&pod, &node.pod_eth, "egress", false, id)[0]["wire_len"]
        );
    }
    // The TCP handshake is captured too (SYN without DNS payload).
    assert!(
        host.iter()
            .any(|p| p["proto"] == "tcp" && p["tcp_flags"] == "S" && p["dir"] == "ingress"),
        "no TCP SYN seen"
    );
}

/// (b) IPv6: queries over UDP and TCP to a server on an IPv6 address.
#[test]
fn ipv6_udp_and_tcp() {
    if !ready() {
        return;
    }
    let lab = Lab::new("v6").expect("lab");
    let client = lab.add_netns("cli").expect("netns");
    let server = lab.add_netns("srv").expect("netns");
    let (cdev, sdev) = (format!("{}c0", lab.prefix()), format!("{}s0", lab.prefix()));
    lab.add_veth(
        &VethEnd {
            ns: &client,
            name: &cdev,
            addrs: &["fd00:53::1/64"],
        },
        &VethEnd {
            ns: &server,
            name: &sdev,
            addrs: &["fd00:53::2/64"],
        },
    )
    .expect("veth");
    let srv_ip: IpAddr = "fd00:53::2".parse().unwrap();
    let _dns = lab
        .start_dnsmasq(
            &server,
            "dnsmasq6",
            &[srv_ip],
            &["--address=/v6.test/2001:db8::53"],
        )
        .expect("dnsmasq");
    let tracer = start(&lab, &client, "trace6", &["-i", &cdev]);
    for extra in ["+notcp", "+tcp"] {
        let out = lab
            .run(
                &client,
                &[
                    "dig",
                    "+short",
                    "+time=2",
                    "+tries=1",
                    extra,
                    "@fd00:53::2",
                    "www.v6.test",
                    "AAAA",
                ],
            )
            .expect("dig");
        assert_eq!(out.trim(), "2001:db8::53");
    }
    let (packets, summary) = stop(tracer, Signal::Term);
    assert_lossless(&summary);
    for proto in ["udp", "tcp"] {
        let ids = query_ids(&packets, &cdev, "egress", proto, "www.v6.test.");
        assert_eq!(ids.len(), 1, "{proto} query: {packets:#?}");
        let reply = at(&packets, &cdev, "ingress", true, ids[0]);
        assert_eq!(reply.len(), 1);
        assert_eq!(reply[0]["src"], "[fd00:53::2]:53");
        assert_eq!(reply[0]["qtype"], "AAAA");
        assert_eq!(reply[0]["answers"][0]["data"], "2001:db8::53");
    }
}

/// (c) node-local-dns: a query to 169.254.25.10 arriving from the pod is
/// delivered to the host-network dnsmasq without crossing the ifb device that
/// holds the address. The socket hop sees it; the ifb sees nothing.
#[test]
fn nodelocal_delivery_seen_at_socket_hop_not_on_ifb() {
    if !ready() {
        return;
    }
    let node = Node::new("nld").expect("node");
    let tracer = start(
        &node.lab,
        &node.node_ns,
        "nld",
        &[
            "-i",
            &node.nodelocal_dev,
            "-i",
            &node.pod_veth,
            "--socket-hop",
        ],
    );
    let out = node
        .query_short(&node.pod_ns, node.nodelocal_ip, &node.www_name, "A", &[])
        .expect("query");
    assert_eq!(out, vec![node.www_a.to_string()]);
    let (packets, summary) = stop(tracer, Signal::Int);
    assert_lossless(&summary);
    let node_netns = summary["netns"].as_u64().unwrap();
    assert!(node_netns != 0);
    assert!(
        packets
            .iter()
            .all(|p| p["iface"] != node.nodelocal_dev.as_str()),
        "the ifb holding 169.254.25.10 must see nothing"
    );
    let qname = format!("{}.", node.www_name);
    let ids = query_ids(&packets, &node.pod_veth, "ingress", "udp", &qname);
    assert_eq!(ids.len(), 1, "query arrives on the pod veth: {packets:#?}");
    let delivered: Vec<_> = packets
        .iter()
        .filter(|p| p["dir"] == "socket-in" && p["id"] == ids[0] && p["qr"] == false)
        .collect();
    assert_eq!(
        delivered.len(),
        1,
        "socket hop sees the local delivery: {packets:#?}"
    );
    assert_eq!(delivered[0]["iface"], "socket");
    assert_eq!(delivered[0]["dst"], format!("{}:53", node.nodelocal_ip));
    assert_eq!(delivered[0]["netns"], node_netns);
    // node-local-dns answers from its socket: socket-out, then out the pod veth.
    let answered: Vec<_> = packets
        .iter()
        .filter(|p| p["dir"] == "socket-out" && p["id"] == ids[0] && p["qr"] == true)
        .collect();
    assert_eq!(answered.len(), 1);
    assert_eq!(answered[0]["src"], format!("{}:53", node.nodelocal_ip));
    assert_eq!(answered[0]["comm"], "dnsmasq");
}

/// (d) A pod querying a stub on its own loopback (127.0.0.53): nothing crosses
/// an interface, the socket hop sees it with the pod's netns.
#[test]
fn loopback_query_inside_a_pod_netns() {
    if !ready() {
        return;
    }
    let node = Node::new("lo").expect("node");
    node.lab
        .add_addr(&node.pod_ns, "lo", "127.0.0.53/8")
        .expect("lo addr");
    let stub: IpAddr = "127.0.0.53".parse().unwrap();
    let _stub = node
        .lab
        .start_dnsmasq(
            &node.pod_ns,
            "stub",
            &[stub],
            &["--address=/local.test/10.0.0.53"],
        )
        .expect("stub");
    let tracer = start(
        &node.lab,
        &node.node_ns,
        "lo",
        &["--socket-hop", "-i", &node.pod_veth],
    );
    let out = node
        .query_short(&node.pod_ns, stub, "svc.local.test", "A", &[])
        .expect("query");
    assert_eq!(out, vec!["10.0.0.53".to_owned()]);
    let (packets, summary) = stop(tracer, Signal::Int);
    assert_lossless(&summary);
    let node_netns = summary["netns"].as_u64().unwrap();
    let hop: Vec<_> = packets
        .iter()
        .filter(|p| p["qname"] == "svc.local.test.")
        .collect();
    let dirs: Vec<_> = hop.iter().map(|p| p["dir"].as_str().unwrap()).collect();
    assert_eq!(
        dirs.iter().filter(|d| **d == "socket-out").count(),
        2,
        "query + reply sent: {hop:#?}"
    );
    assert_eq!(
        dirs.iter().filter(|d| **d == "socket-in").count(),
        2,
        "query + reply delivered: {hop:#?}"
    );
    for p in &hop {
        assert_ne!(p["netns"], node_netns, "the pod's netns, not the node's");
        assert_eq!(p["netns"], hop[0]["netns"]);
        assert!(
            p["src"].as_str().unwrap().starts_with("127.0.0.53:") || p["dst"] == "127.0.0.53:53"
        );
    }
    assert!(
        packets
            .iter()
            .all(|p| p["iface"] != node.pod_veth.as_str() || p["qname"] != "svc.local.test."),
        "a loopback query never reaches the pod veth"
    );
}

/// (e) 1,000 queries all answered while attached everywhere, and the kernel's
/// count equals what userspace received.
#[test]
fn thousand_queries_all_answered_and_all_events_received() {
    if !ready() {
        return;
    }
    let node = Node::new("kq").expect("node");
    let tracer = start(&node.lab, &node.node_ns, "kq", &["--auto"]);
    let batch: String = (0..1000)
        .map(|i| format!("q{i}.{} A\n", node.zone))
        .collect();
    let file = node.lab.write_file("batch.txt", &batch).expect("batch");
    let at = format!("@{}", node.cluster_ip);
    let started = Instant::now();
    let out = node
        .lab
        .run(
            &node.pod_ns,
            &[
                "dig",
                "+time=2",
                "+tries=3",
                "+noall",
                "+comments",
                &at,
                "-f",
                file.to_str().unwrap(),
            ],
        )
        .expect("dig batch");
    eprintln!("1000 queries in {:?}", started.elapsed());
    let answered = out
        .lines()
        .filter(|l| l.contains("status: NXDOMAIN") || l.contains("status: NOERROR"))
        .count();
    assert_eq!(
        answered, 1000,
        "every query answered while dnstrace is attached"
    );
    let trace = tracer.stop(Signal::Int).unwrap_or_else(|e| panic!("{e:#}"));
    let (packets, summary) = (&trace.packets, &trace.summary);
    assert_lossless(summary);

    // Every one of them is one lookup, `ok` (NXDOMAIN from the authority is an
    // answer), and nothing else was judged.
    let verdicts: BTreeMap<&str, usize> = trace.lookups.iter().fold(BTreeMap::new(), |mut m, l| {
        *m.entry(l["verdict"].as_str().unwrap()).or_default() += 1;
        m
    });
    assert_eq!(
        verdicts,
        BTreeMap::from([("ok", 1000)]),
        "1,000 healthy lookups, 1,000 ok"
    );
    assert_eq!(
        summary["lookups"]["by_verdict"],
        serde_json::json!({"ok": 1000}),
        "{summary}"
    );
    let pod = node.pod_ip.to_string();
    for l in &trace.lookups {
        assert_eq!(l["server"], format!("{}:53", node.cluster_ip));
        assert!(l["client"].as_str().unwrap().starts_with(&pod), "{l}");
        assert!(l["rcode"] == "NXDOMAIN" || l["rcode"] == "NOERROR", "{l}");
        assert!(
            !l["children"].as_array().unwrap().is_empty(),
            "forwarded: {l}"
        );
    }
    // The per-upstream summary: CoreDNS asked the upstream resolver for each name.
    let upstream = format!("{}:53", node.resolver_ip);
    let row = summary["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["upstream"] == upstream.as_str())
        .unwrap_or_else(|| panic!("no row for {upstream}: {summary}"));
    let queries = row["queries"].as_u64().unwrap();
    assert!(queries >= 1000, "{row}");
    assert_eq!(row["unanswered"], 0, "{row}");
    assert_eq!(row["answered"].as_u64().unwrap(), queries, "{row}");
    let by_rcode: u64 = row["rcodes"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(by_rcode, queries, "{row}");
    assert!(row["p50_ms"].as_f64().unwrap() <= row["p99_ms"].as_f64().unwrap());

    let queries = packets
        .iter()
        .filter(|p| {
            p["iface"] == node.pod_veth.as_str() && p["dir"] == "ingress" && p["qr"] == false
        })
        .count();
    let replies = packets
        .iter()
        .filter(|p| p["iface"] == node.pod_veth.as_str() && p["dir"] == "egress" && p["qr"] == true)
        .count();
    assert_eq!((queries, replies), (1000, 1000));
    assert_eq!(
        packets.len() as u64,
        summary["userspace"]["received"].as_u64().unwrap()
    );
}

/// A forced ring-buffer overflow. The tracer (4 KiB ring) sees a query to a
/// slow server, is then frozen (SIGSTOP) while 300 more queries cross the veth
/// and the slow server's answer arrives, and is thawed. Ground truth is what
/// the clients sent and got back: the kernel's loss count must equal the events
/// that never reached userspace, and the slow lookup, answered in reality but
/// with its answer lost, must be `unknown`, never `unanswered`.
#[test]
fn ring_overflow_losses_are_exact_and_lookups_unknown() {
    if !ready() {
        return;
    }
    let (lab, ns, dev, server) = pair("ovf");
    let peer_ns = format!("{}-b", lab.prefix());
    let peer = format!("{}b0", lab.prefix());
    let _dns = lab
        .start_dnsmasq(
            &peer_ns,
            "dnsmasq",
            &[server],
            &["--address=/ovf.test/10.0.0.1"],
        )
        .expect("dnsmasq");
    // A server that answers after 1.5 s, on a second address.
    let slow_ip = "10.53.0.3";
    lab.add_addr(&peer_ns, &peer, &format!("{slow_ip}/24"))
        .expect("addr");
    let mut cmd = lab.cmd(&peer_ns, "python3");
    cmd.args([
        "-c",
        &format!(
            r#"
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("{slow_ip}", 53))
while True:
    q, peer = s.recvfrom(512)
    time.sleep(1.5)
    s.sendto(q[:2] + b"\x81\x80" + q[4:6] + b"\0\0\0\0\0\0" + q[12:], peer)
"#
        ),
    ]);
    let _slow = lab.spawn_logged("slow", cmd).expect("slow server");
    let t = start(&lab, &ns, "ovf", &["-i", &dev, "--ring-size", "4096"]);

    const N: usize = 300;
    let client = |at: &str, name: &str, n: usize| {
        format!(
            r#"
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.connect(("{at}", 53))
name = b"".join(bytes([len(p)]) + p for p in b"{name}".split(b".")) + b"\0"
got = 0
for i in range({n}):
    s.send(struct.pack(">HHHHHH", i + 1, 0x0100, 1, 0, 0, 0) + name + b"\0\1\0\1")
    try:
        if struct.unpack(">H", s.recv(512)[:2])[0] == i + 1:
            got += 1
    except socket.timeout:
        pass
print(got)
"#
        )
    };
    let slow_out = lab.dir().join("slow-client.out");
    let mut cmd = lab.cmd(&ns, "python3");
    cmd.args(["-c", &client(slow_ip, "slow.ovf.test", 1)])
        .stdout(fs::File::create(&slow_out).unwrap());
    let slow_client = lab.spawn("slow-client", cmd).expect("slow client");
    // The tracer sees the slow query; then it is frozen.
    t.wait_packet(|p| p["qname"] == "slow.ovf.test." && p["qr"] == false)
        .expect("slow query seen");
    lab.signal(&t.proc, Signal::Stop).expect("SIGSTOP");
    let flood = lab.run(
        &ns,
        &[
            "python3",
            "-c",
            &client(&server.to_string(), "q.ovf.test", N),
        ],
    );
    let slow_status = lab.wait_exit(&slow_client, Duration::from_secs(5));
    lab.signal(&t.proc, Signal::Cont).expect("SIGCONT");
    let answered: usize = flood.expect("client").trim().parse().expect("count");
    assert_eq!(answered, N, "the server answered every query");
    assert!(slow_status.expect("wait").is_some_and(|s| s.success()));
    assert_eq!(
        fs::read_to_string(&slow_out).unwrap().trim(),
        "1",
        "slow answered"
    );
    // Let the collector drain, notice the loss and judge.
    std::thread::sleep(Duration::from_millis(500));
    let trace = t.stop(Signal::Int).unwrap_or_else(|e| panic!("{e:#}"));
    let summary = &trace.summary;
    let (seen, emitted, lost, received, dropped) = counters(summary);
    // Each query out and each reply in, at one veth.
    let truth = 2 * (N as u64 + 1);
    assert_eq!(seen, truth, "the kernel saw every packet: {summary}");
    assert_eq!(dropped, 0, "{summary}");
    assert!(
        lost > 0,
        "a 4 KiB ring cannot hold {truth} events: {summary}"
    );
    assert_eq!(emitted + lost, truth, "{summary}");
    assert_eq!(received, emitted, "{summary}");
    assert_eq!(lost, truth - trace.packets.len() as u64, "{summary}");
    assert_eq!(summary["lookups"]["lost_events"].as_u64(), Some(lost));

    let slow: Vec<_> = trace.lookups_for("slow.ovf.test");
    assert_eq!(slow.len(), 1, "{:?}", trace.lookups);
    assert_eq!(
        slow[0]["verdict"], "unknown",
        "answer lost, not vanished: {}",
        slow[0]
    );
    let why = format!("{} {}", slow[0]["detail"], slow[0]["hint"]);
    assert!(why.contains(&format!("{lost} events were lost")), "{why}");
    assert!(
        trace
            .lookups
            .iter()
            .all(|l| l["verdict"] == "unknown" || l["verdict"] == "ok"),
        "a loss never turns into another verdict: {:?}",
        trace
            .lookups
            .iter()
            .map(|l| &l["verdict"])
            .collect::<Vec<_>>()
    );
}

/// Ids of loaded programs whose name starts with `dt_tc_`.
fn tc_program_ids(lab: &Lab, ns: &str) -> Vec<u64> {
    program_ids(lab, ns, "dt_tc_").expect("bpftool prog show")
}

/// `--auto` on a netns with more than 32 interfaces uses netlink tc, not tcx
/// (each tcx hook waits for an RCU grace period), still captures, and removes
/// every filter and clsact it added on exit.
#[test]
fn auto_mode_uses_netlink_past_32_interfaces() {
    if !ready() {
        return;
    }
    let lab = Lab::new("many").expect("lab");
    let a = lab.add_netns("a").expect("netns");
    let b = lab.add_netns("b").expect("netns");
    let devs: Vec<String> = (0..34).map(|i| format!("{}a{i}", lab.prefix())).collect();
    for (i, dev) in devs.iter().enumerate() {
        let peer = format!("{}b{i}", lab.prefix());
        let (ours, theirs) = (format!("10.60.{i}.1/24"), format!("10.60.{i}.2/24"));
        lab.add_veth(
            &VethEnd {
                ns: &a,
                name: dev,
                addrs: &[&ours],
            },
            &VethEnd {
                ns: &b,
                name: &peer,
                addrs: &[&theirs],
            },
        )
        .expect("veth");
    }
    let server: IpAddr = "10.60.33.2".parse().unwrap();
    let _dns = lab
        .start_dnsmasq(&b, "dnsmasq", &[server], &["--address=/many.test/10.0.0.1"])
        .expect("dnsmasq");
    let t = start(
        &lab,
        &a,
        "many",
        &["--auto", "--no-socket-hop", "--no-drops"],
    );
    for dev in [&devs[0], &devs[33]] {
        let filters = tc_filters(&lab, &a, dev, "ingress");
        assert!(
            filters.contains("dt_tc_eth_in"),
            "netlink filter on {dev}: {filters}"
        );
    }
    let out = lab
        .run(
            &a,
            &[
                "dig",
                "+short",
                "+time=2",
                "+tries=1",
                &format!("@{server}"),
                "www.many.test",
            ],
        )
        .expect("dig");
    assert_eq!(out.trim(), "10.0.0.1");
    std::thread::sleep(Duration::from_millis(200));
    let trace = t.stop(Signal::Term).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(trace.stderr.contains("via netlink"), "{}", trace.stderr);
    let lookups = trace.lookups_for("www.many.test");
    assert_eq!(lookups.len(), 1, "{:?}", trace.lookups);
    assert_eq!(lookups[0]["verdict"], "ok");
    for dev in &devs {
        assert_eq!(tc_filters(&lab, &a, dev, "ingress").trim(), "", "{dev}");
        assert_eq!(tc_filters(&lab, &a, dev, "egress").trim(), "", "{dev}");
        assert!(!has_clsact(&lab, &a, dev), "our clsact removed from {dev}");
    }
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

fn pair(tag: &str) -> (Lab, String, String, IpAddr) {
    let lab = Lab::new(tag).expect("lab");
    let a = lab.add_netns("a").expect("netns");
    let b = lab.add_netns("b").expect("netns");
    let dev = format!("{}a0", lab.prefix());
    let peer = format!("{}b0", lab.prefix());
    lab.add_veth(
        &VethEnd {
            ns: &a,
            name: &dev,
            addrs: &["10.53.0.1/24"],
        },
        &VethEnd {
            ns: &b,
            name: &peer,
            addrs: &["10.53.0.2/24"],
        },
    )
    .expect("veth");
    let server: IpAddr = "10.53.0.2".parse().unwrap();
    (lab, a, dev, server)
}

/// (f) Clean detach: netlink tc filters go on SIGINT and SIGTERM (with the
/// clsact qdisc we created), and tcx links go even on SIGKILL.
#[test]
fn detaches_on_sigint_sigterm_and_sigkill() {
    if !ready() {
        return;
    }
    let (lab, ns, dev, _) = pair("det");
    for signal in [Signal::Int, Signal::Term] {
        assert!(!has_clsact(&lab, &ns, &dev));
        let t = start(&lab, &ns, "nl", &["-i", &dev, "--tc-mode", "netlink"]);
        let filters = tc_filters(&lab, &ns, &dev, "ingress");
        assert!(
            filters.contains("dt_tc_eth_in"),
            "netlink filter attached: {filters}"
        );
        assert!(!filters.contains("pref 1 "), "never prio 1: {filters}");
        assert!(tc_filters(&lab, &ns, &dev, "egress").contains("dt_tc_eth_out"));
        stop(t, signal);
        assert_eq!(
            tc_filters(&lab, &ns, &dev, "ingress").trim(),
            "",
            "after {signal:?}"
        );
        assert_eq!(
            tc_filters(&lab, &ns, &dev, "egress").trim(),
            "",
            "after {signal:?}"
        );
        assert!(
            !has_clsact(&lab, &ns, &dev),
            "our clsact removed after {signal:?}"
        );
    }
    let before = tc_program_ids(&lab, &ns);
    let t = start(
        &lab,
        &ns,
        "tcx",
        &["-i", &dev, "--tc-mode", "tcx", "--socket-hop"],
    );
    let ours: Vec<u64> = tc_program_ids(&lab, &ns)
        .into_iter()
        .filter(|id| !before.contains(id))
        .collect();
    assert_eq!(ours.len(), 2, "tcx ingress + egress programs loaded");
    assert_eq!(
        tc_filters(&lab, &ns, &dev, "ingress").trim(),
        "",
        "tcx, not a netlink filter"
    );
    lab.signal(&t.proc, Signal::Kill).expect("kill");
    lab.wait_exit(&t.proc, Duration::from_secs(5))
        .expect("wait");
    let deadline = Instant::now() + Duration::from_secs(5);
    let left = || {
        tc_program_ids(&lab, &ns)
            .into_iter()
            .filter(|id| ours.contains(id))
            .count()
    };
    while left() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(left(), 0, "tcx links and programs gone after SIGKILL");
    assert!(!has_clsact(&lab, &ns, &dev), "tcx never adds a clsact");
}

/// (g) A foreign tc filter attached before dnstrace keeps running while we are
/// attached (tcx and netlink), and it and its clsact are still there after.
#[test]
fn foreign_tc_filter_keeps_running_and_stays() {
    if !ready() {
        return;
    }
    let (lab, ns, dev, server) = pair("frn");
    let peer_ns = format!("{}-b", lab.prefix());
    let _dns = lab
        .start_dnsmasq(
            &peer_ns,
            "dnsmasq",
            &[server],
            &["--address=/f.test/10.0.0.1"],
        )
        .expect("dnsmasq");
    // Someone else's filter at prio 1: it mirrors every packet to an ifb and
    // lets classification continue. Its action counters show it ran.
    let mirror = format!("{}m0", lab.prefix());
    lab.add_ifb(&ns, &mirror, &[]).expect("ifb");
    lab.run(&ns, &["tc", "qdisc", "add", "dev", &dev, "clsact"])
        .expect("clsact");
    let rule = format!(
        "filter add dev {dev} ingress prio 1 u32 match u32 0 0 action mirred egress mirror dev {mirror} continue"
    );
    let mut argv = vec!["tc"];
    argv.extend(rule.split_whitespace());
    lab.run(&ns, &argv).expect("foreign filter");
    let hits = || -> u64 {
        let out = lab
            .run(&ns, &["tc", "-s", "filter", "show", "dev", &dev, "ingress"])
            .unwrap();
        out.lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("Sent ")
                    .and_then(|r| r.split(" pkt").next())
                    .and_then(|r| r.split(" bytes ").nth(1))
                    .and_then(|n| n.trim().parse().ok())
            })
            .unwrap_or_else(|| panic!("no stats in: {out}"))
    };
    for mode in ["tcx", "netlink"] {
        let before = hits();
        let t = start(&lab, &ns, mode, &["-i", &dev, "--tc-mode", mode]);
        let out = lab
            .run(
                &ns,
                &[
                    "dig",
                    "+short",
                    "+time=2",
                    "+tries=1",
                    &format!("@{server}"),
                    "www.f.test",
                ],
            )
            .expect("dig");
        assert_eq!(out.trim(), "10.0.0.1");
        let (packets, summary) = stop(t, Signal::Int);
        assert_lossless(&summary);
        assert!(
            hits() > before,
            "{mode}: the foreign filter still saw traffic"
        );
        assert!(
            packets
                .iter()
                .any(|p| p["dir"] == "ingress" && p["qr"] == true),
            "{mode}: dnstrace saw the reply as well"
        );
        let filters = tc_filters(&lab, &ns, &dev, "ingress");
        assert!(
            filters.contains("mirred") && filters.contains("pref 1 "),
            "{mode}: foreign filter kept: {filters}"
        );
        assert!(!filters.contains("dt_tc_"), "{mode}: ours gone: {filters}");
        assert!(
            has_clsact(&lab, &ns, &dev),
            "{mode}: the clsact we did not create stays"
        );
    }
}

/// (h) Junk and hostile packets to port 53 are counted as malformed, each with
/// a reason, and dnstrace keeps running and decoding.
#[test]
fn junk_and_hostile_packets_are_counted_not_fatal() {
    if !ready() {
        return;
    }
    let (lab, ns, dev, server) = pair("junk");
    let peer_ns = format!("{}-b", lab.prefix());
    let _dns = lab
        .start_dnsmasq(
            &peer_ns,
            "dnsmasq",
            &[server],
            &["--address=/ok.test/10.0.0.1"],
        )
        .expect("dnsmasq");
    let t = start(&lab, &ns, "junk", &["-i", &dev]);
    let script = format!(
        r#"
import socket, random
random.seed(53)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
hdr = bytes([0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0])
junk = [
    b"\x01\x02\x03\x04\x05",                                   # shorter than a header
    hdr,                                                        # one question announced, none present
    hdr + b"\xc0\x0c" + b"\x00\x01\x00\x01",                    # name pointer to itself: a loop
    hdr + b"\xc0\xff" + b"\x00\x01\x00\x01",                    # pointer past the end
    hdr + b"\x3f" + b"a" * 63 + b"\x40" + b"b" * 64 + b"\x00\x00\x01\x00\x01",  # 64-byte label
    bytes(random.getrandbits(8) for _ in range(200)),           # noise
]
for j in junk:
    s.sendto(j, ("{server}", 53))
"#
    );
    lab.run(&ns, &["python3", "-c", &script])
        .expect("send junk");
    let out = dig_short(&lab, &ns, server, "www.ok.test");
    assert_eq!(out.trim(), "10.0.0.1", "the server still answers");
    std::thread::sleep(Duration::from_millis(200));
    let (packets, summary) = stop(t, Signal::Int);
    assert_lossless(&summary);
    let bad: Vec<_> = packets
        .iter()
        .filter(|p| {
            p["dir"] == "egress" && p["dst"] == format!("{server}:53") && !p["issue"].is_null()
        })
        .collect();
    assert_eq!(
        bad.len(),
        6,
        "each junk packet flagged with a reason: {packets:#?}"
    );
    for p in &bad {
        let why = p["issue"].as_str().unwrap();
        assert!(why.contains(':') && why.len() > 10, "reason given: {why}");
    }
    assert!(
        summary["issues"]["malformed"].as_u64().unwrap() >= 6,
        "{summary}"
    );
    // Decoding went on after the junk.
    assert!(
        packets
            .iter()
            .any(|p| p["qname"] == "www.ok.test." && p["qr"] == true && p["issue"].is_null()),
        "the good query after the junk was decoded"
    );
}

/// An L2-less device (tun: frames start at the IP header) is parsed by the
/// raw-IP programs, both directions.
#[test]
fn l2_less_tun_device_both_directions() {
    if !ready() {
        return;
    }
    let lab = Lab::new("tun").expect("lab");
    let ns = lab.add_netns("t").expect("netns");
    let tun = format!("{}t0", lab.prefix());
    let go = lab.dir().join("go");
    let script = format!(
        r#"
import fcntl, os, socket, struct, sys, time
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454ca, struct.pack("16sH", b"{tun}", 0x0001 | 0x1000))  # TUNSETIFF, IFF_TUN|IFF_NO_PI
os.system("ip addr add 10.77.0.1/24 dev {tun} && ip link set {tun} up")
open("{dir}/tun-up", "w").close()
while not os.path.exists("{go}"):
    time.sleep(0.02)
q = bytes.fromhex("beef01000001000000000000") + b"\x03www\x06l2less\x04test\x00" + b"\x00\x01\x00\x01"
udp = struct.pack("!HHHH", 40000, 53, 8 + len(q), 0) + q
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff)
    return ~(s + (s >> 16)) & 0xffff
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, socket.inet_aton("10.77.0.2"), socket.inet_aton("10.77.0.1"))
ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
os.write(fd, ip + udp)
deadline = time.time() + 5
while time.time() < deadline:
    pkt = os.read(fd, 2048)
    if pkt[9] == 17 and pkt[28:30] == b"\xbe\xef":
        print("reply", len(pkt))
        sys.exit(0)
sys.exit(1)
"#,
        dir = lab.dir().display(),
        go = go.display()
    );
    let mut cmd = lab.cmd(&ns, "python3");
    cmd.args(["-c", &script]);
    let py = lab.spawn_logged("tunpy", cmd).expect("python");
    lab.wait_for_file(&py, &lab.dir().join("tun-up"), Duration::from_secs(10))
        .expect("tun up");
    let _dns = lab
        .start_dnsmasq(
            &ns,
            "dnsmasq",
            &["10.77.0.1".parse().unwrap()],
            &["--address=/l2less.test/10.0.0.77"],
        )
        .expect("dnsmasq");
    let t = start(&lab, &ns, "tun", &["-i", &tun]);
    fs::write(&go, "").expect("go");
    let status = lab
        .wait_exit(&py, Duration::from_secs(10))
        .expect("wait")
        .expect("python exited");
    assert!(
        status.success(),
        "the query through the tun got its reply: {}",
        lab.log_tail(&py, 20)
    );
    let (packets, summary) = stop(t, Signal::Int);
    assert_lossless(&summary);
    let q = at(&packets, &tun, "ingress", false, 0xbeef);
    let r = at(&packets, &tun, "egress", true, 0xbeef);
    assert_eq!((q.len(), r.len()), (1, 1), "{packets:#?}");
    assert_eq!(q[0]["src"], "10.77.0.2:40000");
    assert_eq!(q[0]["qname"], "www.l2less.test.");
    assert_eq!(r[0]["answers"][0]["data"], "10.0.0.77");
    assert!(q[0]["issue"].is_null() && r[0]["issue"].is_null());
}

/// Without the capabilities, dnstrace refuses with a message that names the fix.
#[test]
fn missing_capabilities_are_named() {
    if !ready() {
        return;
    }
    let bin = dnstrace_bin().unwrap();
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(&bin)
        .args(["watch", "-i", "lo", "--duration", "1"])
        .output()
        .expect("setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("CAP_BPF") && stderr.contains("CAP_NET_ADMIN") && stderr.contains("setcap"),
        "{stderr}"
    );
}

/// Kernel drops of DNS packets are reported with the hop's netns and the
/// kernel's own reason name, read from BTF.
#[test]
fn kernel_drop_reported_with_reason() {
    if !ready() {
        return;
    }
    let (lab, ns, dev, server) = pair("drop");
    let peer_ns = format!("{}-b", lab.prefix());
    let _dns = lab
        .start_dnsmasq(
            &peer_ns,
            "dnsmasq",
            &[server],
            &["--address=/d.test/10.0.0.1"],
        )
        .expect("dnsmasq");
    lab.iptables(&peer_ns, "-A INPUT -p udp --dport 53 -s 10.53.0.1 -j DROP")
        .expect("iptables");
    let t = start(&lab, &ns, "drop", &["-i", &dev, "--drops"]);
    let out = lab
        .exec(
            &ns,
            &[
                "dig",
                "+time=1",
                "+tries=1",
                &format!("@{server}"),
                "www.d.test",
            ],
        )
        .expect("dig");
    assert!(!out.success(), "the query is dropped, so dig times out");
    let (packets, summary) = stop(t, Signal::Int);
    assert_lossless(&summary);
    let drops: Vec<_> = packets.iter().filter(|p| p["dir"] == "drop").collect();
    assert_eq!(drops.len(), 1, "{packets:#?}");
    assert_eq!(drops[0]["drop_reason"], "NETFILTER_DROP");
    assert_eq!(drops[0]["qname"], "www.d.test.");
    assert_eq!(drops[0]["dst"], format!("{server}:53"));
    assert_ne!(
        drops[0]["netns"], summary["netns"],
        "dropped in the server's netns"
    );
    assert_eq!(summary["kernel"]["drops"], 1);
}

/// Writes `frames` as hex lines to the lab file `name` and sends each one from `ns`:
/// through an AF_PACKET socket on `dev`, or (dev None) as an IPv6 packet with its own
/// header (IPPROTO_RAW) to ::1, which only the socket hop sees.
fn send_raw_frames(lab: &Lab, ns: &str, dev: Option<&str>, name: &str, frames: &[Vec<u8>]) {
    let lines: Vec<String> = frames
        .iter()
        .map(|f| f.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    let path = lab
        .write_file(name, &(lines.join("\n") + "\n"))
        .expect("frames file");
    let open = match dev {
        Some(dev) => {
            format!("s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\ns.bind(('{dev}', 0))")
        }
        None => "s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)".into(),
    };
    let send = match dev {
        Some(_) => "s.send(frame)",
        None => "s.sendto(frame, ('::1', 0))",
    };
    let script = format!(
        "import socket\n{open}\nfor line in open('{}'):\n    frame = bytes.fromhex(line.strip())\n    {send}\n",
        path.display()
    );
    lab.run(ns, &["python3", "-c", &script])
        .expect("send crafted frames");
}

/// Issue 8, finding 1: an IPv6 extension chain (hop-by-hop of up to 2 KB → fragment
/// offset 0 with more fragments → hop-by-hop → UDP to 53) that runs past the captured
/// bytes. It killed the tracer with SIGSEGV: over tc when the MTU exceeds the snap
/// length, and through the socket hop from anyone who can open a raw socket. Both
/// tracers must flag the frames, keep tracing, and exit 0.
#[test]
fn hostile_ipv6_extension_chain_live_over_tc_and_socket_hop() {
    use dnstrace_tests::hostile;
    if !ready() {
        return;
    }
    let (lab, ns, dev, server) = pair("ext6");
    let peer_ns = format!("{}-b", lab.prefix());
    let peer = format!("{}b0", lab.prefix());
    for (n, d) in [(&ns, &dev), (&peer_ns, &peer)] {
        lab.ip(n, &["link", "set", "dev", d, "mtu", "9001"])
            .expect("mtu 9001");
    }
    let mac = |n: &str, d: &str| -> [u8; 6] {
        let line = lab
            .run(n, &["ip", "-br", "link", "show", "dev", d])
            .expect("ip link");
        let text = line
            .split_whitespace()
            .nth(2)
            .expect("MAC column")
            .to_owned();
        let octets: Vec<u8> = text
            .split(':')
            .map(|h| u8::from_str_radix(h, 16).expect("hex"))
            .collect();
        octets.try_into().expect("6 octets")
    };
    let (dst_mac, src_mac) = (mac(&ns, &dev), mac(&peer_ns, &peer));
    let _dns = lab
        .start_dnsmasq(
            &peer_ns,
            "dnsmasq",
            &[server],
            &["--address=/ok.test/10.0.0.1"],
        )
        .expect("dnsmasq");
    let full = start(&lab, &ns, "ext6", &["-i", &dev, "--socket-hop"]);
    let short = start(&lab, &ns, "ext6s", &["-i", &dev, "--snaplen", "256"]);

    let (src, dst) = (
        "2001:db8::10".parse().unwrap(),
        "2001:db8::53".parse().unwrap(),
    );
    let frames: Vec<Vec<u8>> = hostile::ext_chain_sizes()
        .map(|units| {
            hostile::ethernet_ipv6(dst_mac, src_mac, &hostile::ipv6_ext_chain(units, src, dst))
        })
        .collect();
    send_raw_frames(&lab, &peer_ns, Some(&peer), "ext6.hex", &frames);
    let local = std::net::Ipv6Addr::LOCALHOST;
    let packets: Vec<Vec<u8>> = hostile::ext_chain_sizes()
        .map(|units| hostile::ipv6_ext_chain(units, local, local))
        .collect();
    send_raw_frames(&lab, &ns, None, "ext6-lo.hex", &packets);

    // Both still trace: a real query after the crafted ones is decoded.
    let out = dig_short(&lab, &ns, server, "www.ok.test");
    assert_eq!(out.trim(), "10.0.0.1");
    for t in [&full, &short] {
        t.wait_packet(|p| p["qname"] == "www.ok.test." && p["qr"] == true)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", t.stderr()));
    }
    let (short_packets, short_summary) = stop(short, Signal::Int);
    let (packets, summary) = stop(full, Signal::Int);

    let flagged = |packets: &[Value], point: &str, dst: &str| {
        packets
            .iter()
            .filter(|p| p["dir"] == point && p["dst"] == dst && !p["issue"].is_null())
            .count()
    };
    let tc = flagged(&packets, "ingress", "[2001:db8::53]:53");
    let lo =
        flagged(&packets, "socket-out", "[::1]:53") + flagged(&packets, "socket-in", "[::1]:53");
    eprintln!(
        "flagged: tc {tc} of {}, socket hop {lo}; snaplen 256: {} packets, issues {}",
        frames.len(),
        short_packets.len(),
        short_summary["issues"]
    );
    // Every frame whose UDP header lies inside the 2,048 captured bytes shows its port.
    let within = hostile::ext_chain_sizes()
        .filter(|u| 8 * (usize::from(*u) + 1) + 14 + 40 + 16 + 4 <= 2048)
        .count();
    assert!(tc >= within, "{tc} < {within} flagged at tc: {packets:#?}");
    assert!(
        lo >= 1,
        "the socket hop saw the raw packets to ::1: {summary}"
    );
    assert!(
        short_summary["issues"]
            .as_object()
            .is_some_and(|m| !m.is_empty()),
        "the snaplen-256 tracer counted the cut frames: {short_summary}"
    );
}

/// Issue 8, finding 1, offline: `dnstrace replay` of the same chains, whole (Ethernet and
/// raw IP) and cut to 200 bytes. Replay died with signal 11 on the cut file.
#[test]
fn hostile_ipv6_extension_chain_in_replay() {
    use dnstrace_tests::hostile;
    if dnstrace_bin().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, dst) = (
        "2001:db8::10".parse().unwrap(),
        "2001:db8::53".parse().unwrap(),
    );
    let ips: Vec<Vec<u8>> = hostile::ext_chain_sizes()
        .map(|u| hostile::ipv6_ext_chain(u, src, dst))
        .collect();
    let eth: Vec<Vec<u8>> = ips
        .iter()
        .map(|ip| hostile::ethernet_ipv6([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], ip))
        .collect();
    for (name, linktype, snaplen, frames, whole) in [
        ("eth", hostile::LINKTYPE_ETHERNET, 65_535, &eth, true),
        ("raw", hostile::LINKTYPE_RAW, 65_535, &ips, true),
        ("cut", hostile::LINKTYPE_ETHERNET, 200, &eth, false),
    ] {
        let file = dir.path().join(format!("ext6-{name}.pcap"));
        hostile::write_pcap(&file, linktype, snaplen, frames).expect("pcap");
        let trace = dnstrace_tests::replay(&file, &["--packets"])
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(
            trace.summary["replay"]["frames"].as_u64(),
            Some(frames.len() as u64),
            "{name}: {}",
            trace.summary
        );
        if whole {
            let flagged = trace
                .packets
                .iter()
                .filter(|p| p["dst"] == "[2001:db8::53]:53" && !p["issue"].is_null())
                .count();
            assert_eq!(flagged, frames.len(), "{name}: {:#?}", trace.packets);
        }
    }
}

/// `dig +short` for `name` at `server` from `ns`, one try of 2 s.
fn dig_short(lab: &Lab, ns: &str, server: IpAddr, name: &str) -> String {
    lab.run(
        ns,
        &[
            "dig",
            "+short",
            "+time=2",
            "+tries=1",
            &format!("@{server}"),
            name,
        ],
    )
    .unwrap_or_else(|e| panic!("dig {name}: {e:#}"))
}

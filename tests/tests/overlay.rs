//! DNS between pods on two lab "nodes" across a real overlay: each node is a netns with
//! a routed pod behind a veth, the nodes are joined by an underlay veth pair, and a real
//! Linux vxlan or geneve device on each carries the pod networks. A pod on node A queries
//! a dnsmasq pod on node B; `dnstrace watch --auto --pcap` runs in node A's netns (and
//! `dnstrace watch --auto` in node B's).
//! Needs root and DNSTRACE_BIN (run with `cargo xtask test`).
use std::{io::Write as _, path::Path, process::Command, time::Duration};

use dnstrace_tests::{Lab, Signal, Tracer, VethEnd, dnstrace_bin, one_line, skip_without_root};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);
const VNI: u64 = 42;
const POD_A: &str = "10.244.0.10";
const POD_B: &str = "10.244.1.10";

fn setup() -> bool {
    !skip_without_root() && dnstrace_bin().is_some()
}

/// One way to build the overlay.
#[derive(Clone, Copy, Debug)]
struct Cell {
    name: &'static str,
    /// "vxlan" or "geneve", as `ip link` and the JSON name it.
    kind: &'static str,
    port: u16,
    /// The underlay is IPv6 (the pods stay IPv4).
    v6: bool,
}

const CELLS: [Cell; 3] = [
    Cell {
        name: "vxlan 4789 over IPv4",
        kind: "vxlan",
        port: 4789,
        v6: false,
    },
    Cell {
        name: "vxlan 8472 over IPv6",
        kind: "vxlan",
        port: 8472,
        v6: true,
    },
    Cell {
        name: "geneve 6081 over IPv4",
        kind: "geneve",
        port: 6081,
        v6: false,
    },
];

/// The two nodes, their pods and the overlay between them.
struct Overlay {
    lab: Lab,
    cell: Cell,
    node_a: String,
    node_b: String,
    pod_a: String,
    /// Interface names in node A: the pod's veth, the underlay uplink, the tunnel device.
    veth_a: String,
    uplink_a: String,
    /// Underlay addresses of node A and node B.
    under_a: &'static str,
    under_b: &'static str,
    /// A name only this lab asks for.
    qname: String,
}

impl Overlay {
    /// None (after saying so) when this kernel cannot make `cell`'s tunnel device.
    fn new(tag: &str, cell: Cell) -> Option<Overlay> {
        let lab = Lab::new(tag).expect("lab");
        let p = lab.prefix().to_owned();
        let ns = |n: &str| lab.add_netns(n).expect("netns");
        let (node_a, node_b, pod_a, pod_b) = (ns("a"), ns("b"), ns("pa"), ns("pb"));
        let (under_a, under_b, mask) = if cell.v6 {
            ("fd00:ee::1", "fd00:ee::2", 64)
        } else {
            ("10.200.0.1", "10.200.0.2", 24)
        };
        let (uplink_a, uplink_b) = (format!("{p}ua"), format!("{p}ub"));
        let (cidr_a, cidr_b) = (format!("{under_a}/{mask}"), format!("{under_b}/{mask}"));
        lab.add_veth(
            &VethEnd {
                ns: &node_a,
                name: &uplink_a,
                addrs: &[&cidr_a],
            },
            &VethEnd {
                ns: &node_b,
                name: &uplink_b,
                addrs: &[&cidr_b],
            },
        )
        .expect("underlay");
        // The underlay is each node's way off the node (its default route), as on a cloud VM.
        lab.add_route(&node_a, &format!("default via {under_b}"))
            .unwrap();
        lab.add_route(&node_b, &format!("default via {under_a}"))
            .unwrap();
        let tunnel = format!("{p}tun");
        for (node, uplink, local, remote, addr, other_pods, via) in [
            (
                &node_a,
                &uplink_a,
                under_a,
                under_b,
                "10.201.0.1/24",
                "10.244.1.0/24",
                "10.201.0.2",
            ),
            (
                &node_b,
                &uplink_b,
                under_b,
                under_a,
                "10.201.0.2/24",
                "10.244.0.0/24",
                "10.201.0.1",
            ),
        ] {
            let port = cell.port.to_string();
            let mut link = vec!["link", "add", &tunnel, "type", cell.kind, "id", "42"];
            match cell.kind {
                "vxlan" => link.extend([
                    "dstport", &port, "local", local, "remote", remote, "dev", uplink,
                ]),
                _ => link.extend(["dstport", &port, "remote", remote]),
            }
            if let Err(e) = lab.ip(node, &link) {
                if format!("{e:#}").contains("Unknown device type") {
                    // Past the test harness's capture: a skip must be seen.
                    let _ = writeln!(
                        std::io::stderr(),
                        "*** SKIPPED cell {}: this kernel has no {} device ({e:#}) ***",
                        cell.name,
                        cell.kind
                    );
                    return None;
                }
                panic!("tunnel device: {e:#}");
            }
            lab.add_addr(node, &tunnel, addr).unwrap();
            lab.ip(node, &["link", "set", &tunnel, "up"]).unwrap();
            lab.add_route(node, &format!("{other_pods} via {via} dev {tunnel}"))
                .unwrap();
            lab.sysctl(node, "net.ipv4.ip_forward", "1").unwrap();
        }
        // Each pod behind a routed veth, as a CNI's ptp plugin makes it.
        for (node, pod, name, gw, ip) in [
            (&node_a, &pod_a, "pa", "10.244.0.1", POD_A),
            (&node_b, &pod_b, "pb", "10.244.1.1", POD_B),
        ] {
            let (host, inside) = (format!("{p}{name}0"), format!("{p}{name}1"));
            lab.add_veth(
                &VethEnd {
                    ns: node,
                    name: &host,
                    addrs: &[&format!("{gw}/24")],
                },
                &VethEnd {
                    ns: pod,
                    name: &inside,
                    addrs: &[&format!("{ip}/24")],
                },
            )
            .expect("pod veth");
            lab.add_route(pod, &format!("default via {gw}")).unwrap();
        }
        let qname = format!("{p}.ovl.test");
        let dns = lab
            .start_dnsmasq(
                &pod_b,
                "dnsmasq",
                &[POD_B.parse().unwrap()],
                &[&format!("--address=/{qname}/203.0.113.7")],
            )
            .expect("dnsmasq in pod B");
        // Across the overlay from pod A: the first answer also proves the tunnel works.
        lab.wait_dns_ready(&pod_a, POD_B.parse().unwrap(), &dns, WAIT)
            .expect("pod A reaches pod B's DNS server across the overlay");
        Some(Overlay {
            veth_a: format!("{p}pa0"),
            lab,
            cell,
            node_a,
            node_b,
            pod_a,
            uplink_a,
            under_a,
            under_b,
            qname,
        })
    }

    /// `dig` from pod A to pod B's server.
    fn dig(&self, extra: &[&str]) -> String {
        let at = format!("@{POD_B}");
        let mut argv = vec!["dig", "+time=2", "+tries=1", &at, &self.qname, "A"];
        argv.extend(extra);
        let out = self.lab.exec(&self.pod_a, &argv).expect("dig");
        out.stdout
    }

    /// Checks a lookup of pod A's query: one chain from the pod's veth to node A's
    /// uplink, where it is seen inside the tunnel with the outer addresses.
    fn check_lookup(&self, l: &Value, proto: &str) {
        let c = self.cell;
        let ctx = format!("{} ({proto}): {l:#}", c.name);
        assert_eq!(l["server"], format!("{POD_B}:53"), "{ctx}");
        assert!(
            l["client"]
                .as_str()
                .is_some_and(|a| a.starts_with(&format!("{POD_A}:"))),
            "{ctx}"
        );
        let hops = l["hops"].as_array().expect("hops (DNSTRACE_HOPS=all)");
        let at = |iface: &str, dir: &str, qr: bool| {
            hops.iter()
                .filter(|h| h["iface"] == iface && h["dir"] == dir && h["qr"] == qr)
                .collect::<Vec<_>>()
        };
        // The pod's veth: the inner packet as the pod sent it, no tunnel.
        let veth = at(&self.veth_a, "ingress", false);
        assert!(!veth.is_empty(), "no query hop at the pod's veth: {ctx}");
        assert!(veth.iter().all(|h| h["tunnel"].is_null()), "{ctx}");
        // The uplink, both ways: the pods' addresses, inside the tunnel.
        for (dir, qr, outer_src, outer_dst) in [
            ("egress", false, self.under_a, self.under_b),
            ("ingress", true, self.under_b, self.under_a),
        ] {
            let seen = at(&self.uplink_a, dir, qr);
            assert!(!seen.is_empty(), "no hop at the uplink {dir}: {ctx}");
            for h in seen {
                let (src, dst) = if qr { (POD_B, POD_A) } else { (POD_A, POD_B) };
                assert!(h["src"].as_str().unwrap().starts_with(src), "{ctx}");
                assert!(h["dst"].as_str().unwrap().starts_with(dst), "{ctx}");
                assert_eq!(h["proto"], proto, "{ctx}");
                let t = &h["tunnel"];
                assert_eq!(
                    (t["kind"].as_str(), t["vni"].as_u64()),
                    (Some(c.kind), Some(VNI)),
                    "{ctx}"
                );
                let ip = |a: &Value| {
                    let a = a.as_str().unwrap();
                    let (ip, port) = a.rsplit_once(':').unwrap();
                    (
                        ip.trim_matches(['[', ']']).to_owned(),
                        port.parse::<u16>().unwrap(),
                    )
                };
                assert_eq!(ip(&t["src"]).0, outer_src, "{ctx}");
                assert_eq!(ip(&t["dst"]), (outer_dst.to_owned(), c.port), "{ctx}");
            }
        }
    }
}

impl Overlay {
    /// Node B's view of the same two lookups: they arrive by its uplink inside the
    /// tunnel and leave by the server pod's veth, one chain each, answered.
    fn check_server_side(&self, lookups: &[Value]) {
        let p = self.lab.prefix();
        let (uplink_b, veth_b) = (format!("{p}ub"), format!("{p}pb0"));
        assert_eq!(lookups.len(), 2, "{}: node B: {lookups:#?}", self.cell.name);
        for l in lookups {
            let ctx = format!("{}: node B: {l:#}", self.cell.name);
            assert_eq!(l["verdict"], "ok", "{ctx}");
            let hops = l["hops"].as_array().unwrap();
            // (The socket hop sees every netns: pod A's send is in this chain too.)
            let first = hops
                .iter()
                .find(|h| h["qr"] == false && h["iface"] == uplink_b.as_str())
                .unwrap_or_else(|| panic!("no query hop at node B's uplink: {ctx}"));
            assert_eq!(first["dir"], "ingress", "{ctx}");
            assert_eq!(first["tunnel"]["vni"], VNI, "{ctx}");
            let port = format!(":{}", self.cell.port);
            assert!(
                first["tunnel"]["dst"]
                    .as_str()
                    .is_some_and(|d| d.ends_with(&port)),
                "{ctx}"
            );
            assert!(
                hops.iter().any(|h| h["iface"] == veth_b.as_str()
                    && h["dir"] == "egress"
                    && h["qr"] == false
                    && h["tunnel"].is_null()),
                "no query hop at the server pod's veth: {ctx}"
            );
        }
    }
}

fn lookups_for<'a>(lookups: &'a [Value], qname: &str) -> Vec<&'a Value> {
    let want = format!("{qname}.");
    lookups.iter().filter(|l| l["qname"] == want).collect()
}

/// `tshark -n -r FILE -Y FILTER -T fields -e F`: one value per matching frame; UDP `port`
/// is decoded as `kind` (Wireshark knows VXLAN on 4789 only, not on Linux's 8472).
fn tshark(file: &Path, port: u16, kind: &str, filter: &str, field: &str) -> Vec<String> {
    let out = Command::new("tshark")
        .args(["-n", "-r", file.to_str().unwrap(), "-Y", filter])
        .args(["-d", &format!("udp.port=={port},{kind}")])
        .args(["-T", "fields", "-e", field])
        .output()
        .expect("running tshark");
    assert!(
        out.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// False when the cell could not run here (it said why).
fn run_cell(tag: &str, cell: Cell) -> bool {
    let Some(o) = Overlay::new(tag, cell) else {
        return false;
    };
    let file = o.lab.dir().join("overlay.pcapng");
    let path = file.to_str().unwrap().to_owned();
    let tracer = Tracer::start(
        &o.lab,
        &o.node_a,
        "trace",
        &["--auto", "--timeout", "2s", "--pcap", &path],
    )
    .expect("start dnstrace in node A");
    // And one on node B, where the server pod is.
    let tracer_b = Tracer::start(&o.lab, &o.node_b, "trace-b", &["--auto", "--timeout", "2s"])
        .expect("start dnstrace in node B");
    let udp = o.dig(&[]);
    assert!(
        udp.contains("203.0.113.7"),
        "{}: dig over UDP: {udp}",
        cell.name
    );
    let tcp = o.dig(&["+tcp"]);
    assert!(
        tcp.contains("203.0.113.7"),
        "{}: dig over TCP: {tcp}",
        cell.name
    );
    let want = format!("{}.", o.qname);
    tracer
        .wait_lookups(|l| l["qname"] == want, 2, WAIT)
        .unwrap_or_else(|e| panic!("{}: {e:#}", cell.name));
    let on_b = tracer_b
        .wait_lookups(|l| l["qname"] == want, 2, WAIT)
        .unwrap_or_else(|e| panic!("{}: node B: {e:#}", cell.name));
    tracer_b.stop(Signal::Int).expect("stop dnstrace on node B");
    o.check_server_side(&on_b);
    let trace = tracer.stop(Signal::Int).expect("stop dnstrace");
    let lookups = lookups_for(&trace.lookups, &o.qname);
    for l in &lookups {
        eprintln!("{}: live: {}", cell.name, one_line(l));
    }
    // Every version.bind probe and both digs are lookups of their own; ours are 2, ok.
    assert_eq!(lookups.len(), 2, "{}: {lookups:#?}", cell.name);
    for (l, proto) in lookups.iter().zip(["udp", "tcp"]) {
        assert_eq!(l["verdict"], "ok", "{}: {l:#}", cell.name);
        assert_eq!(l["rcode"], "NOERROR", "{}", cell.name);
        o.check_lookup(l, proto);
    }
    // The packet records carry the tunnel too.
    let tunneled = trace
        .packets
        .iter()
        .filter(|p| p["qname"] == want && p["iface"] == o.uplink_a.as_str())
        .collect::<Vec<_>>();
    assert!(tunneled.len() >= 2, "{}", cell.name);
    assert!(
        tunneled.iter().all(|p| p["tunnel"]["vni"] == VNI),
        "{}: {tunneled:#?}",
        cell.name
    );

    // The pcapng holds the real packets: Wireshark sees the tunnel and the DNS inside.
    let dns_in_tunnel = tshark(
        &file,
        cell.port,
        cell.kind,
        &format!("{} && dns.qry.name == \"{}\"", cell.kind, o.qname),
        &format!("{}.vni", cell.kind),
    );
    assert!(
        dns_in_tunnel.len() >= 2 && dns_in_tunnel.iter().all(|v| v == "42"),
        "{}: tshark saw {dns_in_tunnel:?}",
        cell.name
    );

    // Replay of that file stitches the same lookups, tunnel and all.
    let replayed = dnstrace_tests::replay(&file, &[]).expect("replay");
    let again = lookups_for(&replayed.lookups, &o.qname);
    assert_eq!(again.len(), 2, "{}: {again:#?}", cell.name);
    for (l, proto) in again.iter().zip(["udp", "tcp"]) {
        assert_eq!(l["verdict"], "ok", "{}: replay: {l:#}", cell.name);
        o.check_lookup(l, proto);
    }
    true
}

#[test]
fn pod_to_pod_dns_across_an_overlay_is_one_lookup_with_the_tunnel_on_the_uplink() {
    if !setup() {
        return;
    }
    let mut ran = Vec::new();
    for (i, cell) in CELLS.into_iter().enumerate() {
        if run_cell(&format!("ovl{i}"), cell) {
            ran.push(cell.name);
        }
    }
    let _ = writeln!(
        std::io::stderr(),
        "overlay cells run: {ran:?} of {}",
        CELLS.len()
    );
    // vxlan is in every kernel dnstrace supports; geneve may be missing (this VM).
    assert!(ran.len() >= 2, "only {ran:?} ran");
}

/// A Geneve datagram with an option, as OVN sends them, written by hand: this kernel may
/// have no geneve device, but node A's uplink still sees the datagram, and the kernel
/// program must look past the options to the DNS query inside.
#[test]
fn a_geneve_datagram_with_options_is_opened_in_the_kernel() {
    if !setup() {
        return;
    }
    let o = Overlay::new("ovlg", CELLS[0]).expect("a vxlan overlay");
    let tracer = Tracer::start(&o.lab, &o.node_a, "trace", &["--auto", "--timeout", "1s"])
        .expect("start dnstrace in node A");
    let send = format!(
        r#"
import socket, struct
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s & 0xffff) + (s >> 16)
    return ~(s + (s >> 16)) & 0xffff
name = b"".join(bytes([len(l)]) + l for l in b"{qname}".split(b".")) + b"\0"
dns = struct.pack("!6H", 0x4242, 0x0100, 1, 0, 0, 0) + name + struct.pack("!2H", 1, 1)
udp = struct.pack("!4H", 40000, 53, 8 + len(dns), 0) + dns
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                 socket.inet_aton("{POD_B}"), socket.inet_aton("{POD_A}"))
ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
frame = bytes.fromhex("020000000001020000000002 0800") + ip + udp
geneve = bytes([0x01, 0, 0x65, 0x58, 0, 0, {VNI}, 0]) + bytes.fromhex("0102 03 00")
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(geneve + frame, ("{under_a}", 6081))
"#,
        qname = o.qname,
        under_a = o.under_a,
    );
    o.lab
        .run(&o.node_b, &["python3", "-c", &send])
        .expect("send the Geneve datagram");
    let want = format!("{}.", o.qname);
    let p = tracer
        .wait_packet(|p| p["qname"] == want && p["iface"] == o.uplink_a.as_str())
        .expect("the query inside the Geneve datagram");
    let trace = tracer.stop(Signal::Int).expect("stop dnstrace");
    eprintln!("{p}");
    assert_eq!(
        (&p["iface"], &p["dir"]),
        (&o.uplink_a.as_str().into(), &"ingress".into())
    );
    assert_eq!(
        (&p["src"], &p["dst"]),
        (
            &format!("{POD_B}:40000").into(),
            &format!("{POD_A}:53").into()
        )
    );
    let t = &p["tunnel"];
    assert_eq!(
        (&t["kind"], &t["vni"]),
        (&"geneve".into(), &VNI.into()),
        "{p}"
    );
    assert_eq!(t["dst"], format!("{}:6081", o.under_a), "{p}");
    assert!(
        trace.summary["issues"]["malformed"] == 0,
        "{}",
        trace.summary
    );
}

/// Node B drops the query after decapsulating it: node A saw it leave inside the tunnel,
/// and its lookup says so (last hop: the uplink, with the tunnel).
#[test]
fn a_query_lost_beyond_the_tunnel_is_judged_at_the_uplink() {
    if !setup() {
        return;
    }
    let o = Overlay::new("ovlf", CELLS[0]).expect("a vxlan overlay");
    o.lab
        .iptables(
            &o.node_b,
            &format!("-A FORWARD -d {POD_B} -p udp --dport 53 -j DROP"),
        )
        .expect("drop DNS on node B");
    let tracer = Tracer::start(&o.lab, &o.node_a, "trace", &["--auto", "--timeout", "1s"])
        .expect("start dnstrace in node A");
    let out = o.dig(&["+time=1"]);
    assert!(
        !out.contains("203.0.113.7"),
        "answered through the drop: {out}"
    );
    let want = format!("{}.", o.qname);
    let found = tracer
        .wait_lookups(|l| l["qname"] == want, 1, WAIT)
        .expect("the lookup ends");
    tracer.stop(Signal::Int).expect("stop dnstrace");
    let l = &found[0];
    eprintln!("{}\n{l:#}", one_line(l));
    // It left node A for node B inside the tunnel and was never answered.
    assert_eq!(l["verdict"], "unanswered", "{l:#}");
    assert_eq!(l["last_hop"], format!("{} egress", o.uplink_a), "{l:#}");
    assert_eq!(l["culprit"], format!("{POD_B}:53"), "{l:#}");
    let detail = l["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("inside vxlan vni {VNI} {}:", o.under_a))
            && detail.contains(&format!("→{}:4789", o.under_b)),
        "{detail}"
    );
    let hops = l["hops"].as_array().unwrap();
    let at = |iface: &str| {
        hops.iter()
            .find(|h| h["iface"] == iface && h["qr"] == false)
    };
    assert!(
        at(&o.veth_a).is_some_and(|h| h["tunnel"].is_null()),
        "{l:#}"
    );
    let up = at(&o.uplink_a).expect("the query at the uplink");
    assert_eq!(up["dir"], "egress", "{l:#}");
    assert_eq!(
        (&up["tunnel"]["kind"], &up["tunnel"]["vni"]),
        (&"vxlan".into(), &VNI.into()),
        "{l:#}"
    );
}

/// Node A's own firewall drops the tunnel's datagrams (the overlay port left closed):
/// the kernel's drop of the encapsulated query is the lookup's fault, with the tunnel.
#[test]
fn a_dropped_tunnel_datagram_is_the_lookups_drop() {
    if !setup() {
        return;
    }
    let o = Overlay::new("ovld", CELLS[0]).expect("a vxlan overlay");
    o.lab
        .iptables(&o.node_a, "-A OUTPUT -p udp --dport 4789 -j DROP")
        .expect("drop the tunnel on node A");
    let tracer = Tracer::start(&o.lab, &o.node_a, "trace", &["--auto", "--timeout", "1s"])
        .expect("start dnstrace in node A");
    let out = o.dig(&["+time=1"]);
    assert!(
        !out.contains("203.0.113.7"),
        "answered through the drop: {out}"
    );
    let want = format!("{}.", o.qname);
    let found = tracer
        .wait_lookups(|l| l["qname"] == want, 1, WAIT)
        .expect("the lookup ends");
    tracer.stop(Signal::Int).expect("stop dnstrace");
    let l = &found[0];
    eprintln!("{}\n{l:#}", one_line(l));
    assert_eq!(l["verdict"], "dropped", "{l:#}");
    let hops = l["hops"].as_array().unwrap();
    let drop = hops
        .iter()
        .find(|h| h["dir"] == "drop")
        .unwrap_or_else(|| panic!("no drop hop: {l:#}"));
    assert_eq!(drop["drop_reason"], "NETFILTER_DROP", "{l:#}");
    assert!(
        l["hint"]
            .as_str()
            .is_some_and(|h| h.contains("udp 4789 (vxlan)")),
        "{l:#}"
    );
    assert!(drop["src"].as_str().unwrap().starts_with(POD_A), "{l:#}");
    let t = &drop["tunnel"];
    assert_eq!(
        (&t["kind"], &t["vni"]),
        (&"vxlan".into(), &VNI.into()),
        "{l:#}"
    );
    assert_eq!(t["dst"], format!("{}:4789", o.under_b), "{l:#}");
}

//! The bench topologies, built on `dnstrace_tests::Lab` (torn down on drop).
//!
//! ```text
//! flood:   <p>-gen  <p>g0 10.200.0.1 ──── eth0 10.200.0.2  <p>-sink   (no listener: NoPorts counts arrivals)
//!
//! dns:     <p>-pod  eth0 10.210.0.10 ── <p>pod0 10.210.0.1   <p>-node (router)
//!                                       <p>srv0 10.210.1.1 ── eth0 10.210.1.10  <p>-srv  dnsmasq
//!
//! many:    <p>-many <p>v0 … <p>v249 (veths, up) ── p0 … p249  <p>-peer
//! ```

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
};

use anyhow::{Context, Result};
use dnstrace_tests::{Lab, VethEnd};

/// Sender and receiver of the UDP floods, one veth between them.
pub struct FloodLab {
    pub lab: Lab,
    pub sender: String,
    pub sink: String,
    /// The sender's end, where dnstrace and the no-op classifier attach.
    pub veth: String,
    pub dst: Ipv4Addr,
}

pub fn flood_lab() -> Result<FloodLab> {
    let lab = Lab::new("bfl")?;
    let sender = lab.add_netns("gen")?;
    let sink = lab.add_netns("sink")?;
    let veth = format!("{}g0", lab.prefix());
    let dst = Ipv4Addr::new(10, 200, 0, 2);
    lab.add_veth(
        &VethEnd {
            ns: &sender,
            name: &veth,
            addrs: &["10.200.0.1/24"],
        },
        &VethEnd {
            ns: &sink,
            name: "eth0",
            addrs: &[&format!("{dst}/24")],
        },
    )?;
    // Few port-unreachable replies: they would cross the hooks too.
    lab.sysctl(&sink, "net.ipv4.icmp_ratelimit", "100000")?;
    Ok(FloodLab {
        lab,
        sender,
        sink,
        veth,
        dst,
    })
}

/// A pod, a node routing between two veths, and a DNS server pod.
pub struct DnsLab {
    pub lab: Lab,
    pub node: String,
    pub pod: String,
    pub srv: String,
    pub pod_veth: String,
    pub srv_veth: String,
    pub server_ip: Ipv4Addr,
    /// The DNS server's pid (its CPU is part of the DNS path's cost).
    pub server_pid: u32,
    /// dnsperf's input: `h<N>.bench.test A`, one per line.
    pub queries: std::path::PathBuf,
}

pub const ZONE: &str = "bench.test";
const QUERY_NAMES: usize = 10_000;

pub fn dns_lab() -> Result<DnsLab> {
    let lab = Lab::new("bdns")?;
    let p = lab.prefix().to_owned();
    let node = lab.add_netns("node")?;
    let pod = lab.add_netns("pod")?;
    let srv = lab.add_netns("srv")?;
    let (pod_veth, srv_veth) = (format!("{p}pod0"), format!("{p}srv0"));
    let server_ip = Ipv4Addr::new(10, 210, 1, 10);
    lab.add_veth(
        &VethEnd {
            ns: &node,
            name: &pod_veth,
            addrs: &["10.210.0.1/24"],
        },
        &VethEnd {
            ns: &pod,
            name: "eth0",
            addrs: &["10.210.0.10/24"],
        },
    )?;
    lab.add_veth(
        &VethEnd {
            ns: &node,
            name: &srv_veth,
            addrs: &["10.210.1.1/24"],
        },
        &VethEnd {
            ns: &srv,
            name: "eth0",
            addrs: &[&format!("{server_ip}/24")],
        },
    )?;
    lab.add_route(&pod, "default via 10.210.0.1")?;
    lab.add_route(&srv, "default via 10.210.1.1")?;
    lab.sysctl(&node, "net.ipv4.ip_forward", "1")?;

    // dnsmasq answering every name under bench.test from its configuration: no
    // upstream, no cache effects, no per-query logging.
    let server = lab
        .start_dnsmasq_quiet(
            &srv,
            "bench-dnsmasq",
            &[IpAddr::V4(server_ip)],
            &[&format!("--address=/{ZONE}/10.0.0.1")],
        )
        .context("starting dnsmasq for the bench")?;

    let mut text = String::with_capacity(QUERY_NAMES * 20);
    for i in 0..QUERY_NAMES {
        let _ = writeln!(text, "h{i}.{ZONE} A");
    }
    let queries = lab.write_file("queries.txt", &text)?;
    Ok(DnsLab {
        lab,
        node,
        pod,
        srv,
        pod_veth,
        srv_veth,
        server_ip,
        server_pid: server.pid,
        queries,
    })
}

/// A netns with `n` veths (their peers in a second netns), all up.
pub struct ManyLab {
    pub lab: Lab,
    pub ns: String,
    pub ifaces: Vec<String>,
}

pub fn many_lab(n: usize) -> Result<ManyLab> {
    let lab = Lab::new("bmny")?;
    let ns = lab.add_netns("many")?;
    let peer = lab.add_netns("peer")?;
    let p = lab.prefix().to_owned();
    let ifaces: Vec<String> = (0..n).map(|i| format!("{p}v{i}")).collect();
    let (mut here, mut there) = (String::new(), String::new());
    for (i, name) in ifaces.iter().enumerate() {
        let _ = writeln!(
            here,
            "link add {name} type veth peer name p{i} netns {peer}"
        );
        let _ = writeln!(here, "link set {name} up");
        let _ = writeln!(there, "link set p{i} up");
    }
    let here = lab.write_file("many.batch", &here)?;
    let there = lab.write_file("peer.batch", &there)?;
    lab.ip(&ns, &["-batch", &here.display().to_string()])?;
    lab.ip(&peer, &["-batch", &there.display().to_string()])?;
    Ok(ManyLab { lab, ns, ifaces })
}

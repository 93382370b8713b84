//! [`Node`]: a Kubernetes node's DNS path built from real parts (see
//! shared FAILURE-MODES.md, "A node's DNS path").
//!
//! ```text
//!  <p>-pod              <p>-node (host netns)                         <p>-cdns
//!  eth0 10.244.0.10 ── <p>pod0 10.244.0.1     <p>cdns0 10.244.1.1 ── eth0 10.244.1.10
//!  fd00:244::10         fd00:244::1                                   unbound → 203.0.113.53
//!                       <p>nld0 (ifb) 169.254.25.10: dnsmasq → 10.96.0.10
//!                       nat: 10.96.0.10:53 DNAT → 10.244.1.10 (PREROUTING+OUTPUT)
//!                       <p>up0 198.51.100.10, MASQUERADE ── eth0 198.51.100.1   <p>-up
//!                                                          lo 203.0.113.53: BIND, example.test
//! ```
//! Every record has TTL 0 and the dnsmasq cache is off, so each query walks
//! every hop.
//!
//! With [`NodeOptions::bridge`] the two pods instead share one Linux bridge
//! in the node netns (kubenet's cbr0), and the CoreDNS-role pod sits on the
//! pod subnet:
//!
//! ```text
//!  <p>-pod  eth0 10.244.0.10 ── <p>pod0 ┐
//!                                        ├ <p>br0 10.244.0.1/24 (node netns)
//!  <p>-cdns eth0 10.244.0.20 ── <p>cdns0 ┘
//! ```
//! `net.bridge.bridge-nf-call-iptables` stays 1 (br_netfilter on, as
//! kubenet requires), so bridged replies are still un-DNATed.

use std::{
    fmt::Display,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::{
    lab::{CmdOutput, Lab, Proc, VethEnd},
    servers::Zone,
};

const ZONE: &str = "example.test";
const WWW_A: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 80);
const WWW_AAAA: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x80);
const BIG_TXT_RECORDS: usize = 8;
const BIG_TXT_LEN: usize = 200;

/// The zone the upstream BIND serves: `www` (A and AAAA), `big` (TXT
/// answer > 1232 bytes, so UDP replies carry TC=1) and `ns1`; TTL 0 throughout.
pub fn example_zone() -> Zone {
    let mut text = format!(
        "$TTL 0\n\
         @    IN SOA ns1.{ZONE}. hostmaster.{ZONE}. ( 1 3600 600 86400 0 )\n\
         @    IN NS  ns1\n\
         ns1  IN A   203.0.113.53\n\
         www  IN A   {WWW_A}\n\
         www  IN AAAA {WWW_AAAA}\n"
    );
    for i in 0..BIG_TXT_RECORDS {
        let filler = "x".repeat(BIG_TXT_LEN - 10);
        text.push_str(&format!("big  IN TXT \"chunk-{i:02}-{filler}\"\n"));
    }
    Zone {
        name: ZONE.to_owned(),
        text,
    }
}

/// How to build a [`Node`]; `NodeOptions::default()` is what [`Node::new`] builds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeOptions {
    /// kubenet/cbr0 style: the pod and the CoreDNS-role pod are ports of one
    /// Linux bridge `<p>br0` (10.244.0.1/24) in the node netns, and the
    /// CoreDNS-role pod is 10.244.0.20 on the pod subnet. Default: a routed
    /// veth per pod, each pod on its own /24 (Calico/Cilium style).
    pub bridge: bool,
}

/// A node's DNS path on its own [`Lab`]; every name and address is a field.
pub struct Node {
    /// Owns everything below; dropping the node tears it all down.
    pub lab: Lab,

    /// The node's host netns (node-local-dns, NAT, routing).
    pub node_ns: String,
    /// The client pod.
    pub pod_ns: String,
    /// The CoreDNS-role pod (unbound).
    pub cdns_ns: String,
    /// Upstream network and resolver (BIND).
    pub up_ns: String,

    /// Node-side veth of the client pod (`<p>pod0`).
    pub pod_veth: String,
    /// Node-side veth of the CoreDNS pod (`<p>cdns0`).
    pub cdns_veth: String,
    /// Node-side uplink veth (`<p>up0`).
    pub uplink: String,
    /// The ifb device holding the node-local-dns address (`<p>nld0`).
    pub nodelocal_dev: String,
    /// Interface name inside the pod, the CoreDNS pod and the upstream netns.
    pub pod_eth: String,
    /// The Linux bridge (`<p>br0`) that `pod_veth` and `cdns_veth` are ports
    /// of, when built with [`NodeOptions::bridge`].
    pub bridge: Option<String>,

    pub pod_ip: Ipv4Addr,
    pub pod_ip6: Ipv6Addr,
    pub pod_gw: Ipv4Addr,
    pub pod_gw6: Ipv6Addr,
    pub cdns_ip: Ipv4Addr,
    pub cdns_ip6: Ipv6Addr,
    pub cdns_gw: Ipv4Addr,
    /// The node's own address on the uplink (MASQUERADE source).
    pub node_ip: Ipv4Addr,
    /// The upstream router, the node's default gateway.
    pub upstream_gw: Ipv4Addr,
    /// node-local-dns (169.254.25.10).
    pub nodelocal_ip: Ipv4Addr,
    /// kube-dns ClusterIP (10.96.0.10), DNATed to `cdns_ip`.
    pub cluster_ip: Ipv4Addr,
    /// The upstream resolver (203.0.113.53), BIND authoritative for `zone`.
    pub resolver_ip: Ipv4Addr,

    pub zone: String,
    /// `www.example.test`: A `www_a`, AAAA `www_aaaa`.
    pub www_name: String,
    pub www_a: Ipv4Addr,
    pub www_aaaa: Ipv6Addr,
    /// `big.example.test`: TXT answer over 1232 bytes (TC=1 over UDP).
    pub big_name: String,
    /// `nx.example.test`: NXDOMAIN.
    pub nx_name: String,

    /// dnsmasq in `node_ns` on `nodelocal_ip`, forwarding to `cluster_ip`.
    pub nodelocal: Proc,
    /// unbound in `cdns_ns` on `cdns_ip`, forwarding to `resolver_ip`.
    pub coredns: Proc,
    /// BIND in `up_ns` on `resolver_ip`.
    pub upstream: Proc,
}

impl Node {
    /// Builds a node on a fresh `Lab::new(tag)`.
    pub fn new(tag: &str) -> Result<Node> {
        Node::with_options(tag, NodeOptions::default())
    }

    /// Like [`Node::new`], built as `options` say.
    pub fn with_options(tag: &str, options: NodeOptions) -> Result<Node> {
        Node::build(Lab::new(tag)?, options)
    }

    /// Builds the topology on `lab` and returns once a query from the pod
    /// through node-local-dns is answered end to end.
    fn build(lab: Lab, options: NodeOptions) -> Result<Node> {
        let p = lab.prefix().to_owned();
        let node_ns = lab.add_netns("node")?;
        let pod_ns = lab.add_netns("pod")?;
        let cdns_ns = lab.add_netns("cdns")?;
        let up_ns = lab.add_netns("up")?;
        let (pod_veth, cdns_veth, uplink, nodelocal_dev) = (
            format!("{p}pod0"),
            format!("{p}cdns0"),
            format!("{p}up0"),
            format!("{p}nld0"),
        );
        let eth = "eth0";

        let pod_ip = Ipv4Addr::new(10, 244, 0, 10);
        let pod_gw = Ipv4Addr::new(10, 244, 0, 1);
        let pod_ip6: Ipv6Addr = "fd00:244::10".parse()?;
        let pod_gw6: Ipv6Addr = "fd00:244::1".parse()?;
        let (cdns_ip, cdns_gw, cdns_ip6, cdns_gw6): (Ipv4Addr, Ipv4Addr, Ipv6Addr, Ipv6Addr) =
            if options.bridge {
                (
                    Ipv4Addr::new(10, 244, 0, 20),
                    pod_gw,
                    "fd00:244::20".parse()?,
                    pod_gw6,
                )
            } else {
                (
                    Ipv4Addr::new(10, 244, 1, 10),
                    Ipv4Addr::new(10, 244, 1, 1),
                    "fd00:244:1::10".parse()?,
                    "fd00:244:1::1".parse()?,
                )
            };
        let node_ip = Ipv4Addr::new(198, 51, 100, 10);
        let upstream_gw = Ipv4Addr::new(198, 51, 100, 1);
        let nodelocal_ip = Ipv4Addr::new(169, 254, 25, 10);
        let cluster_ip = Ipv4Addr::new(10, 96, 0, 10);
        let resolver_ip = Ipv4Addr::new(203, 0, 113, 53);

        // Links and addresses.
        let bridge = options.bridge.then(|| format!("{p}br0"));
        let (pod_gw_cidr, pod_gw6_cidr) = (format!("{pod_gw}/24"), format!("{pod_gw6}/64"));
        let (cdns_gw_cidr, cdns_gw6_cidr) = (format!("{cdns_gw}/24"), format!("{cdns_gw6}/64"));
        // Bridged, the gateway addresses sit on the bridge: the veths are bare ports.
        let (pod_side, cdns_side): (Vec<&str>, Vec<&str>) = if options.bridge {
            (Vec::new(), Vec::new())
        } else {
            (
                vec![&pod_gw_cidr, &pod_gw6_cidr],
                vec![&cdns_gw_cidr, &cdns_gw6_cidr],
            )
        };
        lab.add_veth(
            &VethEnd {
                ns: &node_ns,
                name: &pod_veth,
                addrs: &pod_side,
            },
            &VethEnd {
                ns: &pod_ns,
                name: eth,
                addrs: &[&format!("{pod_ip}/24"), &format!("{pod_ip6}/64")],
            },
        )?;
        lab.add_route(&pod_ns, &format!("default via {pod_gw}"))?;
        lab.add_route(&pod_ns, &format!("default via {pod_gw6}"))?;
        lab.add_veth(
            &VethEnd {
                ns: &node_ns,
                name: &cdns_veth,
                addrs: &cdns_side,
            },
            &VethEnd {
                ns: &cdns_ns,
                name: eth,
                addrs: &[&format!("{cdns_ip}/24"), &format!("{cdns_ip6}/64")],
            },
        )?;
        lab.add_route(&cdns_ns, &format!("default via {cdns_gw}"))?;
        lab.add_route(&cdns_ns, &format!("default via {cdns_gw6}"))?;
        if let Some(br) = &bridge {
            lab.ip(&node_ns, &["link", "add", br, "type", "bridge"])?;
            lab.add_addr(&node_ns, br, &pod_gw_cidr)?;
            lab.add_addr(&node_ns, br, &pod_gw6_cidr)?;
            for port in [&pod_veth, &cdns_veth] {
                lab.ip(&node_ns, &["link", "set", port, "master", br])?;
            }
            lab.ip(&node_ns, &["link", "set", br, "up"])?;
        }
        lab.add_veth(
            &VethEnd {
                ns: &node_ns,
                name: &uplink,
                addrs: &[&format!("{node_ip}/24")],
            },
            &VethEnd {
                ns: &up_ns,
                name: eth,
                addrs: &[&format!("{upstream_gw}/24")],
            },
        )?;
        lab.add_route(&node_ns, &format!("default via {upstream_gw}"))?;
        lab.add_addr(&up_ns, "lo", &format!("{resolver_ip}/32"))?;
        lab.add_ifb(&node_ns, &nodelocal_dev, &[&format!("{nodelocal_ip}/32")])?;

        // Routing and kube-proxy-style NAT on the node.
        lab.sysctl(&node_ns, "net.ipv4.ip_forward", "1")?;
        lab.sysctl(&node_ns, "net.ipv6.conf.all.forwarding", "1")?;
        for chain in ["PREROUTING", "OUTPUT"] {
            for proto in ["udp", "tcp"] {
                lab.iptables(
                    &node_ns,
                    &format!(
                        "-t nat -A {chain} -d {cluster_ip}/32 -p {proto} --dport 53 \
                         -j DNAT --to-destination {cdns_ip}:53"
                    ),
                )?;
            }
        }
        lab.iptables(
            &node_ns,
            &format!("-t nat -A POSTROUTING -o {uplink} -j MASQUERADE"),
        )?;

        // Servers, upstream first: a forwarder that meets a dead upstream backs off.
        let upstream = lab.start_named(
            &up_ns,
            "upstream-named",
            &[IpAddr::V4(resolver_ip)],
            &[example_zone()],
        )?;
        let coredns = lab.start_unbound(
            &cdns_ns,
            "coredns-unbound",
            &[IpAddr::V4(cdns_ip)],
            &[IpAddr::V4(resolver_ip)],
            "",
        )?;
        let nodelocal = lab.start_dnsmasq(
            &node_ns,
            "nodelocaldns-dnsmasq",
            &[IpAddr::V4(nodelocal_ip)],
            &[&format!("--server={cluster_ip}")],
        )?;

        let node = Node {
            lab,
            node_ns,
            pod_ns,
            cdns_ns,
            up_ns,
            pod_veth,
            cdns_veth,
            uplink,
            nodelocal_dev,
            pod_eth: eth.to_owned(),
            bridge,
            pod_ip,
            pod_ip6,
            pod_gw,
            pod_gw6,
            cdns_ip,
            cdns_ip6,
            cdns_gw,
            node_ip,
            upstream_gw,
            nodelocal_ip,
            cluster_ip,
            resolver_ip,
            zone: ZONE.to_owned(),
            www_name: format!("www.{ZONE}"),
            www_a: WWW_A,
            www_aaaa: WWW_AAAA,
            big_name: format!("big.{ZONE}"),
            nx_name: format!("nx.{ZONE}"),
            nodelocal,
            coredns,
            upstream,
        };
        node.check_end_to_end()?;
        Ok(node)
    }

    fn check_end_to_end(&self) -> Result<()> {
        let started = Instant::now();
        let answers =
            self.query_short(&self.pod_ns, self.nodelocal_ip, &self.www_name, "A", &[])?;
        if answers != [self.www_a.to_string()] {
            bail!(
                "node built but pod → node-local-dns → CoreDNS → upstream does not work: \
                 got {answers:?} after {:?}; logs:\n{}\n{}\n{}",
                started.elapsed(),
                self.lab.log_tail(&self.nodelocal, 10),
                self.lab.log_tail(&self.coredns, 10),
                self.lab.log_tail(&self.upstream, 10),
            );
        }
        Ok(())
    }

    /// `dig +time=2 +tries=2 @server name qtype extra…` inside `ns`. `extra`
    /// comes last, so it can override the defaults (e.g. `+tcp`, `+tries=1`).
    pub fn query(
        &self,
        ns: &str,
        server: impl Display,
        name: &str,
        qtype: &str,
        extra: &[&str],
    ) -> Result<CmdOutput> {
        let at = format!("@{server}");
        let mut argv = vec!["dig", "+time=2", "+tries=2", &at, name, qtype];
        argv.extend_from_slice(extra);
        self.lab.exec(ns, &argv)
    }

    /// Like [`Node::query`] with kdig (`+timeout=2 +retry=1`).
    pub fn kquery(
        &self,
        ns: &str,
        server: impl Display,
        name: &str,
        qtype: &str,
        extra: &[&str],
    ) -> Result<CmdOutput> {
        let at = format!("@{server}");
        let mut argv = vec!["kdig", "+timeout=2", "+retry=1", &at, name, qtype];
        argv.extend_from_slice(extra);
        self.lab.exec(ns, &argv)
    }

    /// `dig +short`: the answer lines; fails if dig got no reply.
    pub fn query_short(
        &self,
        ns: &str,
        server: impl Display,
        name: &str,
        qtype: &str,
        extra: &[&str],
    ) -> Result<Vec<String>> {
        let mut args = vec!["+short"];
        args.extend_from_slice(extra);
        let out = self.query(ns, &server, name, qtype, &args)?;
        if !out.success() {
            return Err(anyhow::anyhow!(
                "{}{}",
                out.stdout.trim(),
                out.stderr.trim()
            ))
            .with_context(|| {
                format!(
                    "dig @{server} {name} {qtype} in {ns} failed ({})",
                    out.status
                )
            });
        }
        Ok(out.stdout.lines().map(str::to_owned).collect())
    }
}

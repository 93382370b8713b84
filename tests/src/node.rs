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
//! Every record has TTL 0 and no forwarder caches it, so each query walks
//! every hop. That is [`NodeOptions::default`]; the options vary what real
//! nodes vary:
//!
//! - [`NodeOptions::nodelocal`], [`NodeOptions::coredns`]: the [`Server`] in
//!   each forwarder role (dnsmasq, unbound, BIND `named`, Knot Resolver
//!   `kresd`), each a plain forwarder.
//! - [`Route`]: a default route, only specific routes to the upstreams
//!   (`203.0.113.0/24 via 198.51.100.1`), or the upstreams on a management
//!   network behind a second uplink while the default route leads out of the
//!   first.
//! - [`Layout`]: routed pods, or the two pods share one Linux bridge in the
//!   node netns (kubenet's cbr0) with br_netfilter on or off, and the
//!   CoreDNS-role pod sits on the pod subnet:
//!
//! ```text
//!  <p>-pod  eth0 10.244.0.10 ── <p>pod0 ┐
//!                                        ├ <p>br0 10.244.0.1/24 (node netns)
//!  <p>-cdns eth0 10.244.0.20 ── <p>cdns0 ┘
//! ```
//! - [`Family`]: the DNS path over IPv4 or IPv6 (node-local-dns
//!   fd00:169:254:25::10, ClusterIP fd00:10:96::10 DNATed by ip6tables,
//!   upstream 2001:db8:203:113::53, MASQUERADE to 2001:db8:51:100::10).
//! - [`NodeOptions::own_names`]: names of the node's own
//!   (`www.<p>.example.test`), for labs that run beside others.

use std::{
    fmt::Display,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::{
    lab::{CmdOutput, Lab, Proc, VethEnd},
    servers::{Server, Zone},
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

/// [`example_zone`] plus, for `own` = Some(label), the same `www` and `big`
/// records under `<label>.example.test`.
fn zone_with(own: Option<&str>) -> Zone {
    let mut zone = example_zone();
    if let Some(own) = own {
        let mut extra = format!("www.{own} IN A {WWW_A}\nwww.{own} IN AAAA {WWW_AAAA}\n");
        for line in zone.text.lines().filter(|l| l.starts_with("big ")) {
            extra.push_str(&format!("big.{own}{}\n", &line[3..]));
        }
        zone.text.push_str(&extra);
    }
    zone
}

/// How the node reaches its upstreams ([`NodeOptions::route`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Route {
    /// `default via 198.51.100.1` (and `default via 2001:db8:51:100::1`).
    #[default]
    Default,
    /// No default route: only `203.0.113.0/24 via 198.51.100.1` (and
    /// `2001:db8:203:113::/64 via 2001:db8:51:100::1`), as on a node that
    /// reaches its DNS upstreams through a specific route (policy routing,
    /// several uplinks, a management network), plus the service range
    /// `10.96.0.0/12` (`fd00:10:96::/64`) on the node-local device, so that
    /// the node's own queries to the ClusterIP can be routed before DNAT.
    Specific,
    /// The upstreams sit on a management network behind a second uplink
    /// `<p>mgt0` (10.250.0.10/24, fd00:250::10/64; MASQUERADE too), reached by
    /// `203.0.113.0/24 via 10.250.0.1` (`2001:db8:203:113::/64 via
    /// fd00:250::1`), while the default route still leads out of `<p>up0`.
    Management,
}

impl Route {
    pub fn name(self) -> &'static str {
        match self {
            Route::Default => "default",
            Route::Specific => "specific",
            Route::Management => "mgmt",
        }
    }
}

/// How the pods are wired to the node ([`NodeOptions::layout`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Layout {
    /// A routed veth per pod, each pod on its own /24 (Calico/Cilium style).
    #[default]
    Routed,
    /// kubenet/cbr0 style: the pod and the CoreDNS-role pod are ports of one
    /// Linux bridge `<p>br0` (10.244.0.1/24, fd00:244::1/64) in the node
    /// netns, the CoreDNS-role pod is 10.244.0.20 (fd00:244::20) on the pod
    /// subnet, and br_netfilter is on (`net.bridge.bridge-nf-call-iptables`
    /// and `…-ip6tables` = 1, as kubenet requires): bridged replies are
    /// still un-DNATed.
    Bridged,
    /// Like [`Layout::Bridged`] with `bridge-nf-call-iptables` and
    /// `…-ip6tables` = 0: the reply from the CoreDNS-role pod to a pod is
    /// switched, never meets conntrack, and keeps the pod address as its
    /// source (FAILURE-MODES.md 5).
    BridgedNoBrNetfilter,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Routed => "routed",
            Layout::Bridged => "bridged",
            Layout::BridgedNoBrNetfilter => "bridged-no-brnf",
        }
    }

    pub fn is_bridged(self) -> bool {
        self != Layout::Routed
    }
}

/// The address family of the DNS path ([`NodeOptions::family`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Family {
    #[default]
    V4,
    /// node-local-dns on fd00:169:254:25::10, the ClusterIP fd00:10:96::10
    /// DNATed with ip6tables, upstreams on 2001:db8:203:113::/64, MASQUERADE
    /// to 2001:db8:51:100::10. The pods keep their IPv4 addresses too.
    V6,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// `v4` or `v6`, whichever is this family.
    pub fn pick(self, v4: Ipv4Addr, v6: Ipv6Addr) -> IpAddr {
        match self {
            Family::V4 => IpAddr::V4(v4),
            Family::V6 => IpAddr::V6(v6),
        }
    }
}

/// How to build a [`Node`]; `NodeOptions::default()` is what [`Node::new`]
/// builds: dnsmasq as node-local-dns, unbound in CoreDNS's role, a default
/// route, routed pods, IPv4, the shared names `www.example.test` etc.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeOptions {
    /// The server in node-local-dns's role (default dnsmasq).
    pub nodelocal: Server,
    /// The server in CoreDNS's role (default unbound).
    pub coredns: Server,
    pub route: Route,
    pub layout: Layout,
    pub family: Family,
    /// Names of this node's own under `<lab prefix>.example.test`
    /// (`www.<p>.example.test`, `big.<p>…`, `nx.<p>…`), so a tracer that sees
    /// every netns of the machine (the socket hop) can tell this lab's lookups
    /// from other labs' running at the same time. Default: `www.example.test`.
    pub own_names: bool,
}

impl Default for NodeOptions {
    fn default() -> NodeOptions {
        NodeOptions {
            nodelocal: Server::Dnsmasq,
            coredns: Server::Unbound,
            route: Route::default(),
            layout: Layout::default(),
            family: Family::default(),
            own_names: false,
        }
    }
}

impl NodeOptions {
    /// A bridged node ([`Layout::Bridged`]), everything else default.
    pub fn bridged() -> NodeOptions {
        NodeOptions {
            layout: Layout::Bridged,
            ..NodeOptions::default()
        }
    }
}

/// A node's DNS path on its own [`Lab`]; every name and address is a field.
pub struct Node {
    /// Owns everything below; dropping the node tears it all down.
    pub lab: Lab,
    /// What it was built with.
    pub options: NodeOptions,

    /// The node's host netns (node-local-dns, NAT, routing).
    pub node_ns: String,
    /// The client pod.
    pub pod_ns: String,
    /// The CoreDNS-role pod.
    pub cdns_ns: String,
    /// Upstream network and resolver (BIND).
    pub up_ns: String,

    /// Node-side veth of the client pod (`<p>pod0`).
    pub pod_veth: String,
    /// Node-side veth of the CoreDNS pod (`<p>cdns0`).
    pub cdns_veth: String,
    /// Node-side uplink veth (`<p>up0`), the default route's.
    pub uplink: String,
    /// The management uplink (`<p>mgt0`) with [`Route::Management`]: the
    /// upstreams are reached through it.
    pub mgmt: Option<String>,
    /// The node's address on `mgmt` (10.250.0.10, fd00:250::10).
    pub mgmt_ip: Ipv4Addr,
    pub mgmt_ip6: Ipv6Addr,
    /// The ifb device holding the node-local-dns address (`<p>nld0`).
    pub nodelocal_dev: String,
    /// Interface name inside the pod, the CoreDNS pod and the upstream netns.
    pub pod_eth: String,
    /// The Linux bridge (`<p>br0`) that `pod_veth` and `cdns_veth` are ports
    /// of, when built with a bridged [`Layout`].
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
    /// The same, IPv6 (on the uplink only with [`Family::V6`]).
    pub node_ip6: Ipv6Addr,
    /// The upstream router, the node's gateway.
    pub upstream_gw: Ipv4Addr,
    pub upstream_gw6: Ipv6Addr,
    /// node-local-dns (169.254.25.10).
    pub nodelocal_ip: Ipv4Addr,
    /// node-local-dns over IPv6 (fd00:169:254:25::10; with [`Family::V6`]).
    pub nodelocal_ip6: Ipv6Addr,
    /// kube-dns ClusterIP (10.96.0.10), DNATed to `cdns_ip`.
    pub cluster_ip: Ipv4Addr,
    /// kube-dns ClusterIP over IPv6 (fd00:10:96::10), DNATed to `cdns_ip6`.
    pub cluster_ip6: Ipv6Addr,
    /// The upstream resolver (203.0.113.53), BIND authoritative for `zone`.
    pub resolver_ip: Ipv4Addr,
    /// The same over IPv6 (2001:db8:203:113::53; with [`Family::V6`]).
    pub resolver_ip6: Ipv6Addr,

    pub zone: String,
    /// `www.example.test` (or `www.<p>.example.test`, see
    /// [`NodeOptions::own_names`]): A `www_a`, AAAA `www_aaaa`.
    pub www_name: String,
    pub www_a: Ipv4Addr,
    pub www_aaaa: Ipv6Addr,
    /// `big.example.test`: TXT answer over 1232 bytes (TC=1 over UDP).
    pub big_name: String,
    /// `nx.example.test`: NXDOMAIN.
    pub nx_name: String,

    /// node-local-dns (`options.nodelocal`) in `node_ns` on the node-local
    /// address, forwarding to the ClusterIP.
    pub nodelocal: Proc,
    /// CoreDNS's role (`options.coredns`) in `cdns_ns` on the pod address,
    /// forwarding to the resolver.
    pub coredns: Proc,
    /// BIND in `up_ns` on the resolver address.
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
        if options.family == Family::V6 {
            // Addresses usable at once: no duplicate address detection on the
            // links' own (link-local) addresses either, which would hold the
            // first neighbour discovery back for a second.
            for ns in [&node_ns, &pod_ns, &cdns_ns, &up_ns] {
                for key in [
                    "net.ipv6.conf.all.accept_dad",
                    "net.ipv6.conf.default.accept_dad",
                ] {
                    lab.sysctl(ns, key, "0")?;
                }
            }
        }
        let (pod_veth, cdns_veth, uplink, nodelocal_dev) = (
            format!("{p}pod0"),
            format!("{p}cdns0"),
            format!("{p}up0"),
            format!("{p}nld0"),
        );
        let eth = "eth0";
        let bridged = options.layout.is_bridged();
        let v6 = options.family == Family::V6;

        let pod_ip = Ipv4Addr::new(10, 244, 0, 10);
        let pod_gw = Ipv4Addr::new(10, 244, 0, 1);
        let pod_ip6: Ipv6Addr = "fd00:244::10".parse()?;
        let pod_gw6: Ipv6Addr = "fd00:244::1".parse()?;
        let (cdns_ip, cdns_gw, cdns_ip6, cdns_gw6): (Ipv4Addr, Ipv4Addr, Ipv6Addr, Ipv6Addr) =
            if bridged {
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
        let node_ip6: Ipv6Addr = "2001:db8:51:100::10".parse()?;
        let upstream_gw6: Ipv6Addr = "2001:db8:51:100::1".parse()?;
        let nodelocal_ip = Ipv4Addr::new(169, 254, 25, 10);
        let nodelocal_ip6: Ipv6Addr = "fd00:169:254:25::10".parse()?;
        let cluster_ip = Ipv4Addr::new(10, 96, 0, 10);
        let cluster_ip6: Ipv6Addr = "fd00:10:96::10".parse()?;
        let resolver_ip = Ipv4Addr::new(203, 0, 113, 53);
        let resolver_ip6: Ipv6Addr = "2001:db8:203:113::53".parse()?;

        // Links and addresses.
        let bridge = bridged.then(|| format!("{p}br0"));
        let (pod_gw_cidr, pod_gw6_cidr) = (format!("{pod_gw}/24"), format!("{pod_gw6}/64"));
        let (cdns_gw_cidr, cdns_gw6_cidr) = (format!("{cdns_gw}/24"), format!("{cdns_gw6}/64"));
        // Bridged, the gateway addresses sit on the bridge: the veths are bare ports.
        let (pod_side, cdns_side): (Vec<&str>, Vec<&str>) = if bridged {
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
            let call = if options.layout == Layout::Bridged {
                "1"
            } else {
                "0"
            };
            for key in [
                "net.bridge.bridge-nf-call-iptables",
                "net.bridge.bridge-nf-call-ip6tables",
            ] {
                lab.sysctl(&node_ns, key, call).with_context(|| {
                    format!("{key} (is br_netfilter loaded? `modprobe br_netfilter`)")
                })?;
            }
        }
        let mut up_addrs = vec![format!("{node_ip}/24")];
        let mut gw_addrs = vec![format!("{upstream_gw}/24")];
        if v6 {
            up_addrs.push(format!("{node_ip6}/64"));
            gw_addrs.push(format!("{upstream_gw6}/64"));
        }
        lab.add_veth(
            &VethEnd {
                ns: &node_ns,
                name: &uplink,
                addrs: &up_addrs.iter().map(String::as_str).collect::<Vec<_>>(),
            },
            &VethEnd {
                ns: &up_ns,
                name: eth,
                addrs: &gw_addrs.iter().map(String::as_str).collect::<Vec<_>>(),
            },
        )?;
        let (upstreams4, upstreams6) = ("203.0.113.0/24", "2001:db8:203:113::/64");
        let mgmt_ip = Ipv4Addr::new(10, 250, 0, 10);
        let mgmt_ip6: Ipv6Addr = "fd00:250::10".parse()?;
        let mgmt = (options.route == Route::Management).then(|| format!("{p}mgt0"));
        let mut routes4 = Vec::new();
        let mut routes6 = Vec::new();
        match options.route {
            Route::Default => {
                routes4.push(format!("default via {upstream_gw}"));
                routes6.push(format!("default via {upstream_gw6}"));
            }
            Route::Specific => {
                routes4.push(format!("{upstreams4} via {upstream_gw}"));
                routes6.push(format!("{upstreams6} via {upstream_gw6}"));
            }
            Route::Management => {
                let (gw, gw6): (Ipv4Addr, Ipv6Addr) =
                    (Ipv4Addr::new(10, 250, 0, 1), "fd00:250::1".parse()?);
                let mut node_side = vec![format!("{mgmt_ip}/24")];
                let mut far_side = vec![format!("{gw}/24")];
                if v6 {
                    node_side.push(format!("{mgmt_ip6}/64"));
                    far_side.push(format!("{gw6}/64"));
                }
                lab.add_veth(
                    &VethEnd {
                        ns: &node_ns,
                        name: mgmt.as_deref().unwrap_or_default(),
                        addrs: &node_side.iter().map(String::as_str).collect::<Vec<_>>(),
                    },
                    &VethEnd {
                        ns: &up_ns,
                        name: "eth1",
                        addrs: &far_side.iter().map(String::as_str).collect::<Vec<_>>(),
                    },
                )?;
                routes4.push(format!("default via {upstream_gw}"));
                routes4.push(format!("{upstreams4} via {gw}"));
                routes6.push(format!("default via {upstream_gw6}"));
                routes6.push(format!("{upstreams6} via {gw6}"));
            }
        }
        for route in &routes4 {
            lab.add_route(&node_ns, route)?;
        }
        lab.add_addr(&up_ns, "lo", &format!("{resolver_ip}/32"))?;
        if v6 {
            for route in &routes6 {
                lab.add_route(&node_ns, route)?;
            }
            lab.add_addr(&up_ns, "lo", &format!("{resolver_ip6}/128"))?;
        }
        let mut nodelocal_addrs = vec![format!("{nodelocal_ip}/32")];
        if v6 {
            nodelocal_addrs.push(format!("{nodelocal_ip6}/128"));
        }
        lab.add_ifb(
            &node_ns,
            &nodelocal_dev,
            &nodelocal_addrs
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )?;
        if options.route == Route::Specific {
            // The node's own queries to a ClusterIP are routed before the
            // OUTPUT DNAT: without a default route they need a route to the
            // service range, as kube-proxy's IPVS mode adds on kube-ipvs0.
            lab.add_route(&node_ns, &format!("10.96.0.0/12 dev {nodelocal_dev}"))?;
            if v6 {
                lab.add_route(&node_ns, &format!("fd00:10:96::/64 dev {nodelocal_dev}"))?;
            }
        }

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
                if v6 {
                    lab.ip6tables(
                        &node_ns,
                        &format!(
                            "-t nat -A {chain} -d {cluster_ip6}/128 -p {proto} --dport 53 \
                             -j DNAT --to-destination [{cdns_ip6}]:53"
                        ),
                    )?;
                }
            }
        }
        for out in std::iter::once(&uplink).chain(&mgmt) {
            let rule = format!("-t nat -A POSTROUTING -o {out} -j MASQUERADE");
            lab.iptables(&node_ns, &rule)?;
            if v6 {
                lab.ip6tables(&node_ns, &rule)?;
            }
        }

        let fam = options.family;
        let names = if options.own_names {
            format!("{p}.{ZONE}")
        } else {
            ZONE.to_owned()
        };
        // Servers, upstream first: a forwarder that meets a dead upstream backs off.
        let own = options.own_names.then_some(p.as_str());
        let upstream = lab.start_named(
            &up_ns,
            "upstream-named",
            &[fam.pick(resolver_ip, resolver_ip6)],
            &[zone_with(own)],
        )?;
        let coredns = lab.start_forwarder(
            options.coredns,
            &cdns_ns,
            &format!("coredns-{}", options.coredns),
            &[fam.pick(cdns_ip, cdns_ip6)],
            &[fam.pick(resolver_ip, resolver_ip6)],
            "",
        )?;
        let nodelocal = lab.start_forwarder(
            options.nodelocal,
            &node_ns,
            &format!("nodelocaldns-{}", options.nodelocal),
            &[fam.pick(nodelocal_ip, nodelocal_ip6)],
            &[fam.pick(cluster_ip, cluster_ip6)],
            "",
        )?;

        let node = Node {
            lab,
            options,
            node_ns,
            pod_ns,
            cdns_ns,
            up_ns,
            pod_veth,
            cdns_veth,
            uplink,
            mgmt,
            mgmt_ip,
            mgmt_ip6,
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
            node_ip6,
            upstream_gw,
            upstream_gw6,
            nodelocal_ip,
            nodelocal_ip6,
            cluster_ip,
            cluster_ip6,
            resolver_ip,
            resolver_ip6,
            zone: ZONE.to_owned(),
            www_name: format!("www.{names}"),
            www_a: WWW_A,
            www_aaaa: WWW_AAAA,
            big_name: format!("big.{names}"),
            nx_name: format!("nx.{names}"),
            nodelocal,
            coredns,
            upstream,
        };
        node.check_end_to_end()?;
        Ok(node)
    }

    /// The zone the upstream BIND serves: [`example_zone`], plus this node's
    /// own `www` and `big` records when built with [`NodeOptions::own_names`].
    pub fn zone_file(&self) -> Zone {
        zone_with(self.options.own_names.then_some(self.lab.prefix()))
    }

    /// Starts [`NodeOptions::coredns`] in the CoreDNS-role pod on its
    /// address of the node's family, forwarding to `forward_to` (see
    /// [`Lab::start_forwarder`] for `extra`), under a new name each time.
    pub fn start_coredns(&self, forward_to: &[IpAddr], extra: &str) -> Result<Proc> {
        let server = self.options.coredns;
        self.lab.start_forwarder(
            server,
            &self.cdns_ns,
            &self.fresh_name(&format!("coredns-{server}")),
            &[self.cdns()],
            forward_to,
            extra,
        )
    }

    /// Starts [`NodeOptions::nodelocal`] in the node netns on the node-local
    /// address of the node's family, forwarding to `forward_to`.
    pub fn start_nodelocal(&self, forward_to: &[IpAddr], extra: &str) -> Result<Proc> {
        let server = self.options.nodelocal;
        self.lab.start_forwarder(
            server,
            &self.node_ns,
            &self.fresh_name(&format!("nodelocaldns-{server}")),
            &[self.nodelocal()],
            forward_to,
            extra,
        )
    }

    /// `base`, or `base-2`, `base-3`… if the lab already has files by that name.
    fn fresh_name(&self, base: &str) -> String {
        let taken = |n: &str| self.lab.dir().join(format!("{n}.log")).exists();
        if !taken(base) {
            return base.to_owned();
        }
        (2..)
            .map(|i| format!("{base}-{i}"))
            .find(|n| !taken(n))
            .unwrap_or_default()
    }

    /// The client pod's address of the node's family.
    pub fn pod(&self) -> IpAddr {
        self.options.family.pick(self.pod_ip, self.pod_ip6)
    }

    /// The CoreDNS-role pod's address of the node's family.
    pub fn cdns(&self) -> IpAddr {
        self.options.family.pick(self.cdns_ip, self.cdns_ip6)
    }

    /// node-local-dns's address of the node's family.
    pub fn nodelocal(&self) -> IpAddr {
        self.options
            .family
            .pick(self.nodelocal_ip, self.nodelocal_ip6)
    }

    /// The ClusterIP of the node's family.
    pub fn cluster(&self) -> IpAddr {
        self.options.family.pick(self.cluster_ip, self.cluster_ip6)
    }

    /// The upstream resolver of the node's family.
    pub fn resolver(&self) -> IpAddr {
        self.options
            .family
            .pick(self.resolver_ip, self.resolver_ip6)
    }

    /// The node's address of the node's family that its queries to the
    /// upstreams are masqueraded to: on the uplink, or on the management uplink.
    pub fn node_addr(&self) -> IpAddr {
        match self.mgmt {
            Some(_) => self.options.family.pick(self.mgmt_ip, self.mgmt_ip6),
            None => self.options.family.pick(self.node_ip, self.node_ip6),
        }
    }

    /// The interface the queries to the upstreams leave by: the management
    /// uplink if there is one, else the uplink.
    pub fn upstream_link(&self) -> &str {
        self.mgmt.as_deref().unwrap_or(&self.uplink)
    }

    /// The address family of the DNS path.
    pub fn family(&self) -> Family {
        self.options.family
    }

    fn check_end_to_end(&self) -> Result<()> {
        let started = Instant::now();
        let answers = self.query_short(&self.pod_ns, self.nodelocal(), &self.www_name, "A", &[])?;
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

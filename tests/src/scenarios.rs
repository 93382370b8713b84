//! Real reproductions of the failure modes of shared FAILURE-MODES.md on a
//! lab [`Node`]: real servers misconfigured the way the incidents were, and
//! real clients in the pod that see the symptom.
//!
//! ```no_run
//! # use dnstrace_tests::Scenario;
//! # fn main() -> anyhow::Result<()> {
//! let scenario: Scenario = "upstream-rejects-edns".parse()?;
//! let node = scenario.build("demo")?; // Node::with_options + Scenario::apply
//! let seen = scenario.run_client(&node)?; // what the pod saw, lookup by lookup
//! for e in scenario.expect(&node) {
//!     // dnstrace must write a lookup with e.verdict, e.culprit, e.last_hop
//! }
//! # Ok(()) }
//! ```
//!
//! | scenario | what is broken | the pod sees | dnstrace verdict |
//! | --- | --- | --- | --- |
//! | `upstream-rejects-edns` | upstream 203.0.113.53 is an old router's DNS proxy: FORMERR to any query with OPT | NOERROR (unbound retries without EDNS) | `upstream_rejects_edns` |
//! | `upstream-disagreement` | CoreDNS-role unbound forwards randomly to BIND (serves example.test) and a "public resolver" (NXDOMAIN for it) | NOERROR and NXDOMAIN, at random | `upstream_disagreement` |
//! | `loopback-nameserver` | the pod queries 127.0.0.53 (systemd-resolved's stub), where nothing listens | connection refused | `loopback_nameserver` |
//! | `forwarding-loop` | CoreDNS forwards to node-local-dns, which forwards to the CoreDNS ClusterIP | REFUSED after ~300 forwarded copies (~50 ms) | `forwarding_loop` |
//! | `reply-from-unexpected-source` | bridged node (cbr0) with bridge-nf-call-iptables=0: DNAT not reversed | kdig: unexpected reply source; dig times out | `reply_from_unexpected_source` |
//! | `left-via-uplink` | 169.254.25.10 is not a local address any more: masqueraded out of the uplink | timeout | `left_via_uplink` |
//! | `truncated-no-tcp` | big answer (TC=1) and a client that does not retry over TCP | NOERROR with the tc flag, no answer | `truncated_no_tcp` |
//! | `dropped` | an iptables rule on the node drops pod → CoreDNS UDP/53 | timeout | `dropped` |
//! | `healthy` | nothing | NOERROR via node-local-dns and the ClusterIP | `ok` |
//!
//! Everything a scenario adds stays inside the lab's namespaces and goes away
//! with the [`Lab`](crate::Lab).

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    str::FromStr,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{
    dig::DigReply,
    lab::{CmdOutput, Signal},
    node::{Family, Layout, Node, NodeOptions},
    servers::{Server, Zone},
};

/// Name (and log `<lab dir>/old-router.log`) of the EDNS-rejecting DNS proxy
/// of [`Scenario::UpstreamRejectsEdns`]. Its log has one line per query:
/// `FORMERR to <addr> id=<id> <qname> <qtype>: query had OPT (udp=N, DO=d)` or
/// `answered <addr> id=<id> <qname> <qtype> without OPT: <RCODE>`.
pub const OLD_ROUTER: &str = "old-router";
/// The resolver behind the old router (BIND with `example.test`).
pub const ISP_RESOLVER_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 153);
/// [`ISP_RESOLVER_IP`] on an IPv6 node.
pub const ISP_RESOLVER_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x203, 0x113, 0, 0, 0, 0x153);
/// The "public resolver" of [`Scenario::UpstreamDisagreement`]: BIND
/// authoritative for an empty `test.`, so NXDOMAIN for `example.test` names.
pub const PUBLIC_RESOLVER_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 54);
/// [`PUBLIC_RESOLVER_IP`] on an IPv6 node.
pub const PUBLIC_RESOLVER_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x203, 0x113, 0, 0, 0, 0x54);
/// systemd-resolved's stub address, as in a host resolv.conf copied into a pod.
pub const LOOPBACK_STUB_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 53);
/// Client lookups of [`Scenario::UpstreamDisagreement`]: at least this many…
pub const DISAGREEMENT_MIN_TRIES: usize = 6;
/// …and at most this many, until both NOERROR and NXDOMAIN were seen.
pub const DISAGREEMENT_MAX_TRIES: usize = 40;

const SHUTDOWN: Duration = Duration::from_secs(5);
const READY: Duration = Duration::from_secs(15);

/// One failure mode of FAILURE-MODES.md (numbered there 1 to 8), plus `Healthy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scenario {
    /// 1. Upstream rejects EDNS0.
    UpstreamRejectsEdns,
    /// 2. Random upstream: two upstreams disagree on an internal zone.
    UpstreamDisagreement,
    /// 3. Loopback nameserver in the pod.
    LoopbackNameserver,
    /// 4. Forwarding loop.
    ForwardingLoop,
    /// 5. Reply from an unexpected source (bridged node, DNAT not reversed).
    ReplyFromUnexpectedSource,
    /// 6. Masquerade / vanish: node-local-dns traffic leaves via the uplink.
    LeftViaUplink,
    /// 7. Truncation without a TCP retry.
    TruncatedNoTcp,
    /// 8. Dropped in the kernel (netfilter).
    Dropped,
    /// Nothing broken.
    Healthy,
}

impl Scenario {
    /// Every scenario, in FAILURE-MODES.md order, `Healthy` last.
    pub const ALL: [Scenario; 9] = [
        Scenario::UpstreamRejectsEdns,
        Scenario::UpstreamDisagreement,
        Scenario::LoopbackNameserver,
        Scenario::ForwardingLoop,
        Scenario::ReplyFromUnexpectedSource,
        Scenario::LeftViaUplink,
        Scenario::TruncatedNoTcp,
        Scenario::Dropped,
        Scenario::Healthy,
    ];

    /// Kebab-case name, as in `cargo xtask demo --scenario NAME`.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::UpstreamRejectsEdns => "upstream-rejects-edns",
            Scenario::UpstreamDisagreement => "upstream-disagreement",
            Scenario::LoopbackNameserver => "loopback-nameserver",
            Scenario::ForwardingLoop => "forwarding-loop",
            Scenario::ReplyFromUnexpectedSource => "reply-from-unexpected-source",
            Scenario::LeftViaUplink => "left-via-uplink",
            Scenario::TruncatedNoTcp => "truncated-no-tcp",
            Scenario::Dropped => "dropped",
            Scenario::Healthy => "healthy",
        }
    }

    /// The scenario named `name` (see [`Scenario::name`]).
    pub fn from_name(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The verdict dnstrace must give the client's lookup (JSON `verdict`).
    pub fn verdict(self) -> &'static str {
        match self {
            Scenario::UpstreamRejectsEdns => "upstream_rejects_edns",
            Scenario::UpstreamDisagreement => "upstream_disagreement",
            Scenario::LoopbackNameserver => "loopback_nameserver",
            Scenario::ForwardingLoop => "forwarding_loop",
            Scenario::ReplyFromUnexpectedSource => "reply_from_unexpected_source",
            Scenario::LeftViaUplink => "left_via_uplink",
            Scenario::TruncatedNoTcp => "truncated_no_tcp",
            Scenario::Dropped => "dropped",
            Scenario::Healthy => "ok",
        }
    }

    /// What is broken, in one line.
    pub fn describe(self) -> &'static str {
        match self {
            Scenario::UpstreamRejectsEdns => {
                "the upstream 203.0.113.53 is an old router's DNS proxy that answers FORMERR to any query with an EDNS0 OPT record"
            }
            Scenario::UpstreamDisagreement => {
                "CoreDNS forwards at random to BIND 203.0.113.53 (serves example.test) and a public resolver 203.0.113.54 (NXDOMAIN for it)"
            }
            Scenario::LoopbackNameserver => {
                "the pod's resolv.conf was copied from a systemd-resolved host: it queries 127.0.0.53, where nothing listens in the pod"
            }
            Scenario::ForwardingLoop => {
                "CoreDNS forwards to node-local-dns 169.254.25.10, which forwards back to the CoreDNS ClusterIP 10.96.0.10"
            }
            Scenario::ReplyFromUnexpectedSource => {
                "bridged node (cbr0) with bridge-nf-call-iptables=0: the ClusterIP DNAT is not reversed on the bridged reply"
            }
            Scenario::LeftViaUplink => {
                "169.254.25.10 is no longer a local address: pod queries to node-local-dns are masqueraded out of the uplink"
            }
            Scenario::TruncatedNoTcp => {
                "the answer is too big for UDP (TC=1) and the client does not retry over TCP"
            }
            Scenario::Dropped => {
                "an iptables rule on the node drops UDP port 53 from pods to the CoreDNS pod"
            }
            Scenario::Healthy => {
                "nothing is broken: lookups via node-local-dns and via the ClusterIP"
            }
        }
    }

    /// How to build the node this scenario needs by default:
    /// `reply-from-unexpected-source` needs a bridged node without
    /// br_netfilter, and `forwarding-loop` has dnsmasq in both forwarder
    /// roles (a storm); everything else is [`NodeOptions::default`]. Other
    /// options work too (see each reproduction).
    pub fn node_options(self) -> NodeOptions {
        match self {
            Scenario::ReplyFromUnexpectedSource => NodeOptions {
                layout: Layout::BridgedNoBrNetfilter,
                ..NodeOptions::default()
            },
            Scenario::ForwardingLoop => NodeOptions {
                coredns: Server::Dnsmasq,
                ..NodeOptions::default()
            },
            _ => NodeOptions::default(),
        }
    }

    /// Builds a node with `options` on `Lab::new(tag)` and applies the scenario.
    pub fn build_with(self, tag: &str, options: NodeOptions) -> Result<Node> {
        let mut node = Node::with_options(tag, options)
            .with_context(|| format!("building the node for {self} ({options:?})"))?;
        self.apply(&mut node)
            .with_context(|| format!("applying scenario {self}"))?;
        Ok(node)
    }

    /// Builds a node with [`Scenario::node_options`] on `Lab::new(tag)` and
    /// applies the scenario.
    pub fn build(self, tag: &str) -> Result<Node> {
        self.build_with(tag, self.node_options())
    }

    /// Turns a freshly built node into the reproduction (see each function).
    /// Servers it replaces are stopped and the node's `Proc` fields updated.
    pub fn apply(self, node: &mut Node) -> Result<()> {
        match self {
            Scenario::UpstreamRejectsEdns => upstream_rejects_edns(node),
            Scenario::UpstreamDisagreement => upstream_disagreement(node),
            Scenario::LoopbackNameserver => loopback_nameserver(node),
            Scenario::ForwardingLoop => forwarding_loop(node),
            Scenario::ReplyFromUnexpectedSource => reply_from_unexpected_source(node),
            Scenario::LeftViaUplink => left_via_uplink(node),
            Scenario::TruncatedNoTcp => truncated_no_tcp(node),
            Scenario::Dropped => dropped(node),
            Scenario::Healthy => Ok(()),
        }
    }

    /// The client command(s) [`Scenario::run_client`] runs in the pod, as a
    /// person would type them there.
    pub fn client_commands(self, node: &Node) -> Vec<Vec<String>> {
        let (cip, nl) = (node.cluster().to_string(), node.nodelocal().to_string());
        let www = node.www_name.as_str();
        // dig: two tries 2 s apart, unless said otherwise.
        let dig = |server: &str, extra: &[&str], name: &str, qtype: &str| -> Vec<String> {
            let mut argv = vec!["dig", "+time=2"];
            if !extra.iter().any(|e| e.starts_with("+tries=")) {
                argv.push("+tries=2");
            }
            argv.extend_from_slice(extra);
            let mut argv: Vec<String> = argv.into_iter().map(str::to_owned).collect();
            argv.extend([format!("@{server}"), name.to_owned(), qtype.to_owned()]);
            argv
        };
        match self {
            Scenario::UpstreamRejectsEdns | Scenario::ForwardingLoop | Scenario::Dropped => {
                vec![dig(&cip, &[], www, "A")]
            }
            // One try each: a lookup per upstream choice.
            Scenario::UpstreamDisagreement => vec![dig(&cip, &["+tries=1"], www, "A")],
            Scenario::LoopbackNameserver => {
                vec![dig(&loopback_stub(node).to_string(), &[], www, "A")]
            }
            // kdig reports the misaddressed reply; dig 9.18's connected
            // socket never sees it and just times out.
            Scenario::ReplyFromUnexpectedSource => vec![
                [
                    "kdig",
                    "+timeout=2",
                    "+retry=0",
                    &format!("@{cip}"),
                    www,
                    "A",
                ]
                .map(str::to_owned)
                .to_vec(),
            ],
            Scenario::LeftViaUplink => vec![dig(&nl, &[], www, "A")],
            Scenario::TruncatedNoTcp => vec![dig(&cip, &["+ignore"], &node.big_name, "TXT")],
            Scenario::Healthy => vec![dig(&nl, &[], www, "A"), dig(&cip, &[], www, "A")],
        }
    }

    /// Sends the client lookup(s) that show the failure from the pod and
    /// returns what the client saw, one entry per client process run.
    /// `upstream-disagreement` repeats its lookup (at least
    /// [`DISAGREEMENT_MIN_TRIES`], at most [`DISAGREEMENT_MAX_TRIES`] times)
    /// until it has seen both NOERROR and NXDOMAIN.
    pub fn run_client(self, node: &Node) -> Result<Vec<ClientLookup>> {
        let commands = self.client_commands(node);
        let mut seen = Vec::new();
        if self == Scenario::UpstreamDisagreement {
            for i in 0..DISAGREEMENT_MAX_TRIES {
                let run = ClientLookup::run(node, &commands[0])?;
                seen.push(run);
                let got = |rcode| seen.iter().any(|s| s.status() == Some(rcode));
                if i + 1 >= DISAGREEMENT_MIN_TRIES && got("NOERROR") && got("NXDOMAIN") {
                    break;
                }
                thread::sleep(Duration::from_millis(100));
            }
            return Ok(seen);
        }
        for argv in &commands {
            seen.push(ClientLookup::run(node, argv)?);
        }
        Ok(seen)
    }

    /// The lookups dnstrace must report for this scenario, with the verdict,
    /// culprit and last hop it must give them.
    pub fn expect(self, node: &Node) -> Vec<Expect> {
        let cip = SocketAddr::new(node.cluster(), 53);
        let nl = SocketAddr::new(node.nodelocal(), 53);
        let pod = node.pod();
        let www = crate::tracer::fqdn(&node.www_name);
        let base = |server: SocketAddr| Expect {
            verdict: self.verdict(),
            client: pod,
            server,
            qname: www.clone(),
            qtype: "A",
            every: true,
            culprit: None,
            last_hop: Vec::new(),
        };
        let with = |server, culprit: String, last_hop: &[&str]| Expect {
            culprit: Some(culprit),
            last_hop: last_hop.iter().map(|h| (*h).to_owned()).collect(),
            ..base(server)
        };
        let up_in = format!("{} ingress", node.upstream_link());
        match self {
            // The forwarded query with OPT (udp=1232, DO=1) got FORMERR from
            // the old router; the client got NOERROR after unbound's retry
            // without OPT. Last hop: where the FORMERR was seen.
            Scenario::UpstreamRejectsEdns => vec![with(
                cip,
                SocketAddr::new(node.resolver(), 53).to_string(),
                &[&up_in, "socket-out"],
            )],
            // Only the public resolver fails. Lookups answered before both
            // answers were seen are plain `ok`, hence `every: false`.
            Scenario::UpstreamDisagreement => vec![Expect {
                every: false,
                ..with(
                    cip,
                    SocketAddr::new(public_resolver(node), 53).to_string(),
                    &[&up_in, "socket-out"],
                )
            }],
            // Never leaves the pod: last seen leaving the client's socket, or
            // dropped on the pod's loopback (NO_SOCKET: nothing listens).
            Scenario::LoopbackNameserver => vec![Expect {
                client: match node.family() {
                    Family::V4 => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    Family::V6 => IpAddr::V6(Ipv6Addr::LOCALHOST),
                },
                ..with(
                    SocketAddr::new(loopback_stub(node), 53),
                    SocketAddr::new(loopback_stub(node), 53).to_string(),
                    &["socket-out", "drop"],
                )
            }],
            // The question circulates between the CoreDNS pod (10.244.1.10)
            // and node-local-dns (169.254.25.10, which reaches CoreDNS as
            // 198.51.100.10 → ClusterIP → 10.244.1.10). The culprit is the
            // looping pair, "a <-> b:53"; either rendering names the CoreDNS
            // pod. Each forwarded copy ends delivered to a server's socket.
            Scenario::ForwardingLoop => {
                vec![with(cip, node.cdns().to_string(), &["socket-in"])]
            }
            // The reply leaves the bridge towards the pod with the CoreDNS
            // pod's address as its source.
            Scenario::ReplyFromUnexpectedSource => vec![with(
                cip,
                SocketAddr::new(node.cdns(), 53).to_string(),
                &[&format!("{} egress", node.pod_veth)],
            )],
            Scenario::LeftViaUplink => vec![with(
                nl,
                node.uplink.clone(),
                &[&format!("{} egress", node.uplink)],
            )],
            // No TCP retry at all: the client is to blame. Last hop: the TC=1
            // reply, last seen reaching the pod (its socket, or its veth).
            Scenario::TruncatedNoTcp => vec![Expect {
                qname: crate::tracer::fqdn(&node.big_name),
                qtype: "TXT",
                ..with(
                    cip,
                    node.pod().to_string(),
                    &["socket-in", &format!("{} egress", node.pod_veth)],
                )
            }],
            // Routed, dropped by the FORWARD rule while the packet still
            // belongs to the pod veth it came in on.
            // Bridged (br_netfilter), the FORWARD rule runs as the bridge
            // forwards the packet, on the port towards the CoreDNS pod.
            Scenario::Dropped => {
                let at = if node.bridge.is_some() {
                    &node.cdns_veth
                } else {
                    &node.pod_veth
                };
                vec![with(
                    cip,
                    format!("{at} (NETFILTER_DROP)"),
                    &[&format!("{at} drop")],
                )]
            }
            Scenario::Healthy => vec![base(nl), base(cip)],
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scenario {
    type Err = anyhow::Error;

    fn from_str(name: &str) -> Result<Scenario> {
        Scenario::from_name(name).with_context(|| {
            let names: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
            format!(
                "unknown scenario {name:?}; valid ones: {}",
                names.join(", ")
            )
        })
    }
}

/// A lookup dnstrace must report (one `{"type":"lookup"}` record) and what it must say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expect {
    /// The JSON `verdict`.
    pub verdict: &'static str,
    /// The client's address: the record's `client` is `"<client>:<port>"`.
    pub client: IpAddr,
    /// The server as the client addressed it: the record's `server`.
    pub server: SocketAddr,
    /// The record's `qname`, with its trailing dot.
    pub qname: String,
    /// The record's `qtype`.
    pub qtype: &'static str,
    /// Every lookup for this question must have `verdict` (false: at least one).
    pub every: bool,
    /// A substring of the record's `culprit` (an address `ip:port`, an
    /// interface name, `"<iface> (<DROP_REASON>)"` or `"<a> <-> <b>"`);
    /// `None`: no culprit (`ok`).
    pub culprit: Option<String>,
    /// Substrings of which the record's `last_hop` must contain at least one
    /// (`"<iface> <dir>"` with dir ingress, egress or drop, or
    /// `"socket-out"` / `"socket-in"`, which dnstrace follows with the netns);
    /// empty: not checked. There are two where the lab differs from a real
    /// node: the socket hop (cgroup_skb on the root cgroup) also sees the
    /// upstream servers' own sockets, because the "remote" upstream netns
    /// shares this kernel, so a reply is first seen leaving the upstream's
    /// socket (`socket-out`) rather than arriving on the uplink.
    pub last_hop: Vec<String>,
}

impl Expect {
    /// Whether the lookup record is about this client, server and question.
    pub fn is_for(&self, lookup: &Value) -> bool {
        lookup["type"] == "lookup"
            && lookup["qname"] == self.qname.as_str()
            && lookup["qtype"] == self.qtype
            && lookup["server"] == self.server.to_string()
            && lookup["client"]
                .as_str()
                .and_then(|c| c.parse::<SocketAddr>().ok())
                .is_some_and(|c| c.ip() == self.client)
    }

    /// Why `lookup` (a record this expectation [is for](Expect::is_for))
    /// does not say what it must, or `Ok`.
    pub fn check(&self, lookup: &Value) -> Result<()> {
        let field = |name: &str| lookup[name].as_str().unwrap_or("").to_owned();
        if lookup["verdict"] != self.verdict {
            bail!("verdict {} instead of {}", lookup["verdict"], self.verdict);
        }
        if let Some(want) = &self.culprit
            && !field("culprit").contains(want.as_str())
        {
            bail!("culprit {:?} does not contain {want:?}", field("culprit"));
        }
        let last_hop = field("last_hop");
        if !self.last_hop.is_empty() && !self.last_hop.iter().any(|h| last_hop.contains(h.as_str()))
        {
            bail!("last hop {last_hop:?} contains none of {:?}", self.last_hop);
        }
        Ok(())
    }

    /// Checks `lookups` (all records of a run) against this expectation:
    /// every (or at least one, see [`Expect::every`]) lookup for this
    /// question says what it must, and there is at least one.
    pub fn check_all<'v>(&self, lookups: impl IntoIterator<Item = &'v Value>) -> Result<()> {
        let mine: Vec<&Value> = lookups.into_iter().filter(|l| self.is_for(l)).collect();
        if mine.is_empty() {
            bail!(
                "no lookup {} → {} {} {}",
                self.client,
                self.server,
                self.qtype,
                self.qname
            );
        }
        let problems: Vec<String> = mine
            .iter()
            .filter_map(|l| self.check(l).err().map(|e| format!("{e}: {l}")))
            .collect();
        if (self.every && !problems.is_empty()) || problems.len() == mine.len() {
            bail!("{}", problems.join("\n"));
        }
        Ok(())
    }

    /// "expect verdict: X — culprit Y — last hop Z", for banners.
    pub fn banner(&self) -> String {
        let mut line = format!("expect verdict: {}", self.verdict);
        if let Some(c) = &self.culprit {
            line.push_str(&format!(" — culprit {c}"));
        }
        if !self.last_hop.is_empty() {
            line.push_str(&format!(" — last hop {}", self.last_hop.join(" or ")));
        }
        line
    }
}

/// What one client process in the pod saw.
#[derive(Clone, Debug)]
pub struct ClientLookup {
    /// The command line, as a person would type it in the pod.
    pub command: String,
    pub out: CmdOutput,
    pub elapsed: Duration,
    /// The last reply it printed, read from `out.stdout`.
    pub reply: DigReply,
}

impl ClientLookup {
    /// Runs `argv` in the pod's netns and times it.
    pub fn run(node: &Node, argv: &[String]) -> Result<ClientLookup> {
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let started = Instant::now();
        let out = node.lab.exec(&node.pod_ns, &argv)?;
        Ok(ClientLookup {
            command: argv.join(" "),
            reply: DigReply::parse(&out.stdout),
            out,
            elapsed: started.elapsed(),
        })
    }

    /// The rcode of the last reply the client printed (dig and kdig), e.g.
    /// "NOERROR", or `None` if it printed none.
    pub fn status(&self) -> Option<&str> {
        self.reply.status.as_deref()
    }

    /// The header flags of the last reply printed (dig `;; flags:`, kdig `;; Flags:`).
    pub fn flags(&self) -> Vec<&str> {
        self.reply.flags.iter().map(String::as_str).collect()
    }

    /// Both streams, for searching.
    pub fn text(&self) -> String {
        format!("{}{}", self.out.stdout, self.out.stderr)
    }

    /// The client gave up waiting for a reply (dig: "timed out", kdig:
    /// "response timeout").
    pub fn timed_out(&self) -> bool {
        let text = self.text();
        text.contains("timed out") || text.contains("response timeout")
    }

    /// The client's socket was refused (ICMP port unreachable).
    pub fn refused(&self) -> bool {
        self.text().contains("connection refused")
    }

    /// kdig's warning about a reply from another address than it queried.
    pub fn unexpected_source(&self) -> Option<String> {
        self.text()
            .lines()
            .find(|l| l.contains("unexpected reply source"))
            .map(|l| l.trim().to_owned())
    }

    /// One line for humans: the outcome and how long it took.
    pub fn summary(&self) -> String {
        let took = format!("{:.0} ms", self.elapsed.as_secs_f64() * 1e3);
        let mut line = match self.status() {
            Some(status) => {
                let flags = self.flags().join(" ");
                let answers = self
                    .out
                    .stdout
                    .lines()
                    .find_map(|l| {
                        l.split("ANSWER: ")
                            .nth(1)
                            .and_then(|r| r.split([',', ';']).next())
                    })
                    .unwrap_or("?")
                    .to_owned();
                format!("{status} (flags: {flags}; {answers} answer(s)) after {took}")
            }
            None if self.refused() => format!("no reply: connection refused, after {took}"),
            None if self.timed_out() => format!("no reply: timed out after {took}"),
            None => format!(
                "no reply (exit {:?}) after {took}: {}",
                self.out.code(),
                self.text().lines().last().unwrap_or("")
            ),
        };
        if let Some(warning) = self.unexpected_source() {
            line.push_str(&format!("; {warning}"));
        }
        line
    }
}

// ---- the reproductions ----

/// systemd-resolved's stub address of the node's family: 127.0.0.53, or
/// `::1` on an IPv6 node.
pub fn loopback_stub(node: &Node) -> IpAddr {
    node.family().pick(LOOPBACK_STUB_IP, Ipv6Addr::LOCALHOST)
}

/// [`PUBLIC_RESOLVER_IP`] or [`PUBLIC_RESOLVER_IP6`], by the node's family.
pub fn public_resolver(node: &Node) -> IpAddr {
    node.family().pick(PUBLIC_RESOLVER_IP, PUBLIC_RESOLVER_IP6)
}

/// [`ISP_RESOLVER_IP`] or [`ISP_RESOLVER_IP6`], by the node's family.
pub fn isp_resolver(node: &Node) -> IpAddr {
    node.family().pick(ISP_RESOLVER_IP, ISP_RESOLVER_IP6)
}

/// `/32` or `/128`.
fn host_cidr(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

/// Failure mode 1: the upstream 203.0.113.53 becomes an old home/enterprise
/// router's DNS proxy (a dnspython responder: no Debian server misbehaves
/// this way) that answers FORMERR, without OPT, to every query that carries
/// an OPT record, and relays OPT-less queries to the real resolver behind it
/// (BIND on [`ISP_RESOLVER_IP`], which takes over `example.test`). IPv6
/// nodes: the same on 2001:db8:203:113::53 and [`ISP_RESOLVER_IP6`].
///
/// The CoreDNS-role unbound forwards with EDNS (udp=1232, DO=1), gets
/// FORMERR, and retries at once without EDNS, which works: the pod sees
/// NOERROR. unbound then remembers the router as EDNS-less (infra cache,
/// 15 min), so only the first lookup after `apply` shows the FORMERR. BIND
/// and kresd in that role do the same; dnsmasq relays the client's OPT and
/// hands the FORMERR back.
pub fn upstream_rejects_edns(node: &mut Node) -> Result<()> {
    let lab = &node.lab;
    lab.stop(&node.upstream, Signal::Term, SHUTDOWN)?;
    let isp = isp_resolver(node);
    lab.add_addr(&node.up_ns, "lo", &host_cidr(isp))?;
    node.upstream = lab.start_named(
        &node.up_ns,
        "isp-resolver-named",
        &[isp],
        &[node.zone_file()],
    )?;
    let script = lab.write_file(&format!("{OLD_ROUTER}.py"), OLD_ROUTER_PY)?;
    let mut cmd = lab.cmd(&node.up_ns, python());
    cmd.arg(&script)
        .arg(node.resolver().to_string())
        .arg(isp.to_string());
    let router = lab.spawn_logged(OLD_ROUTER, cmd)?;
    node.lab
        .wait_for_log(&router, "old-router: DNS proxy on", READY)?;
    Ok(())
}

/// Failure mode 2: a second upstream, a "public resolver" on
/// [`PUBLIC_RESOLVER_IP`] (BIND authoritative for an empty `test.` zone:
/// NXDOMAIN for every `example.test` name), and the CoreDNS-role server
/// restarted to forward to both, like CoreDNS `forward . /etc/resolv.conf`
/// with `policy random`: unbound picks at random among upstreams whose RTTs
/// are within 400 ms of each other; dnsmasq runs with `--all-servers` (every
/// query to both, the first reply wins). The same question gets NOERROR from
/// 203.0.113.53 and NXDOMAIN from 203.0.113.54 within seconds. (BIND and
/// kresd prefer the fastest forwarder and rarely try the other.)
pub fn upstream_disagreement(node: &mut Node) -> Result<()> {
    let lab = &node.lab;
    let public_ip = public_resolver(node);
    lab.add_addr(&node.up_ns, "lo", &host_cidr(public_ip))?;
    let public = Zone {
        name: "test".to_owned(),
        text: "$TTL 0\n\
             @   IN SOA ns.test. hostmaster.test. ( 1 3600 600 86400 0 )\n\
             @   IN NS  ns\n\
             ns  IN A   203.0.113.54\n"
            .to_owned(),
    };
    lab.start_named(
        &node.up_ns,
        "public-resolver-named",
        &[public_ip],
        &[public],
    )?;
    lab.stop(&node.coredns, Signal::Term, SHUTDOWN)?;
    let extra = match node.options.coredns {
        Server::Dnsmasq => "--all-servers",
        _ => "",
    };
    node.coredns = node.start_coredns(&[node.resolver(), public_ip], extra)?;
    Ok(())
}

/// Failure mode 3: nothing to change: the pod's loopback is up (127.0.0.0/8,
/// ::1) and nothing listens on 127.0.0.53:53 or `[::1]:53` in the pod netns,
/// as in a pod that got a systemd-resolved host's resolv.conf (`nameserver
/// 127.0.0.53`). Checks that nothing does.
pub fn loopback_nameserver(node: &mut Node) -> Result<()> {
    let listening = node
        .lab
        .run(&node.pod_ns, &["ss", "-Hlun", "sport = :53"])?;
    if !listening.trim().is_empty() {
        bail!("something listens on port 53 in the pod: {listening}");
    }
    Ok(())
}

/// Failure mode 4: CoreDNS's upstream is node-local-dns (a node resolv.conf
/// listing 169.254.25.10), and node-local-dns forwards to the kube-dns
/// ClusterIP, i.e. back to CoreDNS. Both roles are restarted as the node's
/// [`NodeOptions`] say.
///
/// - With dnsmasq in both roles ([`Scenario::node_options`]), both run with
///   `--add-subnet=32` (an EDNS client-subnet option that makes every
///   forwarded query client-specific, so dnsmasq does not merge it with the
///   identical one in flight, just as CoreDNS's `forward` never merges): each
///   lap is a new query with a new id and port. The question circulates
///   about 150 times through each server in a few tens of milliseconds, until
///   both hit `--dns-forward-max` (150 in flight); the one that is full
///   answers REFUSED, which unwinds the whole chain: the pod gets REFUSED.
/// - Otherwise both are plain forwarders, and coalesce identical in-flight
///   questions as most real ones do (dnsmasq, unbound, BIND, kresd): the
///   question goes A → B → A once, then each only retransmits its pending
///   query until a fetch timeout ends in SERVFAIL (issue 9, defect 1). The
///   pod's dig gives up first.
pub fn forwarding_loop(node: &mut Node) -> Result<()> {
    let lab = &node.lab;
    lab.stop(&node.coredns, Signal::Term, SHUTDOWN)?;
    lab.stop(&node.nodelocal, Signal::Term, SHUTDOWN)?;
    let storm =
        node.options.nodelocal == Server::Dnsmasq && node.options.coredns == Server::Dnsmasq;
    let extra = if storm { "--add-subnet=32" } else { "" };
    node.coredns = node.start_coredns(&[node.nodelocal()], extra)?;
    node.nodelocal = node.start_nodelocal(&[node.cluster()], extra)?;
    Ok(())
}

/// Failure mode 5: needs a bridged node; turns
/// `net.bridge.bridge-nf-call-iptables` (and `…-ip6tables`) off in the node
/// netns (br_netfilter not loaded; [`Layout::BridgedNoBrNetfilter`] is built
/// so). The pod's query to the ClusterIP is routed (DNAT to the CoreDNS pod
/// on the same bridge), but the reply, from one bridge port to another, is
/// switched at layer 2 and never meets conntrack: it reaches the pod with the
/// CoreDNS pod's address as its source.
pub fn reply_from_unexpected_source(node: &mut Node) -> Result<()> {
    if node.bridge.is_none() {
        bail!(
            "{} needs a bridged node: build it with Scenario::node_options()",
            Scenario::ReplyFromUnexpectedSource
        );
    }
    for key in [
        "net.bridge.bridge-nf-call-iptables",
        "net.bridge.bridge-nf-call-ip6tables",
    ] {
        node.lab.sysctl(&node.node_ns, key, "0")?;
    }
    Ok(())
}

/// Failure mode 6: removes 169.254.25.10 (fd00:169:254:25::10) from the ifb
/// that held it, as when a CNI's BPF masquerading takes node-local-dns
/// traffic off the local path: a pod's query to it follows the default
/// route, is MASQUERADEd to the node IP and leaves through the uplink. Beyond
/// the uplink the "network" (the upstream netns, forwarding on) routes
/// link-local destinations (fd00:169:254::/48) into an ifb (`<p>wan0`) that
/// swallows them without a kernel drop, as a real network would, out of the
/// node's sight. Nothing ever answers. Needs a default route on the node.
pub fn left_via_uplink(node: &mut Node) -> Result<()> {
    let lab = &node.lab;
    lab.ip(
        &node.node_ns,
        &[
            "addr",
            "del",
            &host_cidr(node.nodelocal()),
            "dev",
            &node.nodelocal_dev,
        ],
    )?;
    let wan = format!("{}wan0", lab.prefix());
    lab.add_ifb(&node.up_ns, &wan, &[])?;
    match node.family() {
        Family::V4 => {
            lab.sysctl(&node.up_ns, "net.ipv4.ip_forward", "1")?;
            lab.add_route(&node.up_ns, &format!("169.254.0.0/16 dev {wan}"))
        }
        Family::V6 => {
            lab.sysctl(&node.up_ns, "net.ipv6.conf.all.forwarding", "1")?;
            lab.add_route(&node.up_ns, &format!("fd00:169:254::/48 dev {wan}"))
        }
    }
}

/// Failure mode 6 with a drop further on (issue 9, defect 2): as
/// [`left_via_uplink`], and the next router (the upstream netns) drops the
/// masqueraded query with an iptables FORWARD rule. On this machine the
/// kernel drop tracepoint sees that drop (NETFILTER_DROP, in the router's
/// netns): a consequence of the query having left, not the cause.
pub fn left_via_uplink_dropped_beyond(node: &mut Node) -> Result<()> {
    left_via_uplink(node)?;
    let rule = format!(
        "-A FORWARD -p udp --dport 53 -d {} -j DROP",
        host_cidr(node.nodelocal())
    );
    match node.family() {
        Family::V4 => node.lab.iptables(&node.up_ns, &rule),
        Family::V6 => node.lab.ip6tables(&node.up_ns, &rule),
    }
}

/// Failure mode 7: nothing to change: `big.example.test TXT` is over 1232
/// bytes, so the reply over UDP carries TC=1, and the client (`dig +ignore`)
/// does not retry over TCP. (unbound, BIND and kresd fetch the big answer
/// from BIND over TCP themselves; dnsmasq relays the TC=1 reply.)
pub fn truncated_no_tcp(_node: &mut Node) -> Result<()> {
    Ok(())
}

/// Failure mode 8: `iptables -I FORWARD -p udp --dport 53 -d <CoreDNS pod> -j
/// DROP` (ip6tables on an IPv6 node) in the node netns, as a NetworkPolicy
/// gone wrong: a pod's query to the ClusterIP is DNATed, then dropped while
/// being forwarded (kernel reason NETFILTER_DROP). node-local-dns's own
/// queries (OUTPUT) still pass.
pub fn dropped(node: &mut Node) -> Result<()> {
    let rule = format!(
        "-I FORWARD -p udp --dport 53 -d {} -j DROP",
        host_cidr(node.cdns())
    );
    match node.family() {
        Family::V4 => node.lab.iptables(&node.node_ns, &rule),
        Family::V6 => node.lab.ip6tables(&node.node_ns, &rule),
    }
}

/// Debian's python3 (it has python3-dnspython); a `python3` earlier on PATH
/// (pyenv, venv) may not.
fn python() -> &'static str {
    if Path::new("/usr/bin/python3").is_file() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// The old router's DNS proxy: argv listen-address upstream-address.
const OLD_ROUTER_PY: &str = r#"
# An old router's DNS proxy (as the Yamaha FWX120 of FAILURE-MODES.md): it
# answers FORMERR, without OPT, to any query that carries an EDNS0 OPT record,
# and relays queries without OPT to the resolver behind it.
import socket, sys, threading
import dns.flags, dns.message, dns.rcode, dns.rdatatype

listen, upstream = sys.argv[1], sys.argv[2]
family = socket.AF_INET6 if ":" in listen else socket.AF_INET
sock = socket.socket(family, socket.SOCK_DGRAM)
sock.bind((listen, 53))
print(f"old-router: DNS proxy on {listen}:53 -> {upstream}:53; FORMERR to any query with OPT", flush=True)

def handle(data, peer):
    try:
        q = dns.message.from_wire(data)
    except Exception as e:
        print(f"unparsable query from {peer[0]}:{peer[1]}: {e}", flush=True)
        return
    qtext = "?"
    if q.question:
        qtext = f"{q.question[0].name} {dns.rdatatype.to_text(q.question[0].rdtype)}"
    if q.edns >= 0:
        r = dns.message.make_response(q)
        r.use_edns(False)
        r.set_rcode(dns.rcode.FORMERR)
        sock.sendto(r.to_wire(), peer)
        do = 1 if q.ednsflags & dns.flags.DO else 0
        print(f"FORMERR to {peer[0]}:{peer[1]} id={q.id} {qtext}: query had OPT (udp={q.payload}, DO={do})", flush=True)
        return
    up = socket.socket(family, socket.SOCK_DGRAM)
    up.settimeout(2)
    try:
        up.sendto(data, (upstream, 53))
        reply, _ = up.recvfrom(65535)
    except OSError as e:
        print(f"no answer from {upstream} for id={q.id} {qtext}: {e}", flush=True)
        return
    finally:
        up.close()
    sock.sendto(reply, peer)
    rcode = dns.rcode.to_text(dns.message.from_wire(reply).rcode())
    print(f"answered {peer[0]}:{peer[1]} id={q.id} {qtext} without OPT: {rcode}", flush=True)

while True:
    data, peer = sock.recvfrom(65535)
    threading.Thread(target=handle, args=(data, peer), daemon=True).start()
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        for s in Scenario::ALL {
            assert_eq!(s.name().parse::<Scenario>().unwrap(), s);
            assert!(!s.describe().is_empty());
        }
        let mut names: Vec<_> = Scenario::ALL.iter().map(|s| s.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Scenario::ALL.len());
        let err = "nope".parse::<Scenario>().unwrap_err().to_string();
        assert!(
            err.contains("healthy") && err.contains("forwarding-loop"),
            "{err}"
        );
    }

    #[test]
    fn verdicts_are_the_issue_names() {
        let verdicts: Vec<_> = Scenario::ALL.iter().map(|s| s.verdict()).collect();
        assert_eq!(
            verdicts,
            [
                "upstream_rejects_edns",
                "upstream_disagreement",
                "loopback_nameserver",
                "forwarding_loop",
                "reply_from_unexpected_source",
                "left_via_uplink",
                "truncated_no_tcp",
                "dropped",
                "ok"
            ]
        );
    }

    fn lookup(stdout: &str) -> ClientLookup {
        ClientLookup {
            command: "dig".into(),
            reply: DigReply::parse(stdout),
            out: CmdOutput {
                status: std::os::unix::process::ExitStatusExt::from_raw(0),
                stdout: stdout.into(),
                stderr: String::new(),
            },
            elapsed: Duration::from_millis(3),
        }
    }

    #[test]
    fn parses_dig_and_kdig() {
        let dig = lookup(
            ";; ->>HEADER<<- opcode: QUERY, status: NXDOMAIN, id: 4242\n\
             ;; flags: qr aa rd ra; QUERY: 1, ANSWER: 0, AUTHORITY: 1, ADDITIONAL: 1\n",
        );
        assert_eq!(dig.status(), Some("NXDOMAIN"));
        assert_eq!(dig.flags(), ["qr", "aa", "rd", "ra"]);
        let kdig = lookup(
            ";; WARNING: unexpected reply source 10.244.0.20@53\n\
             ;; ->>HEADER<<- opcode: QUERY; status: NOERROR; id: 7\n\
             ;; Flags: qr rd ra; QUERY: 1; ANSWER: 1; AUTHORITY: 0; ADDITIONAL: 1\n",
        );
        assert_eq!(kdig.status(), Some("NOERROR"));
        assert_eq!(kdig.flags(), ["qr", "rd", "ra"]);
        assert!(kdig.unexpected_source().is_some());
        let gone = lookup(";; communications error to 10.96.0.10#53: timed out\n");
        assert!(gone.timed_out() && gone.status().is_none());
        assert!(gone.summary().contains("timed out"));
    }

    #[test]
    fn expectations_match_records() {
        let e = Expect {
            verdict: "dropped",
            client: "10.244.0.10".parse().unwrap(),
            server: "10.96.0.10:53".parse().unwrap(),
            qname: "www.example.test.".into(),
            qtype: "A",
            every: true,
            culprit: Some("pod0 (NETFILTER_DROP)".into()),
            last_hop: vec!["pod0 drop".into(), "socket-out".into()],
        };
        let good = serde_json::json!({
            "type": "lookup", "client": "10.244.0.10:5353", "server": "10.96.0.10:53",
            "qname": "www.example.test.", "qtype": "A", "verdict": "dropped",
            "culprit": "dtx0000pod0 (NETFILTER_DROP)", "last_hop": "dtx0000pod0 drop"
        });
        assert!(e.is_for(&good));
        e.check(&good).unwrap();
        e.check_all([&good]).unwrap();
        let mut bad = good.clone();
        bad["verdict"] = "unanswered".into();
        assert!(e.check(&bad).is_err());
        assert!(e.check_all([&good, &bad]).is_err());
        assert!(
            Expect {
                every: false,
                ..e.clone()
            }
            .check_all([&good, &bad])
            .is_ok()
        );
        let mut other = good.clone();
        other["qname"] = "nx.example.test.".into();
        assert!(!e.is_for(&other));
        assert!(e.check_all([&other]).is_err());
    }
}

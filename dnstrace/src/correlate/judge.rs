//! Verdicts: from a finished lookup's legs and hops to one verdict, a culprit, a hint and
//! a one-line explanation, and the output records.
//!
//! Each verdict has one rule ([`rule`]): a function from the lookup's tree to an optional
//! [`Finding`]. Precedence is **path order**, stated once in [`judge_tree`]: every rule
//! that finds a fault names the sighting that shows it, and the fault seen first on the
//! lookup's path is the cause, because everything after it (a drop further on, a missing
//! reply, a SERVFAIL) is its consequence. Outcomes that are not a place on the path
//! (disagreement, a server error, an answer, no answer) only count when no fault was
//! found, in the order of [`RULES`].
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use super::state::{B_TC, HopRec, Leg, LegKind, LookupState};
use super::{Correlator, End, Hop, HopEdns, Lookup, Origin, Trail, Verdict};
use crate::decode::{Point, dns::Rcode, text::push_socket_addr};

/// Forwarding this deep is a loop whatever the addresses.
const LOOP_DEPTH: u8 = 8;

/// Where a finding sits when it is not a place on the path.
const OUTCOME: u64 = u64::MAX;

/// Every rule, in the order that breaks ties between findings at the same place on the
/// path and orders the outcomes. Each verdict appears exactly once (a test checks it).
const RULES: [Verdict; 12] = [
    Verdict::Unknown,
    Verdict::LoopbackNameserver,
    Verdict::Dropped,
    Verdict::LeftViaUplink,
    Verdict::ForwardingLoop,
    Verdict::UpstreamRejectsEdns,
    Verdict::ReplyFromUnexpectedSource,
    Verdict::TruncatedNoTcp,
    Verdict::UpstreamDisagreement,
    Verdict::ServerError,
    Verdict::Ok,
    Verdict::Unanswered,
];

type Rule = fn(&Facts) -> Option<Finding>;

/// The rule of each verdict. No catch-all arm: a new verdict does not compile without one.
fn rule(v: Verdict) -> Rule {
    match v {
        Verdict::Unknown => cut_short,
        Verdict::LoopbackNameserver => loopback_nameserver,
        Verdict::Dropped => dropped,
        Verdict::LeftViaUplink => left_via_uplink,
        Verdict::ForwardingLoop => forwarding_loop,
        Verdict::UpstreamRejectsEdns => upstream_rejects_edns,
        Verdict::ReplyFromUnexpectedSource => reply_from_unexpected_source,
        Verdict::TruncatedNoTcp => truncated_no_tcp,
        Verdict::UpstreamDisagreement => upstream_disagreement,
        Verdict::ServerError => server_error,
        Verdict::Ok => answered,
        Verdict::Unanswered => no_reply,
    }
}

/// The verdict part of a [`Lookup`].
struct Judgement {
    verdict: Verdict,
    culprit: Option<String>,
    last_hop: Option<String>,
    hint: Option<String>,
    detail: String,
}

impl Judgement {
    fn new(verdict: Verdict, culprit: Option<String>, last_hop: Option<String>) -> Self {
        Self {
            verdict,
            culprit,
            last_hop,
            hint: None,
            detail: String::new(),
        }
    }
    fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }
    /// A fault shown by the sighting at `at` (ns).
    fn at(self, at: u64) -> Finding {
        Finding {
            at,
            judgement: self,
        }
    }
    /// Not a place on the path.
    fn outcome(self) -> Finding {
        self.at(OUTCOME)
    }
}

/// Places a trail has room for before it grows ([`Correlator::trail`]); a lookup's hops
/// pass a handful (socket, pod veth, node-local-dns, CoreDNS veth, uplink).
const TRAIL_PLACES: usize = 8;

/// A rule's judgement and where on the path it was shown.
struct Finding {
    at: u64,
    judgement: Judgement,
}

/// What every rule may read, worked out once per lookup.
struct Facts<'a> {
    c: &'a Correlator,
    lk: &'a LookupState,
    end: u64,
    how: End,
    /// What the client got: its last complete answer, else the truncated one.
    reply: Option<&'a HopRec>,
    /// The client got a complete (not truncated) answer.
    answered: bool,
    /// Events lost while the lookup was open.
    lost: u64,
    /// Capture stopped before the client's timeout ran out.
    premature: bool,
    /// The client's latest attempt.
    latest_client: usize,
}

impl Facts<'_> {
    /// "www.example.test. A", made only for the rules that say it.
    fn qdesc(&self) -> String {
        format!("{} {}", self.lk.qname, self.lk.qtype)
    }

    fn root(&self) -> &Leg {
        &self.lk.legs[0]
    }

    fn client_legs(&self) -> impl Iterator<Item = &Leg> {
        self.lk.legs.iter().filter(|l| l.depth == 0)
    }

    /// A NO_SOCKET drop that is the expected consequence of a more specific finding, not a
    /// cause of its own: nothing listens on the pod's loopback (loopback_nameserver), the
    /// client's connected socket refused a reply from the wrong source
    /// (reply_from_unexpected_source), or a late reply found its sender gone after it had
    /// asked again (a client's retry, a forwarder's new query).
    fn folded(&self, i: usize, h: &HopRec) -> bool {
        let leg = &self.lk.legs[i];
        if self.c.reason(h) != "NO_SOCKET" {
            return false;
        }
        if leg.depth != 0 {
            // A late reply to a forwarded query that its forwarder had given up on: it
            // had asked again (another port) and got an answer, and closed this socket.
            return h.is_response()
                && self.lk.legs.iter().enumerate().any(|(j, l)| {
                    j != i
                        && l.parent == leg.parent
                        && l.first_ts() > leg.first_ts()
                        && l.resp.is_some()
                });
        }
        if h.is_query() {
            return self.c.pod_loopback(self.lk) && leg.server().ip().is_loopback();
        }
        leg.unexpected.is_some() || i != self.latest_client
    }

    /// Drops of a query after it left the node by an uplink: beyond the node, a consequence.
    /// A drop of the encapsulated datagram is on the node until that datagram was seen
    /// leaving by an uplink: the overlay device's sighting (before encapsulation, and an
    /// uplink to the routes) is not the way out.
    fn beyond_node(&self, leg: &Leg, h: &HopRec) -> bool {
        if !h.is_query() {
            return false;
        }
        if h.tunnel == 0 {
            return leg.hop(leg.uplink).is_some_and(|u| u.ts <= h.ts);
        }
        leg.hops.iter().any(|u| {
            u.tunnel != 0 && u.point == Point::TcEgress && self.c.is_uplink(u.iface) && u.ts <= h.ts
        })
    }

    /// " ; further on, it was dropped at X (netns N): REASON", for drops beyond the node.
    fn downstream_drops(&self) -> String {
        let mut out = String::new();
        for leg in &self.lk.legs {
            for h in leg.hops.iter().filter(|h| h.point == Point::Drop) {
                if self.beyond_node(leg, h) {
                    let _ = write!(
                        out,
                        "; further on it was dropped at {}: {}",
                        self.c.at(h),
                        self.c.reason(h)
                    );
                    return out;
                }
            }
        }
        out
    }
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// Appends `format!("{:.3}", ms(ns))` without the float formatter. Rounding `ns` to whole
/// microseconds gives the same digits, except exactly half-way between two (where the
/// float's own rounding decides) and beyond 2^50 ns (13 days), which take the formatter.
/// `format!("{server} answered {rcode} in {:.3} ms", ms(ns))` without the formatter: every
/// forwarded query of every lookup gets one.
fn answered_in(server: &std::net::SocketAddr, rcode: Rcode, ns: u64) -> String {
    let mut detail = String::with_capacity(48);
    push_socket_addr(&mut detail, server);
    detail.push_str(" answered ");
    detail.push_str(&rcode.name());
    detail.push_str(" in ");
    push_ms3(&mut detail, ns);
    detail.push_str(" ms");
    detail
}

fn push_ms3(out: &mut String, ns: u64) {
    if ns % 1000 == 500 || ns >= 1 << 50 {
        let _ = write!(out, "{:.3}", ms(ns));
        return;
    }
    let us = (ns + 500) / 1000;
    let mut buf = itoa::Buffer::new();
    out.push_str(buf.format(us / 1000));
    out.push('.');
    let frac = us % 1000;
    if frac < 100 {
        out.push('0');
    }
    if frac < 10 {
        out.push('0');
    }
    out.push_str(buf.format(frac));
}

/// "5 s", "1.5 s", "300 ms": a configured duration as a person wrote it.
fn duration(ns: u64) -> String {
    if ns >= 1_000_000_000 {
        format!("{} s", ns as f64 / 1e9)
    } else {
        format!("{} ms", ns as f64 / 1e6)
    }
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Where the server received the query: the destination of its last sighting, after any
/// DNAT on the way. That is the address a forwarder serves on, whatever its replies or
/// its own queries are SNATed to.
pub(super) fn served_at(leg: &Leg) -> SocketAddr {
    leg.query_hops()
        .filter(|h| h.point != Point::Drop)
        .last()
        .map_or(leg.server(), |h| h.dst)
}

/// Every address the query was sent to: as addressed, and after each DNAT.
fn server_addrs(leg: &Leg) -> impl Iterator<Item = SocketAddr> + '_ {
    std::iter::once(leg.server()).chain(
        leg.query_hops()
            .filter(|h| h.point != Point::Drop)
            .map(|h| h.dst),
    )
}

/// The first ancestor of leg `i` that was sent to a server that leg `i` is sent to again.
fn repeated_ancestor(lk: &LookupState, i: usize) -> Option<usize> {
    let leg = &lk.legs[i];
    let mut parent = leg.parent;
    while let Some(p) = parent {
        let p = usize::from(p);
        let up = &lk.legs[p];
        if server_addrs(leg).any(|a| server_addrs(up).any(|b| a == b)) {
            return Some(p);
        }
        parent = up.parent;
    }
    None
}

/// A forwarded query that reaches a server already on its own path (or nests absurdly
/// deep): the question came back to where it had been.
fn is_looping(lk: &LookupState, i: usize) -> bool {
    let leg = &lk.legs[i];
    leg.depth >= 1 && (leg.depth >= LOOP_DEPTH || repeated_ancestor(lk, i).is_some())
}

impl Correlator {
    /// "eth0 egress", "lxcpod0 drop", "socket-in (netns 3)", and "lo drop (netns 5)"
    /// for a device in another netns than the tracer's.
    fn at(&self, h: &HopRec) -> String {
        match h.point {
            Point::SocketIn | Point::SocketOut => {
                format!("{} (netns {})", h.point.as_str(), h.netns)
            }
            _ if self.cfg.host_netns != 0 && h.netns != self.cfg.host_netns => format!(
                "{} {} (netns {})",
                self.ifaces.get(h.iface),
                h.point.as_str(),
                h.netns
            ),
            _ => {
                let (iface, point) = (self.ifaces.get(h.iface), h.point.as_str());
                let mut at = String::with_capacity(iface.len() + 1 + point.len());
                at.push_str(iface);
                at.push(' ');
                at.push_str(point);
                at
            }
        }
    }

    fn reason(&self, h: &HopRec) -> &str {
        self.reasons.get(h.drop_reason)
    }

    /// A pod (not the host) sent the root query to a loopback address.
    fn pod_loopback(&self, lk: &LookupState) -> bool {
        let root = &lk.legs[0];
        root.server().ip().is_loopback()
            && root.first().point == Point::SocketOut
            && root.first().netns != self.cfg.host_netns
    }

    /// Why the tracer could not have seen what happened after `last`, if so.
    fn coverage_gap(&self, last: &HopRec) -> Option<String> {
        let w = &self.cfg.watched;
        let on_uplink = last.point == Point::TcEgress && self.is_uplink(last.iface);
        match last.point {
            Point::TcIngress if !w.socket => {
                return Some(
                    "the socket hop is not watched, so delivery to a local process \
                     (e.g. node-local-dns) is invisible"
                        .into(),
                );
            }
            Point::TcEgress if !on_uplink && !w.socket && !w.drops => {
                return Some(format!(
                    "neither the socket hop nor kernel drops are watched, so what {} did with it is invisible",
                    last.dst.ip()
                ));
            }
            Point::SocketOut if !w.all_ifaces && !last.dst.ip().is_loopback() => {
                return Some(
                    "not every interface is watched, so it may have left through one that is not"
                        .into(),
                );
            }
            _ => {}
        }
        let unwatched: Vec<&str> = self
            .cfg
            .uplinks
            .iter()
            .filter(|u| !w.watches(u))
            .map(String::as_str)
            .collect();
        (!unwatched.is_empty() && !on_uplink)
            .then(|| format!("uplink {} is not watched", unwatched.join(", ")))
    }

    /// Decides the verdict and builds the output record.
    pub(super) fn judge(&self, lk: LookupState, end: u64, how: End) -> Lookup {
        let client_legs = || lk.legs.iter().filter(|l| l.depth == 0);
        let reply = client_legs()
            .filter_map(|l| l.hop(l.final_reply))
            .max_by_key(|h| (!h.has(B_TC), h.ts));
        let j = self.judge_tree(&lk, reply, end, how);
        let root = &lk.legs[0];
        // An `ok` lookup whose hops nobody will read (`Config::ok_hops` off) keeps only
        // what a compact record says of them: their count and the places they passed.
        let with_hops = self.cfg.ok_hops || j.verdict != Verdict::Ok;
        let client_hops = || {
            client_legs()
                .flat_map(|l| l.hops.iter())
                .chain(lk.rare().tcp_hops.iter())
        };
        let (hops, trail) = if with_hops {
            let mut hops: Vec<Hop> = client_hops().map(|h| self.hop_out(h)).collect();
            hops.sort_by_key(|h| h.ts_ns);
            (hops, None)
        } else {
            let omitted = client_legs().map(|l| l.hops_omitted as usize).sum();
            (Vec::new(), Some(self.trail(client_hops(), omitted)))
        };
        let children = lk
            .legs
            .iter()
            .enumerate()
            .filter(|(_, l)| l.depth == 1)
            .map(|(i, _)| self.leg_out(&lk, i, end, how, with_hops))
            .collect();
        Lookup {
            id: 0,
            client: root.client(),
            server: root.server(),
            rcode: reply.map(|h| h.rcode),
            verdict: j.verdict,
            culprit: j.culprit,
            last_hop: j.last_hop,
            hint: j.hint,
            latency_ms: reply
                .filter(|h| !h.has(B_TC))
                .map(|h| ms(h.ts.saturating_sub(lk.start))),
            detail: j.detail,
            hops,
            children,
            retries: lk.retries,
            start_ts_ns: lk.start,
            netns: (root.first().point == Point::SocketOut).then_some(root.first().netns),
            hops_omitted: client_legs().map(|l| l.hops_omitted).sum(),
            children_omitted: lk.rare().legs_omitted,
            origin: lk.task.map_or_else(Origin::default, |t| {
                let (pid, comm) = *t;
                Origin {
                    pid: Some(pid),
                    comm: (!comm.is_empty()).then_some(comm),
                    ..Origin::default()
                }
            }),
            qname: lk.qname.clone(),
            qtype: lk.qtype,
            trail,
        }
    }

    /// Runs every rule; the finding earliest on the path wins, ties and outcomes going by
    /// the order of [`RULES`].
    fn judge_tree(
        &self,
        lk: &LookupState,
        reply: Option<&HopRec>,
        end: u64,
        how: End,
    ) -> Judgement {
        let latest_client = lk
            .legs
            .iter()
            .enumerate()
            .filter(|(_, l)| l.depth == 0)
            .max_by_key(|(_, l)| l.first_ts())
            .map_or(0, |(i, _)| i);
        let facts = Facts {
            c: self,
            lk,
            end,
            how,
            reply,
            answered: reply.is_some_and(|h| !h.has(B_TC)),
            lost: self.lost_during(lk.start, end),
            // Capture stopped before the client's timeout ran out, missed bytes of a TCP
            // stream that could hold the reply, or an interface it crossed went away: no
            // reply seen proves nothing.
            premature: how == End::Stopped && end < lk.deadline
                || self.tcp_gap(lk, end).is_some()
                || self.iface_gap(lk, end).is_some(),
            latest_client,
        };
        let mut best: Option<Finding> = None;
        for v in RULES {
            if let Some(f) = rule(v)(&facts)
                && best.as_ref().is_none_or(|b| f.at < b.at)
            {
                best = Some(f);
            }
        }
        // `no_reply` always finds something when nothing else did.
        best.map_or_else(
            || Judgement::new(Verdict::Unknown, None, None).detail("no rule applied"),
            |f| f.judgement,
        )
    }

    fn unknown(
        &self,
        lk: &LookupState,
        lost: u64,
        end: u64,
        last: &HopRec,
        says: &str,
    ) -> Judgement {
        let (why, hint) = if lost > 0 {
            (
                format!("{lost} events were lost while it was open"),
                "events were lost: raise --ring-size / --queue, or watch fewer interfaces",
            )
        } else if let Some(g) = self.tcp_gap(lk, end) {
            (
                format!(
                    "the capture missed {} bytes of the TCP stream {} → {} (noticed {:.0} ms after the query): its reply may have been in them",
                    g.bytes,
                    g.src,
                    g.dst,
                    ms(g.ts.saturating_sub(lk.start))
                ),
                "the capture lost TCP segments: capture where nothing is dropped (a larger buffer, on the node itself)",
            )
        } else if let Some(g) = self.iface_gap(lk, end) {
            (
                format!(
                    "interface {} went away {:.0} ms after the query (a coverage gap): what became of it after that was not seen",
                    self.ifaces.get(g.iface),
                    ms(g.ts.saturating_sub(lk.start))
                ),
                "an interface it crossed was deleted while it was open (a pod stopped?); nothing is wrong that the capture could show",
            )
        } else {
            (
                format!(
                    "capture stopped {:.0} ms after the client's last query, before its timeout",
                    ms(end.saturating_sub(lk.last_client_ts))
                ),
                "run the capture for longer than the client's timeout",
            )
        };
        Judgement::new(Verdict::Unknown, None, Some(self.at(last)))
            .hint(hint)
            .detail(format!("{says}; last seen at {}, but {why}", self.at(last)))
    }
}

/// `unknown`: cut short at the lookup cap, whatever it had shown so far. It says nothing
/// about the path, so it comes before every place on it.
fn cut_short(f: &Facts) -> Option<Finding> {
    if f.how != End::Evicted {
        return None;
    }
    let lk = f.lk;
    let last = lk
        .legs
        .iter()
        .flat_map(|l| l.hops.iter())
        .chain(lk.rare().tcp_hops.iter())
        .max_by_key(|h| h.ts)
        .unwrap_or(&f.root().hops[0]);
    let cap = f.c.cfg.max_lookups;
    let j = Judgement::new(Verdict::Unknown, None, Some(f.c.at(last)))
        .hint(format!(
            "more than {cap} lookups were open at once (a flood of unanswered queries?); a shorter --timeout ends them sooner, and watch's --memory-budget sets how many fit"
        ))
        .detail(format!(
            "evicted: {cap} live lookups at the cap; {} was last seen at {}",
            f.qdesc(),
            f.c.at(last)
        ));
    Some(j.at(0))
}

/// `loopback_nameserver`: a pod asked a loopback address and got nothing (or REFUSED).
/// Shown at the pod's own query.
fn loopback_nameserver(f: &Facts) -> Option<Finding> {
    let lk = f.lk;
    let root = f.root();
    if !f.c.pod_loopback(lk) {
        return None;
    }
    let refused = f.reply.is_some_and(|h| h.rcode == Rcode::REFUSED);
    if !refused && f.answered {
        return None;
    }
    let nothing_listens = lk.legs.iter().enumerate().any(|(i, l)| {
        l.hop(l.drop)
            .is_some_and(|h| h.is_query() && f.folded(i, h))
    });
    let why = if refused {
        "it was refused (REFUSED)"
    } else if nothing_listens {
        "nothing listens there (NO_SOCKET)"
    } else {
        "no reply"
    };
    let last = root.query_hops().last().copied().unwrap_or(root.hops[0]);
    let says = format!(
        "the pod (netns {}) queries the loopback nameserver {}; nothing on the node ever sees the query",
        root.first().netns,
        root.server()
    );
    if !refused && !nothing_listens && (f.lost > 0 || f.premature) {
        return Some(f.c.unknown(lk, f.lost, f.end, &last, &says).outcome());
    }
    let j = Judgement::new(
        Verdict::LoopbackNameserver,
        Some(root.server().to_string()),
        Some(f.c.at(&last)),
    )
    .hint(
        "the pod's resolv.conf points at a loopback stub (systemd-resolved's 127.0.0.53 \
         copied from the host): set kubelet --resolv-conf=/run/systemd/resolve/resolv.conf",
    )
    .detail(format!("{says}; {why}"));
    Some(j.at(root.first_ts()))
}

/// `dropped`: the kernel dropped a packet of the lookup on this node. Not a drop that a
/// more specific finding explains (see [`Facts::folded`]), nor one after the query left
/// the node. Shown at the drop.
fn dropped(f: &Facts) -> Option<Finding> {
    let h =
        f.lk.legs
            .iter()
            .enumerate()
            .flat_map(|(i, l)| {
                l.hops
                    .iter()
                    .filter(|h| h.point == Point::Drop)
                    .map(move |h| (i, l, h))
            })
            .filter(|&(i, l, h)| !f.folded(i, h) && !f.beyond_node(l, h))
            .map(|(_, _, h)| h)
            .min_by_key(|h| h.ts)?;
    let what = if h.is_response() { "reply" } else { "query" };
    let iface = f.c.ifaces.get(h.iface);
    let reason = f.c.reason(h);
    let tunnel = f.c.tunnels.get(h.tunnel, h.tunnel_sport);
    let hint = match tunnel {
        Some(t) if reason == "NETFILTER_DROP" => format!(
            "a netfilter rule drops the overlay's datagrams: check `iptables-save` / \
             `nft list ruleset` on this node for udp {} ({}) to and from the other nodes",
            t.dst.port(),
            t.kind.as_str()
        ),
        _ => drop_hint(reason, h),
    };
    let j = Judgement::new(
        Verdict::Dropped,
        Some(format!("{iface} ({reason})")),
        Some(f.c.at(h)),
    )
    .hint(hint)
    .detail(format!(
        "the kernel dropped the {what} {} → {} at {iface}{}: {reason}",
        h.src,
        h.dst,
        tunnel.map_or_else(String::new, |t| format!(" inside {t}"))
    ));
    Some(j.at(h.ts))
}

/// `left_via_uplink`: a query to a node-local (link-local) address left through an
/// uplink instead of being delivered locally. Shown where it left.
fn left_via_uplink(f: &Facts) -> Option<Finding> {
    let (leg, h) =
        f.lk.legs
            .iter()
            .filter(|l| is_link_local(l.server().ip()))
            .filter_map(|l| l.hop(l.uplink).map(|h| (l, h)))
            .min_by_key(|(_, h)| h.ts)?;
    let iface = f.c.ifaces.get(h.iface);
    let snat = if h.src == leg.client() {
        String::new()
    } else {
        format!(" (SNAT to {})", h.src)
    };
    let outcome = if leg.resp.is_some() {
        "a reply came back from the network"
    } else {
        "no reply"
    };
    let j = Judgement::new(Verdict::LeftViaUplink, Some(iface.to_owned()), Some(f.c.at(h)))
        .hint(format!(
            "traffic to the node-local address {} is masqueraded out of the node: exclude it from \
             (BPF) masquerading (e.g. Cilium bpf.masquerade, ip-masq-agent nonMasqueradeCIDRs) so it is delivered locally",
            leg.server().ip()
        ))
        .detail(format!(
            "query to {} left via {iface}{snat}; never delivered to the local server; {outcome}{}",
            leg.server(),
            f.downstream_drops()
        ));
    Some(j.at(h.ts))
}

/// `forwarding_loop`: a forwarded query reaches a server that is already on its own
/// ancestor path (compared as addressed and after DNAT), at its first repetition. Shown
/// where that copy was first seen.
fn forwarding_loop(f: &Facts) -> Option<Finding> {
    let lk = f.lk;
    let i = (0..lk.legs.len())
        .filter(|&i| is_looping(lk, i))
        .min_by_key(|&i| lk.legs[i].first_ts())?;
    let leg = &lk.legs[i];
    // The forwarder that sent the copy, by the address it serves on, and the server it
    // reached again.
    let from = leg
        .parent
        .map_or(leg.client(), |p| served_at(&lk.legs[usize::from(p)]));
    let ancestor = repeated_ancestor(lk, i);
    let again = ancestor.map_or(leg.server(), |a| served_at(&lk.legs[a]));
    let netns = if again.ip().is_loopback() {
        format!(" in netns {}", leg.first().netns)
    } else {
        String::new()
    };
    let copies = lk.legs.iter().filter(|l| l.depth >= 1).count();
    let deepest = lk.legs.iter().map(|l| l.depth).max().unwrap_or(0);
    let last = leg.hops.last().copied().unwrap_or(leg.hops[0]);
    let outcome = match f.reply {
        Some(h) if f.answered => format!("the client got {}", h.rcode),
        _ => "the client got no answer".to_owned(),
    };
    let (culprit, between) = if from == again {
        (
            format!("{again} -> itself{netns}"),
            format!("through {again}{netns}, which forwards to itself"),
        )
    } else {
        (
            format!("{from} <-> {again}{netns}"),
            format!("between {from} and {again}{netns}"),
        )
    };
    let not_kept = if lk.rare().legs_omitted > 0 {
        format!(" (+{} not kept)", lk.rare().legs_omitted)
    } else {
        String::new()
    };
    let depth = ancestor.map_or(0, |a| lk.legs[a].depth);
    let j = Judgement::new(Verdict::ForwardingLoop, Some(culprit), Some(f.c.at(&last)))
        .hint(
            "a forwarder forwards back to itself: point its `forward` at a real upstream instead of \
             a resolv.conf that lists 127.0.0.x or node-local-dns (kubelet --resolv-conf), or enable CoreDNS's `loop` plugin",
        )
        .detail(format!(
            "the same question circulates {between}: the copy sent to {} at depth {} reaches a server already asked at depth {depth}; \
             {copies} forwarded copies, nested {deepest} deep{not_kept}; {outcome}",
            leg.server(), leg.depth,
        ));
    Some(j.at(leg.first_ts()))
}

/// `upstream_rejects_edns`: the deepest query with OPT that got FORMERR/BADVERS/NOTIMP.
/// Shown at that answer.
fn upstream_rejects_edns(f: &Facts) -> Option<Finding> {
    let lk = f.lk;
    let (i, leg, h, udp, dnssec_ok) = lk
        .legs
        .iter()
        .enumerate()
        .filter_map(|(i, l)| {
            let (udp, dnssec_ok) = l.edns()?;
            let h = l.hop(l.resp)?;
            h.rcode
                .is_edns_rejection()
                .then_some((i, l, h, udp, dnssec_ok))
        })
        .max_by_key(|(_, l, ..)| (l.depth, std::cmp::Reverse(l.first_ts())))?;
    let retry = lk
        .legs
        .iter()
        .enumerate()
        .filter(|(j, l)| {
            *j != i
                && l.parent == leg.parent
                && l.depth == leg.depth
                && l.edns().is_none()
                && l.first_ts() >= leg.first_ts()
        })
        .find_map(|(_, l)| l.hop(l.resp));
    let retried = match retry {
        Some(r) => format!("the retry without OPT got {}", r.rcode),
        None => "no retry without OPT was seen".to_owned(),
    };
    let j = Judgement::new(
        Verdict::UpstreamRejectsEdns,
        Some(leg.server().to_string()),
        Some(f.c.at(h)),
    )
    .hint(
        "the upstream rejects EDNS0: forward to a resolver that supports EDNS0, \
         or disable EDNS towards that upstream",
    )
    .detail(format!(
        "upstream {} answers {} to queries with OPT (udp={udp}, DO={}); {retried}",
        leg.server(),
        h.rcode,
        u8::from(dnssec_ok)
    ));
    Some(j.at(h.ts))
}

/// `reply_from_unexpected_source`: the reply reached the client from an address it did
/// not ask (see `Correlator::on_response` for when that can be decided). Shown there.
fn reply_from_unexpected_source(f: &Facts) -> Option<Finding> {
    let (leg, h) = f
        .client_legs()
        .find_map(|l| l.hop(l.unexpected).map(|h| (l, h)))?;
    let refused = f.lk.legs.iter().enumerate().any(|(i, l)| {
        l.hop(l.drop)
            .is_some_and(|d| d.is_response() && f.folded(i, d) && l.unexpected.is_some())
    });
    let fate = if refused {
        "; the client's socket dropped it (NO_SOCKET)"
    } else if leg.final_reply.is_none() {
        "; the client never accepted it"
    } else {
        ""
    };
    let j = Judgement::new(
        Verdict::ReplyFromUnexpectedSource,
        Some(h.src.to_string()),
        Some(f.c.at(h)),
    )
    .hint("DNAT not reversed: load br_netfilter / set net.bridge.bridge-nf-call-iptables=1")
    .detail(format!(
        "the reply to {} came from {}, not from {} that it queried: DNAT was not reversed{fate}",
        leg.client(),
        h.src,
        leg.server()
    ));
    Some(j.at(h.ts))
}

/// `truncated_no_tcp`: a TC=1 answer and no TCP retry that got an answer. Shown at the
/// truncated answer.
fn truncated_no_tcp(f: &Facts) -> Option<Finding> {
    let lk = f.lk;
    if lk.rare().await_tcp.is_none() || f.answered {
        return None;
    }
    let root = f.root();
    let tcp_last = lk
        .legs
        .iter()
        .filter(|l| l.kind == LegKind::Tcp)
        .flat_map(|l| l.hops.iter())
        .chain(lk.rare().tcp_hops.iter())
        .max_by_key(|h| h.ts);
    let tc_reply = f.reply.copied().unwrap_or(root.hops[0]);
    let says = format!("the answer from {} was truncated (TC=1)", root.server());
    if f.lost > 0 || f.premature {
        let last = tcp_last.unwrap_or(&tc_reply);
        return Some(f.c.unknown(lk, f.lost, f.end, last, &says).outcome());
    }
    let j = match tcp_last {
        Some(t) => Judgement::new(
            Verdict::TruncatedNoTcp,
            Some(format!("{} (tcp)", t.dst)),
            Some(f.c.at(t)),
        )
        .detail(format!(
            "{says}; the TCP retry was last seen at {} and never answered",
            f.c.at(t)
        )),
        None => Judgement::new(
            Verdict::TruncatedNoTcp,
            Some(root.client().ip().to_string()),
            Some(f.c.at(&tc_reply)),
        )
        .detail(format!(
            "{says}; no TCP retry from {} followed within {:.0} ms",
            root.client().ip(),
            ms(f.c.cfg.forward_window_ns)
        )),
    };
    let j = j.hint(
        "allow DNS over TCP port 53 to the server (NetworkPolicy, firewall), \
         and use a client that retries over TCP",
    );
    Some(j.at(tc_reply.ts))
}

/// `upstream_disagreement`: a forwarder of this lookup got different rcodes for this
/// question from different servers within the window (this lookup's answers included).
/// Needs no uplink: the servers may be anywhere.
fn upstream_disagreement(f: &Facts) -> Option<Finding> {
    let lk = f.lk;
    // The latest answered forwarded query whose forwarder disagrees with itself.
    let (leg, h, answers) = lk
        .legs
        .iter()
        .filter_map(|l| {
            let p = l.parent?;
            let h = l.hop(l.resp)?;
            Some((l, h, served_at(&lk.legs[usize::from(p)])))
        })
        .filter_map(|(l, h, fwd)| {
            let key = (fwd, l.first().netns, lk.qhash);
            let answers = f.c.upstreams.disagreement(key, f.end)?;
            Some((l, h, answers))
        })
        .max_by_key(|(_, h, _)| h.ts)?;
    let forwarder = leg
        .parent
        .map_or(leg.client(), |p| served_at(&lk.legs[usize::from(p)]));
    let mut list = String::new();
    for (n, a) in answers.iter().enumerate() {
        let sep = if n == 0 { "" } else { ", " };
        let _ = write!(list, "{sep}{} {}", a.upstream, a.rcode);
    }
    let failing: Vec<_> = answers
        .iter()
        .filter(|a| a.rcode != Rcode::NOERROR)
        .collect();
    let culprit = failing
        .iter()
        .max_by_key(|a| a.ts)
        .map_or(leg.server(), |a| a.upstream);
    let only = if failing.iter().all(|a| a.upstream == culprit)
        && answers.iter().any(|a| a.rcode == Rcode::NOERROR)
    {
        format!("; it fails only when forwarded to {culprit}")
    } else {
        String::new()
    };
    let j = Judgement::new(
        Verdict::UpstreamDisagreement,
        Some(culprit.to_string()),
        Some(f.c.at(h)),
    )
    .hint(
        "upstreams disagree on this name: forward internal zones only to resolvers that serve them \
         (a separate `forward` per zone), not to a random mix of public and internal resolvers",
    )
    .detail(format!(
        "the upstreams of {forwarder} disagree on {} within {}: {list}; this lookup got {} from {}{only}",
        f.qdesc(),
        duration(f.c.cfg.disagreement_window_ns),
        h.rcode,
        leg.server()
    ));
    Some(j.outcome())
}

/// `server_error`: the client got SERVFAIL/REFUSED/NOTIMP; follow the rcode down the
/// forwarders to where it first comes out.
fn server_error(f: &Facts) -> Option<Finding> {
    let lk = f.lk;
    let h = f
        .reply
        .filter(|h| f.answered && h.rcode.is_server_error())?;
    let mut cur = lk
        .legs
        .iter()
        .position(|l| l.depth == 0 && l.hop(l.final_reply).is_some_and(|r| r.ts == h.ts))
        .unwrap_or(0);
    while let Some(next) = lk
        .legs
        .iter()
        .enumerate()
        .filter(|(_, l)| l.parent == Some(cur as u8))
        .filter(|(_, l)| l.hop(l.resp).is_some_and(|r| r.rcode == h.rcode))
        .max_by_key(|(_, l)| l.first_ts())
        .map(|(i, _)| i)
    {
        cur = next;
    }
    let origin = &lk.legs[cur];
    let out = origin.hop(origin.resp).copied().unwrap_or(*h);
    let mut detail = format!("{} answered {}", out.src, h.rcode);
    let below: Vec<String> = lk
        .legs
        .iter()
        .filter(|l| l.parent == Some(cur as u8))
        .map(|l| match l.hop(l.resp) {
            Some(r) => format!("{} {}", l.server(), r.rcode),
            None => format!("{} no reply", l.server()),
        })
        .collect();
    if below.is_empty() {
        detail.push_str(" itself (no forwarded query seen)");
    } else {
        let _ = write!(detail, "; its forwarded queries: {}", below.join(", "));
    }
    let hint = match h.rcode {
        Rcode::REFUSED => format!(
            "{} refuses this query: check its ACLs (allow-query, CoreDNS acl) and that it serves this zone",
            out.src
        ),
        Rcode::NOTIMP => format!("{} does not implement this query", out.src),
        _ => format!(
            "{} failed to resolve it: check its logs and its own upstreams",
            out.src
        ),
    };
    let j = Judgement::new(
        Verdict::ServerError,
        Some(out.src.to_string()),
        Some(f.c.at(&out)),
    )
    .hint(hint)
    .detail(detail);
    Some(j.outcome())
}

/// `ok`: answered, and no rule above found anything.
fn answered(f: &Facts) -> Option<Finding> {
    let h = f.reply.filter(|_| f.answered)?;
    if !f.c.cfg.ok_hops {
        // Nothing will show it: no "answered … in … ms" line and no last hop to write.
        return Some(Judgement::new(Verdict::Ok, None, None).outcome());
    }
    // Written piece by piece: every healthy lookup gets this line.
    let mut detail = String::with_capacity(48);
    detail.push_str("answered ");
    detail.push_str(&h.rcode.name());
    detail.push_str(" in ");
    push_ms3(&mut detail, h.ts.saturating_sub(f.lk.start));
    detail.push_str(" ms");
    match f.lk.retries {
        0 => {}
        1 => detail.push_str(", after 1 retry"),
        n => {
            let _ = write!(detail, ", after {n} retries");
        }
    }
    let j = Judgement::new(Verdict::Ok, None, Some(f.c.at(h))).detail(detail);
    Some(j.outcome())
}

/// `unanswered`, or `unknown` when the tracer could not have seen the answer: no reply,
/// named by the last place anything of this lookup was seen.
fn no_reply(f: &Facts) -> Option<Finding> {
    if f.answered {
        return None;
    }
    let lk = f.lk;
    let root = f.root();
    let last = lk
        .legs
        .iter()
        .flat_map(|l| l.hops.iter())
        .filter(|h| h.point != Point::Drop)
        .max_by_key(|h| h.ts)
        .copied()
        .unwrap_or(root.hops[0]);
    let c = f.c;
    let says = format!("no reply to {} from {}", root.client(), root.server());
    if f.lost > 0 || f.premature {
        return Some(c.unknown(lk, f.lost, f.end, &last, &says).outcome());
    }
    if let Some(gap) = c.coverage_gap(&last) {
        let j = Judgement::new(Verdict::Unknown, None, Some(c.at(&last)))
            .hint("watch the missing hop (enable the socket hop and hook every interface)")
            .detail(format!("{says}; last seen at {}, but {gap}", c.at(&last)));
        return Some(j.outcome());
    }
    let what = if last.is_response() { "reply" } else { "query" };
    let timeout = duration(c.cfg.timeout_ns);
    let j = Judgement::new(
        Verdict::Unanswered,
        Some(last.dst.to_string()),
        Some(c.at(&last)),
    )
    .hint(format!(
        "nothing answered within {timeout}: check that {} is up and reachable from {}",
        last.dst,
        c.at(&last)
    ))
    .detail(format!(
        "{says} within {timeout}; the {what} was last seen at {} ({} → {}{}){}",
        c.at(&last),
        last.src,
        last.dst,
        c.tunnels
            .get(last.tunnel, last.tunnel_sport)
            .map_or_else(String::new, |t| format!(", inside {t}")),
        f.downstream_drops()
    ));
    Some(j.outcome())
}

impl Correlator {
    /// What a compact record says of `hops` (and `omitted` more): their number and the
    /// places they passed, each once, in the order first seen, as if they were sorted by
    /// time (stably) and walked. Without building or sorting them: a place's first
    /// sighting is its earliest (time, position).
    fn trail<'a>(&'a self, hops: impl Iterator<Item = &'a HopRec>, omitted: usize) -> Trail {
        let mut first: Vec<(u64, usize, &str)> = Vec::with_capacity(TRAIL_PLACES);
        let mut count = 0;
        for (i, h) in hops.enumerate() {
            count += 1;
            let place = match h.point {
                Point::SocketIn | Point::SocketOut => "socket",
                _ => self.ifaces.get(h.iface),
            };
            match first.iter_mut().find(|(_, _, p)| *p == place) {
                Some(e) if h.ts < e.0 => (e.0, e.1) = (h.ts, i),
                Some(_) => {}
                None => first.push((h.ts, i, place)),
            }
        }
        first.sort_unstable_by_key(|&(ts, i, _)| (ts, i));
        let mut path = String::with_capacity(first.iter().map(|(_, _, p)| p.len() + 1).sum());
        for (k, (_, _, p)) in first.into_iter().enumerate() {
            if k > 0 {
                path.push('>');
            }
            path.push_str(p);
        }
        Trail {
            hop_count: count + omitted,
            path,
        }
    }

    fn hop_out(&self, h: &HopRec) -> Hop {
        let dns = h.has(super::B_DNS);
        Hop {
            ts_ns: h.ts,
            iface: self.ifaces.shared(h.iface),
            dir: h.point.as_str(),
            netns: h.netns,
            src: h.src,
            dst: h.dst,
            id: dns.then_some(h.id),
            qr: dns.then_some(h.is_response()),
            rcode: (dns && h.is_response()).then_some(h.rcode),
            edns: h.edns().map(|(udp, dnssec_ok)| HopEdns { udp, dnssec_ok }),
            tc: h.has(B_TC),
            proto: h.proto(),
            tcp_flags: (h.proto() == crate::decode::Proto::Tcp).then(|| h.tcp.short()),
            drop_reason: (h.drop_reason != 0).then(|| self.reason(h).to_owned()),
            tunnel: self.tunnels.get(h.tunnel, h.tunnel_sport),
        }
    }

    /// A forwarded query as a child record; `with_hops`: with its hop records (else an
    /// empty list: its parent is an `ok` lookup written compactly).
    fn leg_out(&self, lk: &LookupState, i: usize, end: u64, how: End, with_hops: bool) -> Lookup {
        let leg = &lk.legs[i];
        let resp = leg.hop(leg.resp);
        let last = leg.hops.last().copied().unwrap_or(leg.hops[0]);
        let (verdict, culprit, last_hop, detail) = self.leg_verdict(lk, i, end, how);
        Lookup {
            id: 0,
            client: leg.client(),
            server: leg.server(),
            qname: lk.qname.clone(),
            qtype: lk.qtype.clone(),
            rcode: resp.map(|h| h.rcode),
            verdict,
            culprit,
            last_hop: last_hop.or_else(|| Some(self.at(&last))),
            hint: None,
            latency_ms: resp.map(|h| ms(h.ts.saturating_sub(leg.first_ts()))),
            detail,
            hops: if with_hops {
                leg.hops.iter().map(|h| self.hop_out(h)).collect()
            } else {
                Vec::new()
            },
            children: lk
                .legs
                .iter()
                .enumerate()
                .filter(|(_, l)| l.parent == Some(i as u8))
                .map(|(j, _)| self.leg_out(lk, j, end, how, with_hops))
                .collect(),
            retries: 0,
            start_ts_ns: leg.first_ts(),
            netns: (leg.first().point == Point::SocketOut).then_some(leg.first().netns),
            hops_omitted: leg.hops_omitted,
            children_omitted: 0,
            origin: Origin::default(),
            trail: None,
        }
    }

    /// A forwarded query's own outcome (the lookup's verdict is decided at the root).
    fn leg_verdict(
        &self,
        lk: &LookupState,
        i: usize,
        end: u64,
        how: End,
    ) -> (Verdict, Option<String>, Option<String>, String) {
        let leg = &lk.legs[i];
        if let Some(h) = leg.hop(leg.drop) {
            let iface = self.ifaces.get(h.iface);
            return (
                Verdict::Dropped,
                Some(format!("{iface} ({})", self.reason(h))),
                Some(self.at(h)),
                format!("dropped at {iface}: {}", self.reason(h)),
            );
        }
        if let Some(h) = leg
            .hop(leg.uplink)
            .filter(|_| is_link_local(leg.server().ip()))
        {
            return (
                Verdict::LeftViaUplink,
                Some(self.ifaces.get(h.iface).to_owned()),
                Some(self.at(h)),
                format!("query to {} left via {}", leg.server(), self.at(h)),
            );
        }
        let ancestor = repeated_ancestor(lk, i);
        if leg.depth >= 1 && (leg.depth >= LOOP_DEPTH || ancestor.is_some()) {
            let again = ancestor.map_or(leg.server(), |a| served_at(&lk.legs[a]));
            return (
                Verdict::ForwardingLoop,
                Some(format!("{} <-> {again}", leg.client().ip())),
                None,
                format!(
                    "forwarded copy at depth {}: {again} was already asked on its path",
                    leg.depth
                ),
            );
        }
        let Some(h) = leg.hop(leg.resp) else {
            // Cut short at the cap: its reply may still have been on the way.
            let verdict = if how == End::Evicted
                || self.lost_during(leg.first_ts(), end) > 0
                || how == End::Stopped && end < lk.deadline
                || self.leg_tcp_gap(leg, end).is_some()
                || self.leg_iface_gap(leg, end).is_some()
            {
                Verdict::Unknown
            } else {
                Verdict::Unanswered
            };
            let last = leg.hops.last().copied().unwrap_or(leg.hops[0]);
            return (
                verdict,
                Some(leg.server().to_string()),
                Some(self.at(&last)),
                format!(
                    "no reply from {}; last seen at {}",
                    leg.server(),
                    self.at(&last)
                ),
            );
        };
        let rcode = h.rcode;
        let took_ns = h.ts.saturating_sub(leg.first_ts());
        if let Some((udp, dnssec_ok)) = leg.edns().filter(|_| h.rcode.is_edns_rejection()) {
            return (
                Verdict::UpstreamRejectsEdns,
                Some(leg.server().to_string()),
                Some(self.at(h)),
                format!(
                    "{} answered {rcode} to a query with OPT (udp={udp}, DO={})",
                    leg.server(),
                    u8::from(dnssec_ok)
                ),
            );
        }
        let verdict = if h.rcode.is_server_error() {
            Verdict::ServerError
        } else {
            Verdict::Ok
        };
        (
            verdict,
            (verdict != Verdict::Ok).then(|| h.src.to_string()),
            Some(self.at(h)),
            answered_in(&h.src, rcode, took_ns),
        )
    }
}

fn drop_hint(reason: &str, h: &HopRec) -> String {
    match reason {
        "NETFILTER_DROP" => {
            "a netfilter rule drops it: check NetworkPolicies and `iptables-save` / \
                             `nft list ruleset` on this node for DNS (udp/tcp 53)"
                .to_owned()
        }
        "IP_RPFILTER" => {
            "reverse-path filtering drops it: set net.ipv4.conf.all.rp_filter and the \
                          interface's rp_filter to 2 (loose), or fix the asymmetric route"
                .to_owned()
        }
        "NO_SOCKET" => format!(
            "nothing listens on {}: is the DNS server running and bound to that address?",
            h.dst
        ),
        "SOCKET_RCVBUFF" | "PROTO_MEM" => {
            "the receiver's socket buffer overflowed: the DNS server \
                                           is overloaded (scale it, or raise net.core.rmem_default)"
                .to_owned()
        }
        other => format!("the kernel dropped it ({other}): see the kernel's enum skb_drop_reason"),
    }
}

#[cfg(test)]
mod rule_tests {
    use super::*;

    #[test]
    fn durations_read_as_written() {
        assert_eq!(duration(5_000_000_000), "5 s");
        assert_eq!(duration(1_500_000_000), "1.5 s");
        assert_eq!(duration(300_000_000), "300 ms");
    }

    #[test]
    fn every_verdict_has_exactly_one_place_in_the_precedence() {
        for v in Verdict::ALL {
            assert_eq!(RULES.iter().filter(|r| *r == v).count(), 1, "{v}");
        }
        assert_eq!(RULES.len(), Verdict::ALL.len());
    }
}

#[cfg(test)]
mod latency_text {
    use super::*;

    /// The hand-written latency text is the float formatter's, digit for digit.
    #[test]
    fn answered_in_matches_the_formatter() {
        for server in [
            "10.96.0.10:53",
            "169.254.25.10:53",
            "[fd00::a]:5353",
            "0.0.0.0:0",
        ] {
            let server: std::net::SocketAddr = server.parse().unwrap();
            for rcode in [Rcode::NOERROR, Rcode(2), Rcode(3), Rcode(4095)] {
                for ns in [0, 499, 500, 1_500, 288_000, 7_010_130_000, u64::MAX] {
                    assert_eq!(
                        answered_in(&server, rcode, ns),
                        format!("{server} answered {rcode} in {:.3} ms", ms(ns))
                    );
                }
            }
        }
    }

    #[test]
    fn push_ms3_matches_the_float_formatter() {
        let mut values: Vec<u64> =
            vec![0, 1, 499, 500, 501, 999, 1000, 1499, 1500, 1501, 9_999_500];
        values.extend([
            999_999_499,
            999_999_500,
            999_999_501,
            1 << 50,
            (1 << 50) + 1,
            u64::MAX,
        ]);
        // A spread of magnitudes, each with the ends of a microsecond.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = x >> (x % 60);
            let base = v - v % 1000;
            values.extend([
                v,
                base.wrapping_add(499),
                base.wrapping_add(500),
                base.wrapping_add(501),
            ]);
        }
        for ns in values {
            let mut out = String::new();
            push_ms3(&mut out, ns);
            assert_eq!(out, format!("{:.3}", ms(ns)), "{ns} ns");
        }
    }
}

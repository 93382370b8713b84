//! Verdicts: from a finished lookup's legs and hops to one verdict, a culprit, a hint and
//! a one-line explanation, and the output records.
use std::fmt::Write as _;
use std::net::IpAddr;

use super::state::{
    B_TC, BADVERS, FORMERR, HopRec, Leg, LegKind, LookupState, NOTIMP, REFUSED, SERVFAIL, T_ACK,
    T_FIN, T_PSH, T_RST, T_SYN, rcode_name,
};
use super::{Correlator, End, Hop, HopEdns, Lookup, Verdict};
use crate::decode::{Point, text::socket_addr_string};

/// Forwarded copies of one question between the same two addresses, nested, that make a loop.
const LOOP_COPIES: usize = 3;
/// Forwarding this deep is a loop whatever the addresses.
const LOOP_DEPTH: u8 = 8;

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
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

fn is_server_error(rcode: u16) -> bool {
    matches!(rcode, SERVFAIL | REFUSED | NOTIMP)
}

/// What an upstream that does not understand EDNS0 answers to a query with OPT.
fn is_edns_rejection(rcode: u16) -> bool {
    matches!(rcode, FORMERR | BADVERS | NOTIMP)
}

/// Unordered address pair of a forwarded query, to spot A→B, B→A circulation.
fn pair(leg: &Leg) -> (IpAddr, IpAddr) {
    let (a, b) = (leg.client.ip(), leg.server.ip());
    if a <= b { (a, b) } else { (b, a) }
}

/// Copies of this leg's address pair along its chain of parents (itself included).
fn loop_copies(lk: &LookupState, i: usize) -> usize {
    let leg = &lk.legs[i];
    let key = pair(leg);
    let mut copies = 1;
    let mut parent = leg.parent;
    while let Some(p) = parent {
        let p = &lk.legs[usize::from(p)];
        if p.depth >= 1 && pair(p) == key {
            copies += 1;
        }
        parent = p.parent;
    }
    copies
}

fn is_looping(lk: &LookupState, i: usize) -> bool {
    let leg = &lk.legs[i];
    leg.depth >= 1 && (leg.depth >= LOOP_DEPTH || loop_copies(lk, i) >= LOOP_COPIES)
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
            _ => format!("{} {}", self.ifaces.get(h.iface), h.point.as_str()),
        }
    }

    fn reason(&self, h: &HopRec) -> &str {
        self.reasons.get(h.drop_reason)
    }

    /// A pod (not the host) sent the root query to a loopback address.
    fn pod_loopback(&self, lk: &LookupState) -> bool {
        let root = &lk.legs[0];
        root.server.ip().is_loopback()
            && root.first.point == Point::SocketOut
            && root.first.netns != self.cfg.host_netns
    }

    /// A NO_SOCKET drop that is the expected consequence of a more specific finding, not a
    /// cause of its own: nothing listens on the pod's loopback (loopback_nameserver), the
    /// client's connected socket refused a reply from the wrong source
    /// (reply_from_unexpected_source), or a late reply found the client gone after it retried.
    fn folded(&self, lk: &LookupState, i: usize, h: &HopRec, latest_client: usize) -> bool {
        let leg = &lk.legs[i];
        if leg.depth != 0 || self.reason(h) != "NO_SOCKET" {
            return false;
        }
        if h.is_query() {
            return self.pod_loopback(lk) && leg.server.ip().is_loopback();
        }
        leg.unexpected.is_some() || i != latest_client
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
        // What the client got: its last complete answer, else the truncated one.
        let reply = client_legs()
            .filter_map(|l| l.hop(l.final_reply))
            .max_by_key(|h| (!h.has(B_TC), h.ts));
        let j = self.root_verdict(&lk, reply, end, how);
        let root = &lk.legs[0];
        let mut hops: Vec<Hop> = client_legs()
            .flat_map(|l| l.hops.iter())
            .chain(lk.tcp_hops.iter())
            .map(|h| self.hop_out(h))
            .collect();
        hops.sort_by_key(|h| h.ts_ns);
        let children = lk
            .legs
            .iter()
            .enumerate()
            .filter(|(_, l)| l.depth == 1)
            .map(|(i, _)| self.leg_out(&lk, i, end, how))
            .collect();
        Lookup {
            id: 0,
            client: socket_addr_string(&root.client),
            server: socket_addr_string(&root.server),
            rcode: reply.map(|h| rcode_name(h.rcode)),
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
            netns: (root.first.point == Point::SocketOut).then_some(root.first.netns),
            hops_omitted: client_legs().map(|l| l.hops_omitted).sum(),
            children_omitted: lk.legs_omitted,
            qname: lk.qname,
            qtype: lk.qtype,
        }
    }

    // Precedence, first match wins. Direct evidence of where a packet died or went astray
    // (a drop, a loopback server, a query leaving by the uplink, a loop) explains every
    // symptom after it, so it comes first. A reply from the wrong source is a definite NAT
    // fault that makes a correct answer unusable. EDNS rejection and truncation are causes
    // behind the client's SERVFAIL or missing answer. Disagreement and a plain server error
    // come next. Absence of a reply comes last, and only with full coverage and no loss:
    // otherwise it is `unknown`.
    fn root_verdict(
        &self,
        lk: &LookupState,
        reply: Option<&HopRec>,
        end: u64,
        how: End,
    ) -> Judgement {
        let root = &lk.legs[0];
        let client_legs = || lk.legs.iter().filter(|l| l.depth == 0);
        let answered = reply.is_some_and(|h| !h.has(B_TC));
        let lost = self.lost_during(lk.start, end);
        // Capture stopped before the client's timeout ran out, or missed bytes of a TCP
        // stream that could hold the reply: no reply seen proves nothing.
        let premature = how == End::Stopped && end < lk.deadline || self.tcp_gap(lk, end).is_some();
        let latest_client = lk
            .legs
            .iter()
            .enumerate()
            .filter(|(_, l)| l.depth == 0)
            .max_by_key(|(_, l)| l.first_ts)
            .map_or(0, |(i, _)| i);
        let qdesc = format!("{} {}", lk.qname, lk.qtype);

        // evicted: cut short at the cap, whatever it had shown so far
        if how == End::Evicted {
            let last = lk
                .legs
                .iter()
                .flat_map(|l| l.hops.iter())
                .chain(lk.tcp_hops.iter())
                .max_by_key(|h| h.ts)
                .unwrap_or(&root.hops[0]);
            let cap = self.cfg.max_lookups;
            return Judgement::new(Verdict::Unknown, None, Some(self.at(last)))
                .hint(format!(
                    "more than {cap} lookups were open at once (a flood of unanswered queries?); a shorter --timeout ends them sooner"
                ))
                .detail(format!(
                    "evicted: {cap} live lookups at the cap; {qdesc} was last seen at {}",
                    self.at(last)
                ));
        }

        // dropped
        let drops = lk
            .legs
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.hop(l.drop).map(|h| (i, h)));
        let mut folded_query_drop = false;
        let mut folded_reply_drop = false;
        for (i, h) in drops {
            if self.folded(lk, i, h, latest_client) {
                if h.is_query() {
                    folded_query_drop = true;
                } else if lk.legs[i].unexpected.is_some() {
                    folded_reply_drop = true;
                }
                continue;
            }
            let what = if h.is_response() { "reply" } else { "query" };
            let iface = self.ifaces.get(h.iface);
            let reason = self.reason(h);
            return Judgement::new(
                Verdict::Dropped,
                Some(format!("{iface} ({reason})")),
                Some(self.at(h)),
            )
            .hint(drop_hint(reason, h))
            .detail(format!(
                "the kernel dropped the {what} {} → {} at {iface}: {reason}",
                h.src, h.dst
            ));
        }

        // loopback_nameserver
        if self.pod_loopback(lk) {
            let refused = reply.is_some_and(|h| h.rcode == REFUSED);
            if refused || !answered {
                let why = if refused {
                    "it was refused (REFUSED)"
                } else if folded_query_drop {
                    "nothing listens there (NO_SOCKET)"
                } else {
                    "no reply"
                };
                let last = root.query_hops().last().copied().unwrap_or(root.hops[0]);
                let says = format!(
                    "the pod (netns {}) queries the loopback nameserver {}; nothing on the node ever sees the query",
                    root.first.netns, root.server
                );
                if !refused && !folded_query_drop && (lost > 0 || premature) {
                    return self.unknown(lk, lost, end, &last, &says);
                }
                return Judgement::new(
                    Verdict::LoopbackNameserver,
                    Some(root.server.to_string()),
                    Some(self.at(&last)),
                )
                .hint(
                    "the pod's resolv.conf points at a loopback stub (systemd-resolved's 127.0.0.53 \
                     copied from the host): set kubelet --resolv-conf=/run/systemd/resolve/resolv.conf",
                )
                .detail(format!("{says}; {why}"));
            }
        }

        // left_via_uplink
        let uplinked = lk
            .legs
            .iter()
            .filter(|l| is_link_local(l.server.ip()))
            .find_map(|l| l.hop(l.uplink).map(|h| (l, h)));
        if let Some((leg, h)) = uplinked {
            let iface = self.ifaces.get(h.iface);
            let snat = if h.src == leg.client {
                String::new()
            } else {
                format!(" (SNAT to {})", h.src)
            };
            let outcome = if leg.resp.is_some() {
                "a reply came back from the network"
            } else {
                "no reply"
            };
            return Judgement::new(Verdict::LeftViaUplink, Some(iface.to_owned()), Some(self.at(h)))
                .hint(format!(
                    "traffic to the node-local address {} is masqueraded out of the node: exclude it from \
                     (BPF) masquerading (e.g. Cilium bpf.masquerade, ip-masq-agent nonMasqueradeCIDRs) so it is delivered locally",
                    leg.server.ip()
                ))
                .detail(format!(
                    "query to {} left via {iface}{snat}; never delivered to the local server; {outcome}",
                    leg.server
                ));
        }

        // forwarding_loop: report the deepest looping leg.
        let looping = (0..lk.legs.len())
            .filter(|&i| is_looping(lk, i))
            .max_by_key(|&i| (lk.legs[i].depth, lk.legs[i].first_ts));
        if let Some(i) = looping {
            let leg = &lk.legs[i];
            let (a, b) = (leg.client.ip(), leg.server);
            let copies = lk
                .legs
                .iter()
                .filter(|l| l.depth >= 1 && pair(l) == pair(leg))
                .count();
            let netns = if b.ip().is_loopback() {
                format!(" in netns {}", leg.first.netns)
            } else {
                String::new()
            };
            let last = leg.hops.last().copied().unwrap_or(leg.hops[0]);
            let outcome = match reply {
                Some(h) if answered => format!("the client got {}", rcode_name(h.rcode)),
                _ => "the client got no answer".to_owned(),
            };
            return Judgement::new(
                Verdict::ForwardingLoop,
                Some(format!("{a} <-> {b}{netns}")),
                Some(self.at(&last)),
            )
            .hint(
                "a forwarder forwards back to itself: point its `forward` at a real upstream instead of \
                 a resolv.conf that lists 127.0.0.x (kubelet --resolv-conf), or enable CoreDNS's `loop` plugin",
            )
            .detail(format!(
                "the same question circulates between {a} and {b}{netns}: {copies} forwarded copies, nested {} deep{}; {outcome}",
                leg.depth,
                if lk.legs_omitted > 0 {
                    format!(" (+{} not kept)", lk.legs_omitted)
                } else {
                    String::new()
                },
            ));
        }

        // reply_from_unexpected_source
        let misaddressed = client_legs().find_map(|l| l.hop(l.unexpected).map(|h| (l, h)));
        if let Some((leg, h)) = misaddressed {
            let fate = if folded_reply_drop {
                "; the client's socket dropped it (NO_SOCKET)"
            } else if leg.final_reply.is_none() {
                "; the client never accepted it"
            } else {
                ""
            };
            return Judgement::new(
                Verdict::ReplyFromUnexpectedSource,
                Some(h.src.to_string()),
                Some(self.at(h)),
            )
            .hint("DNAT not reversed: load br_netfilter / set net.bridge.bridge-nf-call-iptables=1")
            .detail(format!(
                "the reply to {} came from {}, not from {} that it queried: DNAT was not reversed{fate}",
                leg.client, h.src, leg.server
            ));
        }

        // upstream_rejects_edns: the deepest query with OPT that got FORMERR/BADVERS/NOTIMP.
        let rejected = lk
            .legs
            .iter()
            .enumerate()
            .filter_map(|(i, l)| {
                let (udp, dnssec_ok) = l.edns()?;
                let h = l.hop(l.resp)?;
                is_edns_rejection(h.rcode).then_some((i, l, h, udp, dnssec_ok))
            })
            .max_by_key(|(_, l, ..)| (l.depth, std::cmp::Reverse(l.first_ts)));
        if let Some((i, leg, h, udp, dnssec_ok)) = rejected {
            let retry = lk
                .legs
                .iter()
                .enumerate()
                .filter(|(j, l)| {
                    *j != i
                        && l.parent == leg.parent
                        && l.depth == leg.depth
                        && l.edns().is_none()
                        && l.first_ts >= leg.first_ts
                })
                .find_map(|(_, l)| l.hop(l.resp));
            let retried = match retry {
                Some(r) => format!("the retry without OPT got {}", rcode_name(r.rcode)),
                None => "no retry without OPT was seen".to_owned(),
            };
            return Judgement::new(
                Verdict::UpstreamRejectsEdns,
                Some(leg.server.to_string()),
                Some(self.at(h)),
            )
            .hint(
                "the upstream rejects EDNS0: forward to a resolver that supports EDNS0, \
                 or disable EDNS towards that upstream",
            )
            .detail(format!(
                "upstream {} answers {} to queries with OPT (udp={udp}, DO={}); {retried}",
                leg.server,
                rcode_name(h.rcode),
                u8::from(dnssec_ok)
            ));
        }

        // truncated_no_tcp
        if lk.await_tcp.is_some() && !answered {
            let tcp_last = lk
                .legs
                .iter()
                .filter(|l| l.kind == LegKind::Tcp)
                .flat_map(|l| l.hops.iter())
                .chain(lk.tcp_hops.iter())
                .max_by_key(|h| h.ts);
            let tc_reply = reply.copied().unwrap_or(root.hops[0]);
            let says = format!("the answer from {} was truncated (TC=1)", root.server);
            if lost > 0 || premature {
                return self.unknown(lk, lost, end, tcp_last.unwrap_or(&tc_reply), &says);
            }
            let j = match tcp_last {
                Some(t) => Judgement::new(
                    Verdict::TruncatedNoTcp,
                    Some(format!("{} (tcp)", t.dst)),
                    Some(self.at(t)),
                )
                .detail(format!(
                    "{says}; the TCP retry was last seen at {} and never answered",
                    self.at(t)
                )),
                None => Judgement::new(
                    Verdict::TruncatedNoTcp,
                    Some(root.client.ip().to_string()),
                    Some(self.at(&tc_reply)),
                )
                .detail(format!(
                    "{says}; no TCP retry from {} followed within {:.0} ms",
                    root.client.ip(),
                    ms(self.cfg.forward_window_ns)
                )),
            };
            return j.hint(
                "allow DNS over TCP port 53 to the server (NetworkPolicy, firewall), \
                 and use a client that retries over TCP",
            );
        }

        // upstream_disagreement: only lookups that involve an answering upstream (the
        // last one to answer is the one whose answer the client got).
        let own = lk
            .legs
            .iter()
            .filter(|l| self.leaves_node(l))
            .filter_map(|l| l.hop(l.resp).map(|h| (l, h)))
            .max_by_key(|(_, h)| h.ts);
        if let Some((leg, h)) = own
            && let Some(answers) = self.upstreams.disagreement(lk.qhash, end)
        {
            let mut list = String::new();
            for (n, a) in answers.iter().enumerate() {
                let sep = if n == 0 { "" } else { ", " };
                let _ = write!(list, "{sep}{} {}", a.upstream, rcode_name(a.rcode));
            }
            let failing: Vec<_> = answers.iter().filter(|a| a.rcode != 0).collect();
            let culprit = failing
                .iter()
                .max_by_key(|a| a.ts)
                .map_or(leg.server, |a| a.upstream);
            let only = if failing.iter().all(|a| a.upstream == culprit)
                && answers.iter().any(|a| a.rcode == 0)
            {
                format!("; it fails only when forwarded to {culprit}")
            } else {
                String::new()
            };
            return Judgement::new(
                Verdict::UpstreamDisagreement,
                Some(culprit.to_string()),
                Some(self.at(h)),
            )
            .hint(
                "upstreams disagree on this name: forward internal zones only to resolvers that serve them \
                 (a separate `forward` per zone), not to a random mix of public and internal resolvers",
            )
            .detail(format!(
                "upstreams disagree on {qdesc} within {:.0} s: {list}; this lookup got {} from {}{only}",
                self.cfg.disagreement_window_ns as f64 / 1e9,
                rcode_name(h.rcode),
                leg.server
            ));
        }

        // server_error: follow the error rcode down to where it first comes out.
        if let Some(h) = reply.filter(|h| answered && is_server_error(h.rcode)) {
            let mut cur = lk
                .legs
                .iter()
                .position(|l| l.depth == 0 && l.hop(l.final_reply).is_some_and(|f| f.ts == h.ts))
                .unwrap_or(0);
            while let Some(next) = lk
                .legs
                .iter()
                .enumerate()
                .filter(|(_, l)| l.parent == Some(cur as u8))
                .filter(|(_, l)| l.hop(l.resp).is_some_and(|r| r.rcode == h.rcode))
                .max_by_key(|(_, l)| l.first_ts)
                .map(|(i, _)| i)
            {
                cur = next;
            }
            let origin = &lk.legs[cur];
            let out = origin.hop(origin.resp).copied().unwrap_or(*h);
            let rcode = rcode_name(h.rcode);
            let mut detail = format!("{} answered {rcode}", out.src);
            let below: Vec<String> = lk
                .legs
                .iter()
                .filter(|l| l.parent == Some(cur as u8))
                .map(|l| match l.hop(l.resp) {
                    Some(r) => format!("{} {}", l.server, rcode_name(r.rcode)),
                    None => format!("{} no reply", l.server),
                })
                .collect();
            if below.is_empty() {
                detail.push_str(" itself (no forwarded query seen)");
            } else {
                let _ = write!(detail, "; its forwarded queries: {}", below.join(", "));
            }
            let hint = match h.rcode {
                REFUSED => format!(
                    "{} refuses this query: check its ACLs (allow-query, CoreDNS acl) and that it serves this zone",
                    out.src
                ),
                NOTIMP => format!("{} does not implement this query", out.src),
                _ => format!(
                    "{} failed to resolve it: check its logs and its own upstreams",
                    out.src
                ),
            };
            return Judgement::new(
                Verdict::ServerError,
                Some(out.src.to_string()),
                Some(self.at(&out)),
            )
            .hint(hint)
            .detail(detail);
        }

        if let Some(h) = reply.filter(|_| answered) {
            let retried = match lk.retries {
                0 => String::new(),
                1 => ", after 1 retry".to_owned(),
                n => format!(", after {n} retries"),
            };
            return Judgement::new(Verdict::Ok, None, Some(self.at(h))).detail(format!(
                "answered {} in {:.3} ms{retried}",
                rcode_name(h.rcode),
                ms(h.ts.saturating_sub(lk.start))
            ));
        }

        // No reply: name the last place anything of this lookup was seen.
        let last = lk
            .legs
            .iter()
            .flat_map(|l| l.hops.iter())
            .filter(|h| h.point != Point::Drop)
            .max_by_key(|h| h.ts)
            .copied()
            .unwrap_or(root.hops[0]);
        let says = format!("no reply to {} from {}", root.client, root.server);
        if lost > 0 || premature {
            return self.unknown(lk, lost, end, &last, &says);
        }
        if let Some(gap) = self.coverage_gap(&last) {
            return Judgement::new(Verdict::Unknown, None, Some(self.at(&last)))
                .hint("watch the missing hop (enable the socket hop and hook every interface)")
                .detail(format!(
                    "{says}; last seen at {}, but {gap}",
                    self.at(&last)
                ));
        }
        let what = if last.is_response() { "reply" } else { "query" };
        Judgement::new(
            Verdict::Unanswered,
            Some(last.dst.to_string()),
            Some(self.at(&last)),
        )
        .hint(format!(
            "nothing answered within {:.0} s: check that {} is up and reachable from {}",
            ms(self.cfg.timeout_ns) / 1e3,
            last.dst,
            self.at(&last)
        ))
        .detail(format!(
            "{says} within {:.0} s; the {what} was last seen at {} ({} → {})",
            ms(self.cfg.timeout_ns) / 1e3,
            self.at(&last),
            last.src,
            last.dst
        ))
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

    fn hop_out(&self, h: &HopRec) -> Hop {
        let dns = h.has(super::B_DNS);
        Hop {
            ts_ns: h.ts,
            iface: self.ifaces.get(h.iface).to_owned(),
            dir: h.point.as_str(),
            netns: h.netns,
            src: h.src,
            dst: h.dst,
            id: dns.then_some(h.id),
            qr: dns.then_some(h.is_response()),
            rcode: (dns && h.is_response()).then(|| rcode_name(h.rcode)),
            edns: h.edns().map(|(udp, dnssec_ok)| HopEdns { udp, dnssec_ok }),
            tc: h.has(B_TC),
            proto: h.proto(),
            tcp_flags: (h.proto() == crate::decode::Proto::Tcp).then(|| tcp_flags(h.tcp)),
            drop_reason: (h.drop_reason != 0).then(|| self.reason(h).to_owned()),
        }
    }

    /// A forwarded query as a child record.
    fn leg_out(&self, lk: &LookupState, i: usize, end: u64, how: End) -> Lookup {
        let leg = &lk.legs[i];
        let resp = leg.hop(leg.resp);
        let last = leg.hops.last().copied().unwrap_or(leg.hops[0]);
        let (verdict, culprit, last_hop, detail) = self.leg_verdict(lk, i, end, how);
        Lookup {
            id: 0,
            client: socket_addr_string(&leg.client),
            server: socket_addr_string(&leg.server),
            qname: lk.qname.clone(),
            qtype: lk.qtype.clone(),
            rcode: resp.map(|h| rcode_name(h.rcode)),
            verdict,
            culprit,
            last_hop: last_hop.or_else(|| Some(self.at(&last))),
            hint: None,
            latency_ms: resp.map(|h| ms(h.ts.saturating_sub(leg.first_ts))),
            detail,
            hops: leg.hops.iter().map(|h| self.hop_out(h)).collect(),
            children: lk
                .legs
                .iter()
                .enumerate()
                .filter(|(_, l)| l.parent == Some(i as u8))
                .map(|(j, _)| self.leg_out(lk, j, end, how))
                .collect(),
            retries: 0,
            start_ts_ns: leg.first_ts,
            netns: (leg.first.point == Point::SocketOut).then_some(leg.first.netns),
            hops_omitted: leg.hops_omitted,
            children_omitted: 0,
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
            .filter(|_| is_link_local(leg.server.ip()))
        {
            return (
                Verdict::LeftViaUplink,
                Some(self.ifaces.get(h.iface).to_owned()),
                Some(self.at(h)),
                format!("query to {} left via {}", leg.server, self.at(h)),
            );
        }
        if is_looping(lk, i) {
            return (
                Verdict::ForwardingLoop,
                Some(format!("{} <-> {}", leg.client.ip(), leg.server)),
                None,
                format!("forwarded copy at depth {}", leg.depth),
            );
        }
        let Some(h) = leg.hop(leg.resp) else {
            // Cut short at the cap: its reply may still have been on the way.
            let verdict = if how == End::Evicted
                || self.lost_during(leg.first_ts, end) > 0
                || how == End::Stopped && end < lk.deadline
                || self.leg_tcp_gap(leg, end).is_some()
            {
                Verdict::Unknown
            } else {
                Verdict::Unanswered
            };
            let last = leg.hops.last().copied().unwrap_or(leg.hops[0]);
            return (
                verdict,
                Some(leg.server.to_string()),
                Some(self.at(&last)),
                format!(
                    "no reply from {}; last seen at {}",
                    leg.server,
                    self.at(&last)
                ),
            );
        };
        let rcode = rcode_name(h.rcode);
        let took = ms(h.ts.saturating_sub(leg.first_ts));
        if let Some((udp, dnssec_ok)) = leg.edns().filter(|_| is_edns_rejection(h.rcode)) {
            return (
                Verdict::UpstreamRejectsEdns,
                Some(leg.server.to_string()),
                Some(self.at(h)),
                format!(
                    "{} answered {rcode} to a query with OPT (udp={udp}, DO={})",
                    leg.server,
                    u8::from(dnssec_ok)
                ),
            );
        }
        let verdict = if is_server_error(h.rcode) {
            Verdict::ServerError
        } else {
            Verdict::Ok
        };
        (
            verdict,
            (verdict != Verdict::Ok).then(|| h.src.to_string()),
            Some(self.at(h)),
            format!("{} answered {rcode} in {took:.3} ms", h.src),
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

/// tcpdump's notation: "S", "S.", "P.", "F.", "R".
fn tcp_flags(bits: u8) -> String {
    let text: String = [
        (T_FIN, 'F'),
        (T_SYN, 'S'),
        (T_RST, 'R'),
        (T_PSH, 'P'),
        (T_ACK, '.'),
    ]
    .iter()
    .filter(|(b, _)| bits & b != 0)
    .map(|(_, c)| *c)
    .collect();
    if text.is_empty() { "none".into() } else { text }
}

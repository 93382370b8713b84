//! Scenario fixtures: `scenarios/*.toml` list compact packet events (and losses) on an
//! injected clock, and the lookups the correlator must produce from them.
//!
//! ```toml
//! description = "what it reproduces"
//! qname = "www.example.test."       # default question of every event
//! qtype = "A"
//! [config]                          # optional; defaults below
//! uplinks = ["eth0"]                # host_netns = 1, timeout_ms = 5000, full coverage
//! events = [
//!   { ts_ms = 0.0, iface = "socket", dir = "socket-out", netns = 2, src = "10.244.0.10:40000", dst = "169.254.25.10:53", id = 0x1001, edns = { udp = 1232, do = false } },
//!   { ts_ms = 0.9, iface = "lxcpod0", dir = "egress", src = "169.254.25.10:53", dst = "10.244.0.10:40000", id = 0x1001, rcode = "NOERROR" },
//! ]
//! loss = [{ ts_ms = 1.0, n = 37 }]
//! [[expect]]                        # one per lookup, in start order
//! verdict = "ok"
//! rcode = "NOERROR"                 # "none" for no rcode
//! culprit = "none"                  # substring, or "none"
//! last_hop = "socket-in"            # substring, or "none"
//! children = 1                      # direct children, always checked (default 0)
//! retries = 0                       # always checked (default 0)
//! ```
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Config, CorrelateStats, Correlator, Coverage, Event, Lookup, UpstreamStats};
use crate::decode::tunnel::{Tunnel, TunnelKind};
use crate::decode::{Meta, Packet, Point, Proto, TcpFlags, dns};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Scenario {
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub config: ConfigRow,
    pub qname: Option<String>,
    pub qtype: Option<String>,
    #[serde(default)]
    pub events: Vec<Row>,
    #[serde(default)]
    pub loss: Vec<LossRow>,
    pub flood: Option<Flood>,
    /// When `finish` is called; default: 30 s after the last event.
    pub end_ms: Option<f64>,
    #[serde(default)]
    pub expect: Vec<Expect>,
    pub expect_stats: Option<ExpectStats>,
    #[serde(default)]
    pub expect_upstream: Vec<ExpectUpstream>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConfigRow {
    pub timeout_ms: Option<u64>,
    pub forward_window_ms: Option<u64>,
    pub disagreement_window_ms: Option<u64>,
    pub max_lookups: Option<usize>,
    pub uplinks: Option<Vec<String>>,
    pub host_netns: Option<u64>,
    pub socket: Option<bool>,
    pub drops: Option<bool>,
    pub all_ifaces: Option<bool>,
    pub ifaces: Option<Vec<String>>,
}

impl ConfigRow {
    pub fn build(&self) -> Config {
        let d = Config::default();
        let ms = |v: Option<u64>, default: u64| v.map_or(default, |m| m * 1_000_000);
        Config {
            timeout_ns: ms(self.timeout_ms, d.timeout_ns),
            forward_window_ns: ms(self.forward_window_ms, d.forward_window_ns),
            disagreement_window_ns: ms(self.disagreement_window_ms, d.disagreement_window_ns),
            max_lookups: self.max_lookups.unwrap_or(d.max_lookups),
            uplinks: self.uplinks.clone().unwrap_or_else(|| vec!["eth0".into()]),
            host_netns: self.host_netns.unwrap_or(HOST_NETNS),
            watched: Coverage {
                ifaces: self.ifaces.clone().unwrap_or_default(),
                all_ifaces: self.all_ifaces.unwrap_or(self.ifaces.is_none()),
                socket: self.socket.unwrap_or(true),
                drops: self.drops.unwrap_or(true),
            },
            ok_hops: d.ok_hops,
        }
    }
}

/// Netns cookie of the host in fixtures; pods use 2, 3, 4…
pub(super) const HOST_NETNS: u64 = 1;

/// One packet event.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Row {
    pub ts_ms: f64,
    pub iface: String,
    /// "ingress", "egress", "socket-in", "socket-out" or "drop".
    pub dir: String,
    /// Default: the host netns (required for socket events).
    pub netns: Option<u64>,
    /// "udp" (default) or "tcp".
    pub proto: Option<String>,
    pub src: String,
    pub dst: String,
    /// DNS id; a row with `tcp_flags` and no id is a TCP segment without DNS.
    pub id: Option<u16>,
    /// Default: true when `rcode` is set.
    pub qr: Option<bool>,
    pub qname: Option<String>,
    pub qtype: Option<String>,
    pub rcode: Option<String>,
    pub edns: Option<EdnsRow>,
    pub tc: Option<bool>,
    /// tcpdump notation: "S", "S.", "P.", "R".
    pub tcp_flags: Option<String>,
    pub drop_reason: Option<String>,
    /// The overlay tunnel the packet was seen in: "vxlan VNI OUTER_SRC OUTER_DST".
    pub tunnel: Option<String>,
    /// The sending task, on socket-out rows: "PID COMM".
    pub task: Option<String>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EdnsRow {
    pub udp: u16,
    #[serde(rename = "do")]
    pub dnssec_ok: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LossRow {
    pub ts_ms: f64,
    pub n: u64,
}

/// Generated unanswered queries: distinct names, ports and IDs, `interval_us` apart.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Flood {
    pub count: u64,
    pub interval_us: u64,
    pub iface: String,
    pub src_ip: String,
    pub dst: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Expect {
    pub client: Option<String>,
    pub server: Option<String>,
    pub qname: Option<String>,
    pub verdict: String,
    pub culprit: Option<String>,
    pub last_hop: Option<String>,
    pub rcode: Option<String>,
    #[serde(default)]
    pub children: usize,
    pub descendants: Option<usize>,
    #[serde(default)]
    pub retries: u32,
    pub hops: Option<usize>,
    pub detail: Option<String>,
    pub hint: Option<String>,
    pub child_verdicts: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ExpectStats {
    pub evicted: Option<u64>,
    pub finished: Option<u64>,
    pub started: Option<u64>,
    pub orphan_responses: Option<u64>,
    /// Live lookups never exceeded this.
    pub live_max: Option<usize>,
    pub by_verdict: Option<BTreeMap<String, u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ExpectUpstream {
    pub upstream: String,
    pub queries: u64,
    pub answered: u64,
    pub unanswered: u64,
    pub rcodes: BTreeMap<String, u64>,
}

fn point(dir: &str) -> Point {
    Point::parse(dir).unwrap_or_else(|| panic!("unknown dir {dir:?}"))
}

fn tcp_flags(text: &str) -> TcpFlags {
    TcpFlags {
        syn: text.contains('S'),
        ack: text.contains('.'),
        fin: text.contains('F'),
        rst: text.contains('R'),
        psh: text.contains('P'),
    }
}

/// "vxlan 42 10.0.0.1:49152 10.0.0.2:4789".
fn tunnel(text: &str) -> Tunnel {
    let words: Vec<&str> = text.split_whitespace().collect();
    let [kind, vni, src, dst] = words[..] else {
        panic!("tunnel {text:?}: want \"KIND VNI OUTER_SRC OUTER_DST\"");
    };
    Tunnel {
        kind: match kind {
            "vxlan" => TunnelKind::Vxlan,
            "geneve" => TunnelKind::Geneve,
            _ => panic!("tunnel kind {kind:?}"),
        },
        vni: vni.parse().expect("a VNI"),
        src: src.parse().expect("an outer source"),
        dst: dst.parse().expect("an outer destination"),
    }
}

pub(super) fn ns(ms: f64) -> u64 {
    (ms * 1e6).round() as u64
}

/// Builds the event a capture would have produced for `row`.
pub(super) fn event(row: &Row, qname: &str, qtype: &str) -> Event {
    let point = point(&row.dir);
    let is_socket = matches!(point, Point::SocketIn | Point::SocketOut);
    let netns = row.netns.unwrap_or_else(|| {
        assert!(!is_socket, "socket event at {} ms needs a netns", row.ts_ms);
        HOST_NETNS
    });
    let proto = match row.proto.as_deref() {
        Some("tcp") => Proto::Tcp,
        Some("udp") => Proto::Udp,
        None if row.tcp_flags.is_some() => Proto::Tcp,
        None => Proto::Udp,
        Some(other) => panic!("unknown proto {other:?}"),
    };
    let qr = row.qr.unwrap_or(row.rcode.is_some());
    let dns = row.id.map(|id| dns::Message {
        id,
        qr,
        opcode: "QUERY".into(),
        rcode: match (qr, &row.rcode) {
            (true, Some(name)) => dns::Rcode::from_name(name).expect("an rcode name"),
            _ => dns::Rcode::NOERROR,
        },
        flags: dns::Flags {
            tc: row.tc.unwrap_or(false),
            rd: true,
            ra: qr,
            ..dns::Flags::default()
        },
        question: Some(dns::Question {
            name: row.qname.as_deref().unwrap_or(qname).into(),
            qtype: row.qtype.clone().unwrap_or_else(|| qtype.to_owned()).into(),
            qclass: "IN".into(),
        }),
        qdcount: 1,
        ancount: 0,
        nscount: 0,
        arcount: u16::from(row.edns.is_some()),
        answers: Vec::new(),
        edns: row.edns.map(|e| dns::Edns {
            udp_size: e.udp,
            dnssec_ok: e.dnssec_ok,
            version: 0,
            options: Vec::new(),
        }),
    });
    Event {
        packet: Packet {
            meta: Meta {
                ts_ns: ns(row.ts_ms),
                ifindex: 0,
                netns,
                point,
                wire_len: 100,
                cap_len: 100,
                pid: row
                    .task
                    .as_deref()
                    .and_then(|t| t.split_once(' ')?.0.parse().ok())
                    .unwrap_or(0),
                comm: row
                    .task
                    .as_deref()
                    .and_then(|t| Some(t.split_once(' ')?.1.to_owned())),
            },
            proto: Some(proto),
            src: Some(
                row.src
                    .parse()
                    .unwrap_or_else(|e| panic!("src {:?}: {e}", row.src)),
            ),
            dst: Some(
                row.dst
                    .parse()
                    .unwrap_or_else(|e| panic!("dst {:?}: {e}", row.dst)),
            ),
            tcp_flags: row.tcp_flags.as_deref().map(tcp_flags),
            dns: dns.map(std::sync::Arc::new),
            issue: None,
            tunnel: row.tunnel.as_deref().map(tunnel).map(Box::new),
        },
        iface: row.iface.as_str().into(),
        drop_reason: row.drop_reason.clone(),
    }
}

/// What a run produced.
pub(super) struct Outcome {
    /// Every finished lookup, in start order.
    pub lookups: Vec<Lookup>,
    pub stats: CorrelateStats,
    pub upstreams: Vec<UpstreamStats>,
    pub live_max: usize,
}

enum Step<'a> {
    Packet(&'a Row),
    Loss(u64),
}

/// Feeds the scenario through a correlator the way the pipeline would: `expire` before
/// every event, then `expire` and `finish` at the end.
pub(super) fn run(sc: &Scenario) -> Outcome {
    run_config(sc, sc.config.build())
}

/// [`run`] with the correlator configured by `cfg` rather than the fixture alone.
pub(super) fn run_config(sc: &Scenario, cfg: Config) -> Outcome {
    let mut c = Correlator::new(cfg);
    let qname = sc.qname.as_deref().unwrap_or("www.example.test.");
    let qtype = sc.qtype.as_deref().unwrap_or("A");
    let mut steps: Vec<(u64, Step<'_>)> = sc
        .events
        .iter()
        .map(|r| (ns(r.ts_ms), Step::Packet(r)))
        .chain(sc.loss.iter().map(|l| (ns(l.ts_ms), Step::Loss(l.n))))
        .collect();
    steps.sort_by_key(|(t, _)| *t);
    let mut lookups = Vec::new();
    let mut live_max = 0;
    let mut last = 0;
    for (t, step) in steps {
        lookups.extend(c.expire(t));
        match step {
            Step::Packet(row) => lookups.extend(c.ingest(event(row, qname, qtype), t)),
            Step::Loss(n) => c.note_loss(n, t),
        }
        live_max = live_max.max(c.lookups.len());
        last = t;
    }
    if let Some(f) = &sc.flood {
        let row = Row {
            iface: f.iface.clone(),
            dir: "ingress".into(),
            src: "0.0.0.0:0".into(),
            dst: f.dst.clone(),
            id: Some(0),
            ..Row::default()
        };
        let src_ip: std::net::IpAddr = f.src_ip.parse().expect("flood src_ip");
        for i in 0..f.count {
            let t = last + (i + 1) * f.interval_us * 1000;
            let mut ev = event(&row, &format!("q{i}.flood.test."), "A");
            ev.packet.meta.ts_ns = t;
            ev.packet.src = Some((src_ip, 1024 + (i % 60_000) as u16).into());
            std::sync::Arc::make_mut(ev.packet.dns.as_mut().expect("a query")).id = i as u16;
            lookups.extend(c.expire(t));
            lookups.extend(c.ingest(ev, t));
            live_max = live_max.max(c.lookups.len());
            assert!(
                c.by_msg.len() <= c.cfg.max_lookups
                    && c.by_q.len() <= c.cfg.max_lookups
                    && c.deadlines.len() <= 4 * c.cfg.max_lookups + 256,
                "an index outgrew the lookup cap"
            );
        }
        last += f.count * f.interval_us * 1000;
    }
    let end = sc.end_ms.map_or(last + 30_000_000_000, ns);
    lookups.extend(c.expire(end));
    lookups.extend(c.finish(end));
    assert!(
        c.by_msg.is_empty() && c.by_q.is_empty() && c.deadlines.is_empty(),
        "index entries outlived their lookups"
    );
    assert!(c.tc_wait.is_empty() && c.tcp_flows.is_empty());
    lookups.sort_by_key(|l| l.start_ts_ns);
    Outcome {
        lookups,
        stats: c.stats(),
        upstreams: c.upstreams(),
        live_max,
    }
}

/// One line per lookup, for failure messages.
pub(super) fn summary(lookups: &[Lookup]) -> String {
    lookups
        .iter()
        .map(|l| {
            format!(
                "  {} → {} {} rcode={:?} verdict={} culprit={:?} last_hop={:?} children={} retries={} hops={}\n    detail: {}",
                l.client,
                l.server,
                l.qname,
                l.rcode,
                l.verdict,
                l.culprit,
                l.last_hop,
                l.children.len(),
                l.retries,
                l.hops.len(),
                l.detail
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn check_opt(
    what: &str,
    got: Option<&str>,
    want: Option<&str>,
    substring: bool,
) -> Result<(), String> {
    let Some(want) = want else { return Ok(()) };
    let ok = match (want, got) {
        ("none", None) => true,
        ("none", Some(_)) | (_, None) => false,
        (w, Some(g)) => {
            if substring {
                g.contains(w)
            } else {
                g == w
            }
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{what}: got {got:?}, want {want:?}"))
    }
}

fn check(l: &Lookup, e: &Expect) -> Result<(), String> {
    let mut errs = Vec::new();
    let mut push = |r: Result<(), String>| {
        if let Err(e) = r {
            errs.push(e);
        }
    };
    if l.verdict.as_str() != e.verdict {
        push(Err(format!(
            "verdict: got {}, want {}",
            l.verdict, e.verdict
        )));
    }
    push(check_opt(
        "client",
        Some(&l.client.to_string()),
        e.client.as_deref(),
        false,
    ));
    push(check_opt(
        "server",
        Some(&l.server.to_string()),
        e.server.as_deref(),
        false,
    ));
    push(check_opt(
        "qname",
        Some(&l.qname),
        e.qname.as_deref(),
        false,
    ));
    push(check_opt(
        "culprit",
        l.culprit.as_deref(),
        e.culprit.as_deref(),
        true,
    ));
    push(check_opt(
        "last_hop",
        l.last_hop.as_deref(),
        e.last_hop.as_deref(),
        true,
    ));
    push(check_opt(
        "rcode",
        l.rcode.map(|r| r.name()).as_deref(),
        e.rcode.as_deref(),
        false,
    ));
    push(check_opt(
        "detail",
        Some(&l.detail),
        e.detail.as_deref(),
        true,
    ));
    push(check_opt(
        "hint",
        l.hint.as_deref(),
        e.hint.as_deref(),
        true,
    ));
    if l.children.len() != e.children {
        push(Err(format!(
            "children: got {}, want {}",
            l.children.len(),
            e.children
        )));
    }
    if let Some(d) = e.descendants
        && l.descendants() != d
    {
        push(Err(format!(
            "descendants: got {}, want {d}",
            l.descendants()
        )));
    }
    if l.retries != e.retries {
        push(Err(format!(
            "retries: got {}, want {}",
            l.retries, e.retries
        )));
    }
    if let Some(h) = e.hops
        && l.hops.len() != h
    {
        push(Err(format!("hops: got {}, want {h}", l.hops.len())));
    }
    if let Some(cv) = &e.child_verdicts {
        let got: Vec<&str> = l.children.iter().map(|c| c.verdict.as_str()).collect();
        if got != *cv {
            push(Err(format!("child verdicts: got {got:?}, want {cv:?}")));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join("; "))
    }
}

pub(super) fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/correlate/scenarios")
}

pub(super) fn load(name: &str) -> Scenario {
    let path = dir().join(format!("{name}.toml"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs one fixture and panics with every mismatch.
pub(super) fn assert_scenario(name: &str) -> Outcome {
    let sc = load(name);
    let out = run(&sc);
    let mut errs = Vec::new();
    if out.lookups.len() != sc.expect.len() && sc.flood.is_none() {
        errs.push(format!(
            "{} lookups, expected {}",
            out.lookups.len(),
            sc.expect.len()
        ));
    }
    for (n, (l, e)) in out.lookups.iter().zip(&sc.expect).enumerate() {
        if let Err(err) = check(l, e) {
            errs.push(format!("lookup #{n} ({}): {err}", l.client));
        }
    }
    if let Some(s) = &sc.expect_stats {
        let st = &out.stats;
        let mut cmp = |what: &str, got: u64, want: Option<u64>| {
            if want.is_some_and(|w| w != got) {
                errs.push(format!("stats.{what}: got {got}, want {want:?}"));
            }
        };
        cmp("evicted", st.evicted, s.evicted);
        cmp("finished", st.finished, s.finished);
        cmp("started", st.started, s.started);
        cmp("orphan_responses", st.orphan_responses, s.orphan_responses);
        if let Some(max) = s.live_max
            && out.live_max > max
        {
            errs.push(format!("live lookups reached {}, cap {max}", out.live_max));
        }
        if let Some(want) = &s.by_verdict {
            let got: BTreeMap<String, u64> = st
                .by_verdict
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect();
            if got != *want {
                errs.push(format!("stats.by_verdict: got {got:?}, want {want:?}"));
            }
        }
    }
    for want in &sc.expect_upstream {
        match out.upstreams.iter().find(|u| u.upstream == want.upstream) {
            None => errs.push(format!("no upstream {}", want.upstream)),
            Some(u) => {
                let got = (u.queries, u.answered, u.unanswered, &u.rcodes);
                let exp = (want.queries, want.answered, want.unanswered, &want.rcodes);
                if got != exp {
                    errs.push(format!(
                        "upstream {}: got (queries, answered, unanswered, rcodes) {got:?}, want {exp:?}",
                        want.upstream
                    ));
                }
            }
        }
    }
    if !sc.expect_upstream.is_empty() && out.upstreams.len() != sc.expect_upstream.len() {
        let got: Vec<&str> = out.upstreams.iter().map(|u| u.upstream.as_str()).collect();
        errs.push(format!("upstreams: got {got:?}"));
    }
    assert!(
        errs.is_empty(),
        "scenario {name} ({}):\n{}\ngot:\n{}",
        sc.description,
        errs.join("\n"),
        summary(&out.lookups)
    );
    out
}

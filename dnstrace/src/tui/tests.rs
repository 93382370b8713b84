//! Whole-screen tests: scripted feed and keys through `handle` (the path the real loop
//! takes), drawn on a `TestBackend`, compared with insta snapshots. No clock, no terminal.
use std::collections::BTreeMap;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::{Terminal, backend::TestBackend, style::Color};

use super::*;
use crate::decode::dns::Rcode;
use crate::{
    correlate::{Coverage, Hop, HopEdns, Lookup, UpstreamStats, Verdict},
    decode::Proto,
};

const NODE_NS: u64 = 1;
const POD_NS: u64 = 8193;
/// Monotonic 0 is 2026-11-30 21:40:00 UTC.
const OFFSET_NS: i128 = 1_796_074_800_000_000_000;
const MS: u64 = 1_000_000;

fn header() -> HeaderInfo {
    HeaderInfo {
        source: "watch".to_owned(),
        coverage: Coverage {
            ifaces: ["dtpod0", "dtcdns0", "dtup0", "dtnld0"]
                .map(str::to_owned)
                .to_vec(),
            all_ifaces: true,
            socket: true,
            drops: true,
        },
        netns: NODE_NS,
        uplinks: vec!["dtup0".to_owned()],
        ports: vec![53],
        clock_offset_ns: OFFSET_NS,
    }
}

struct H {
    at_us: u64,
    iface: &'static str,
    dir: &'static str,
    src: &'static str,
    dst: &'static str,
    id: u16,
    reply: Option<&'static str>,
    edns: Option<(u16, bool)>,
}

fn hop(t0: u64, h: H) -> Hop {
    Hop {
        ts_ns: t0 + h.at_us * 1000,
        iface: h.iface.into(),
        dir: h.dir,
        netns: if h.iface == "socket" { POD_NS } else { NODE_NS },
        src: h.src.parse().unwrap(),
        dst: h.dst.parse().unwrap(),
        id: Some(h.id),
        qr: Some(h.reply.is_some()),
        rcode: h.reply.and_then(Rcode::from_name),
        edns: h.edns.map(|(udp, d)| HopEdns { udp, dnssec_ok: d }),
        tc: false,
        proto: Proto::Udp,
        tcp_flags: None,
        drop_reason: None,
        tunnel: None,
    }
}

#[allow(clippy::too_many_arguments)]
fn q(
    at_us: u64,
    iface: &'static str,
    dir: &'static str,
    src: &'static str,
    dst: &'static str,
    id: u16,
    reply: Option<&'static str>,
    edns: Option<(u16, bool)>,
) -> H {
    H {
        at_us,
        iface,
        dir,
        src,
        dst,
        id,
        reply,
        edns,
    }
}

/// A lookup with no hops; the tests add what they need.
fn base(t0: u64, client: &str, server: &str, qname: &str, qtype: &str, verdict: Verdict) -> Lookup {
    Lookup {
        id: t0 / MS,
        client: client.parse().unwrap(),
        server: server.parse().unwrap(),
        qname: qname.into(),
        qtype: qtype.to_owned().into(),
        rcode: Rcode::from_name("NOERROR"),
        verdict,
        culprit: None,
        last_hop: None,
        hint: None,
        latency_ms: Some(1.0),
        detail: String::new(),
        hops: Vec::new(),
        children: Vec::new(),
        retries: 0,
        start_ts_ns: t0,
        netns: Some(POD_NS),
        hops_omitted: 0,
        children_omitted: 0,
        trail: None,
        origin: Default::default(),
    }
}

/// pod → node-local-dns (socket hop) → ClusterIP, DNATed to CoreDNS → upstream via MASQUERADE.
fn ok_lookup(t0: u64) -> Lookup {
    let e0 = Some((1232, false));
    let e1 = Some((1232, true));
    let (pod, nld) = ("10.244.0.10:42837", "169.254.25.10:53");
    let (nl_out, cip, cdns) = ("198.51.100.10:38055", "10.96.0.10:53", "10.244.1.10:53");
    let (ub, ub_nat, up) = (
        "10.244.1.10:19634",
        "198.51.100.10:19634",
        "203.0.113.53:53",
    );
    let mut upstream = base(
        t0 + 475 * 1000,
        ub,
        up,
        "www.example.test.",
        "A",
        Verdict::Ok,
    );
    upstream.latency_ms = Some(0.21);
    upstream.netns = None;
    upstream.hops = vec![
        hop(t0, q(475, "socket", "socket-out", ub, up, 0x4957, None, e1)),
        hop(t0, q(500, "dtup0", "egress", ub_nat, up, 0x4957, None, e1)),
        hop(
            t0,
            q(
                687,
                "dtup0",
                "ingress",
                up,
                ub_nat,
                0x4957,
                Some("NOERROR"),
                e1,
            ),
        ),
    ];
    let mut forward = base(
        t0 + 295 * 1000,
        nl_out,
        cip,
        "www.example.test.",
        "A",
        Verdict::Ok,
    );
    forward.latency_ms = Some(0.55);
    forward.netns = Some(NODE_NS);
    forward.hops = vec![
        hop(
            t0,
            q(295, "socket", "socket-out", nl_out, cip, 0x4a43, None, e0),
        ),
        hop(
            t0,
            q(322, "dtcdns0", "egress", nl_out, cdns, 0x4a43, None, e0),
        ),
        hop(
            t0,
            q(
                840,
                "dtcdns0",
                "ingress",
                cdns,
                nl_out,
                0x4a43,
                Some("NOERROR"),
                e0,
            ),
        ),
        hop(
            t0,
            q(
                845,
                "socket",
                "socket-in",
                cip,
                nl_out,
                0x4a43,
                Some("NOERROR"),
                e0,
            ),
        ),
    ];
    forward.children = vec![upstream];
    let mut l = base(t0, pod, nld, "www.example.test.", "A", Verdict::Ok);
    l.latency_ms = Some(0.98);
    l.detail = "answered".to_owned();
    l.hops = vec![
        hop(t0, q(0, "socket", "socket-out", pod, nld, 0x2797, None, e0)),
        hop(t0, q(31, "dtpod0", "ingress", pod, nld, 0x2797, None, e0)),
        hop(t0, q(53, "socket", "socket-in", pod, nld, 0x2797, None, e0)),
        hop(
            t0,
            q(
                956,
                "socket",
                "socket-out",
                nld,
                pod,
                0x2797,
                Some("NOERROR"),
                e0,
            ),
        ),
        hop(
            t0,
            q(
                980,
                "dtpod0",
                "egress",
                nld,
                pod,
                0x2797,
                Some("NOERROR"),
                e0,
            ),
        ),
    ];
    l.children = vec![forward];
    l
}

fn server_error(t0: u64) -> Lookup {
    let (pod, cip, cdns) = ("10.244.0.10:51200", "10.96.0.10:53", "10.244.1.10:53");
    let mut l = base(t0, pod, cip, "api.broken.test.", "A", Verdict::ServerError);
    l.rcode = Rcode::from_name("SERVFAIL");
    l.latency_ms = Some(12.4);
    l.detail = "203.0.113.53:53 answered SERVFAIL and CoreDNS passed it on".to_owned();
    l.culprit = Some("203.0.113.53:53".to_owned());
    l.last_hop = Some("dtup0 ingress".to_owned());
    l.hint = Some("check the upstream resolver's logs for broken.test".to_owned());
    l.hops = vec![
        hop(t0, q(0, "dtpod0", "ingress", pod, cip, 0x11aa, None, None)),
        hop(
            t0,
            q(20, "dtcdns0", "egress", pod, cdns, 0x11aa, None, None),
        ),
        hop(
            t0,
            q(
                12_300,
                "dtcdns0",
                "ingress",
                cdns,
                pod,
                0x11aa,
                Some("SERVFAIL"),
                None,
            ),
        ),
        hop(
            t0,
            q(
                12_400,
                "dtpod0",
                "egress",
                cip,
                pod,
                0x11aa,
                Some("SERVFAIL"),
                None,
            ),
        ),
    ];
    l
}

fn unanswered(t0: u64) -> Lookup {
    let (pod, nld) = ("10.244.0.10:60111", "169.254.25.10:53");
    let mut l = base(
        t0,
        pod,
        nld,
        "slow.example.test.",
        "AAAA",
        Verdict::Unanswered,
    );
    l.rcode = None;
    l.latency_ms = None;
    l.retries = 1;
    l.detail = "no reply within 5s; the query was last seen leaving dtup0".to_owned();
    l.culprit = Some("203.0.113.53:53".to_owned());
    l.last_hop = Some("dtup0 egress".to_owned());
    l.hint = Some("the upstream does not answer: check its reachability and firewall".to_owned());
    l.hops = vec![
        hop(
            t0,
            q(0, "socket", "socket-out", pod, nld, 0x5151, None, None),
        ),
        hop(
            t0,
            q(
                1_000_000,
                "socket",
                "socket-out",
                pod,
                nld,
                0x5151,
                None,
                None,
            ),
        ),
    ];
    l
}

fn rejects_edns(t0: u64) -> Lookup {
    let mut l = base(
        t0,
        "10.244.0.10:40001",
        "169.254.25.10:53",
        "edns.example.test.",
        "TXT",
        Verdict::UpstreamRejectsEdns,
    );
    l.rcode = Rcode::from_name("NOERROR");
    l.latency_ms = Some(3.7);
    l.detail = "203.0.113.53:53 answered FORMERR to a query with OPT".to_owned();
    l.hint = Some("the upstream rejects EDNS: upgrade it or disable EDNS towards it".to_owned());
    l
}

fn unknown(t0: u64) -> Lookup {
    let mut l = base(
        t0,
        "10.244.0.11:39999",
        "10.96.0.10:53",
        "lost.example.test.",
        "A",
        Verdict::Unknown,
    );
    l.rcode = None;
    l.latency_ms = None;
    l.netns = None;
    l.detail = "the tracer lost 12 events while this lookup was open".to_owned();
    l
}

fn nxdomain(t0: u64) -> Lookup {
    let mut l = base(
        t0,
        "10.244.0.10:33333",
        "169.254.25.10:53",
        "nx.example.test.",
        "A",
        Verdict::Ok,
    );
    l.rcode = Rcode::from_name("NXDOMAIN");
    l.latency_ms = Some(0.44);
    l
}

fn upstreams() -> Vec<UpstreamStats> {
    vec![UpstreamStats {
        upstream: "203.0.113.53:53".to_owned(),
        queries: 5,
        answered: 4,
        unanswered: 1,
        rcodes: BTreeMap::from([("NOERROR".to_owned(), 3), ("SERVFAIL".to_owned(), 1)]),
        p50_ms: Some(0.42),
        p99_ms: Some(12.1),
    }]
}

fn lookup_ev(l: Lookup) -> Event {
    Event::Feed(Feed::Lookup(Box::new(l)))
}

fn key(c: KeyCode) -> Event {
    Event::Key(KeyEvent::new(c, KeyModifiers::NONE))
}

fn chr(c: char) -> Event {
    key(KeyCode::Char(c))
}

/// A screen after a second of traffic: six lookups of five verdicts, counters, upstreams.
fn busy(size: (u16, u16)) -> Model {
    let mut m = Model::new(header(), size);
    let s = 1_000 * MS;
    let script = [
        Event::Feed(Feed::Stats(LiveStats {
            at_ns: 0,
            ..LiveStats::default()
        })),
        lookup_ev(ok_lookup(s + 100 * MS)),
        lookup_ev(server_error(s + 200 * MS)),
        lookup_ev(unanswered(s + 300 * MS)),
        lookup_ev(rejects_edns(s + 400 * MS)),
        lookup_ev(unknown(s + 500 * MS)),
        lookup_ev(nxdomain(s + 600 * MS)),
        Event::Feed(Feed::Upstreams(upstreams())),
        Event::Feed(Feed::Stats(LiveStats {
            at_ns: 1_000 * MS,
            packets: 57,
            lookups: 6,
            open: 1,
            kernel_lost: 0,
            dropped: 0,
            malformed: 2,
            evicted: 0,
        })),
    ];
    for ev in script {
        handle(&mut m, ev);
    }
    m
}

fn draw(m: &Model) -> Terminal<TestBackend> {
    let mut t = Terminal::new(TestBackend::new(m.size.0, m.size.1)).expect("terminal");
    t.draw(|f| view(f, m)).expect("draw");
    t
}

fn screen(m: &Model) -> String {
    draw(m).backend().to_string()
}

/// The qnames of the list, top to bottom.
fn order(m: &Model) -> Vec<String> {
    m.visible()
        .iter()
        .map(|r| r.lookup.qname.to_string())
        .collect()
}

#[test]
fn initial_screen() {
    let m = busy((120, 40));
    insta::assert_snapshot!("initial_120x40", screen(&m));
}

#[test]
fn verdicts_are_coloured_by_severity() {
    let m = busy((120, 40));
    let t = draw(&m);
    let buf = t.backend().buffer();
    let fg_of = |needle: &str| {
        for y in 0..buf.area.height {
            let line: String = (0..buf.area.width)
                .map(|x| buf[(x, y)].symbol().to_owned())
                .collect();
            if let Some(col) = line.find(needle) {
                // Byte offset to column: everything before it on these rows is ASCII.
                let x = line[..col].chars().count() as u16;
                return Some(buf[(x, y)].fg);
            }
        }
        None
    };
    assert_eq!(fg_of("server_error"), Some(Color::Red));
    assert_eq!(fg_of("upstream_rejects_edns"), Some(Color::Yellow));
    assert_eq!(fg_of("unknown"), Some(Color::Cyan));
}

#[test]
fn empty_state() {
    let m = Model::new(header(), (100, 20));
    insta::assert_snapshot!("empty_100x20", screen(&m));
}

/// The same flags as the command line, in the `/` filter.
#[test]
fn filter_takes_the_command_lines_flags() {
    let mut m = busy((120, 30));
    let all = order(&m).len();
    handle(&mut m, chr('/'));
    for c in "--verdict problems".chars() {
        handle(&mut m, chr(c));
    }
    handle(&mut m, key(KeyCode::Enter));
    let problems = order(&m);
    assert!(!problems.is_empty() && problems.len() < all, "{problems:?}");
    assert!(m.visible().iter().all(|r| r.lookup.verdict != Verdict::Ok));
    // A wrong value says so while typing, and the text is then matched as typed.
    handle(&mut m, chr('/'));
    for _ in "--verdict problems".chars() {
        handle(&mut m, key(KeyCode::Backspace));
    }
    for c in "--verdict okay".chars() {
        handle(&mut m, chr(c));
    }
    assert!(m.query().unwrap_err().contains("unknown verdict"));
    assert!(order(&m).is_empty());
    insta::assert_snapshot!("filter_bad_flag", screen(&m));
}

#[test]
fn filter_by_qname_or_client() {
    let mut m = busy((120, 30));
    for ev in [chr('/'), chr('E'), chr('d')] {
        handle(&mut m, ev);
    }
    // Applied as typed, case-insensitively.
    assert_eq!(order(&m), ["edns.example.test."]);
    insta::assert_snapshot!("filter_typing", screen(&m));
    handle(&mut m, key(KeyCode::Backspace));
    handle(&mut m, key(KeyCode::Enter));
    assert_eq!(m.filter, "E");
    assert_eq!(m.editing, None);
    for ev in [chr('/'), key(KeyCode::Backspace)] {
        handle(&mut m, ev);
    }
    for c in "10.244.0.11".chars() {
        handle(&mut m, chr(c));
    }
    handle(&mut m, key(KeyCode::Enter));
    assert_eq!(order(&m), ["lost.example.test."], "client substring");
    insta::assert_snapshot!("filter_client", screen(&m));
    // Esc gives back the filter in force before.
    for ev in [chr('/'), chr('z'), key(KeyCode::Esc)] {
        handle(&mut m, ev);
    }
    assert_eq!(m.filter, "10.244.0.11");
    assert_eq!(order(&m).len(), 1);
    // Keys typed into the filter are not commands.
    for ev in [chr('/'), chr('q'), chr('p')] {
        handle(&mut m, ev);
    }
    assert!(!m.quit && !m.paused);
    assert_eq!(m.editing.as_deref(), Some("10.244.0.11qp"));
    assert!(order(&m).is_empty());
    insta::assert_snapshot!("filter_no_match", screen(&m));
}

#[test]
fn verdict_filter_cycles() {
    let mut m = busy((120, 30));
    handle(&mut m, chr('v'));
    assert_eq!(m.verdicts, VerdictFilter::Problems);
    assert_eq!(
        order(&m),
        [
            "lost.example.test.",
            "edns.example.test.",
            "slow.example.test.",
            "api.broken.test.",
        ]
    );
    insta::assert_snapshot!("verdicts_problems", screen(&m));
    // Then each verdict seen, in the order of Verdict::ALL, then all again.
    let mut seen = Vec::new();
    for _ in 0..5 {
        handle(&mut m, chr('v'));
        seen.push(m.verdicts);
    }
    assert_eq!(
        seen,
        [
            VerdictFilter::Only(Verdict::Ok),
            VerdictFilter::Only(Verdict::UpstreamRejectsEdns),
            VerdictFilter::Only(Verdict::ServerError),
            VerdictFilter::Only(Verdict::Unanswered),
            VerdictFilter::Only(Verdict::Unknown),
        ]
    );
    handle(&mut m, chr('v'));
    assert_eq!(m.verdicts, VerdictFilter::All);
    handle(&mut m, chr('V'));
    assert_eq!(m.verdicts, VerdictFilter::Only(Verdict::Unknown));
    handle(&mut m, chr('V'));
    handle(&mut m, chr('V'));
    assert_eq!(m.verdicts, VerdictFilter::Only(Verdict::ServerError));
    assert_eq!(order(&m), ["api.broken.test."]);
}

#[test]
fn pause_holds_the_list_and_counts_what_arrives() {
    let mut m = busy((120, 30));
    handle(&mut m, chr('p'));
    let before = order(&m);
    for i in 0..3 {
        let mut l = nxdomain(5_000 * MS + i * MS);
        l.qname = format!("new{i}.example.test.").into();
        handle(&mut m, lookup_ev(l));
    }
    assert_eq!(order(&m), before, "the list does not move while paused");
    assert_eq!(m.pending(), 3);
    assert_eq!(m.totals[&Verdict::Ok], 5, "but they are counted");
    insta::assert_snapshot!("paused", screen(&m));
    handle(&mut m, chr('p'));
    assert_eq!(m.pending(), 0);
    assert_eq!(order(&m)[0], "new2.example.test.");
    assert_eq!(order(&m).len(), 9);
}

#[test]
fn detail_of_the_selected_lookup() {
    let mut m = busy((120, 40));
    // Newest first: nx, lost, edns, slow, api, www.
    for ev in [key(KeyCode::End), key(KeyCode::Enter)] {
        handle(&mut m, ev);
    }
    assert!(m.detail);
    assert_eq!(&*m.selected().unwrap().lookup.qname, "www.example.test.");
    let text = screen(&m);
    // NAT is visible: the ClusterIP before, CoreDNS's address after the DNAT.
    assert!(
        text.contains("198.51.100.10:38055 → 10.96.0.10:53"),
        "{text}"
    );
    assert!(
        text.contains("198.51.100.10:38055 → 10.244.1.10:53"),
        "{text}"
    );
    insta::assert_snapshot!("detail_ok_forwarded", text);
    // The detail holds on to its lookup while new ones arrive.
    handle(&mut m, lookup_ev(nxdomain(9_000 * MS)));
    assert_eq!(&*m.selected().unwrap().lookup.qname, "www.example.test.");
    handle(&mut m, key(KeyCode::Up));
    assert_eq!(&*m.selected().unwrap().lookup.qname, "api.broken.test.");
    insta::assert_snapshot!("detail_server_error", screen(&m));
    handle(&mut m, key(KeyCode::Enter));
    assert!(!m.detail);
}

#[test]
fn help_overlay() {
    let mut m = busy((120, 40));
    handle(&mut m, chr('?'));
    assert!(m.help);
    insta::assert_snapshot!("help", screen(&m));
    // Any key closes it, and does nothing else.
    handle(&mut m, chr('p'));
    assert!(!m.help && !m.paused);
}

#[test]
fn resize_small_and_large() {
    let mut m = busy((120, 40));
    handle(&mut m, Event::Resize(80, 16));
    assert_eq!(m.size, (80, 16));
    insta::assert_snapshot!("small_80x16", screen(&m));
    handle(&mut m, key(KeyCode::Enter));
    insta::assert_snapshot!("small_80x16_detail", screen(&m));
    handle(&mut m, key(KeyCode::Enter));
    handle(&mut m, Event::Resize(180, 50));
    insta::assert_snapshot!("large_180x50", screen(&m));
    // Nothing breaks on a terminal far too small.
    for (w, h) in [(10, 3), (1, 1), (2, 0)] {
        handle(&mut m, Event::Resize(w, h));
        let mut m2 = m.clone();
        handle(&mut m2, key(KeyCode::Enter));
        let _ = screen(&m);
        let _ = screen(&m2);
    }
}

#[test]
fn sort_cycles() {
    let mut m = busy((120, 30));
    handle(&mut m, chr('s'));
    assert_eq!(m.sort, Sort::Latency);
    // Unanswered first, then the slowest.
    assert_eq!(
        order(&m),
        [
            "lost.example.test.",
            "slow.example.test.",
            "api.broken.test.",
            "edns.example.test.",
            "www.example.test.",
            "nx.example.test.",
        ]
    );
    handle(&mut m, chr('s'));
    assert_eq!(m.sort, Sort::Severity);
    let sev: Vec<_> = m
        .visible()
        .iter()
        .map(|r| r.lookup.verdict.severity())
        .collect();
    assert!(sev.windows(2).all(|w| w[0] >= w[1]), "{sev:?}");
    assert_eq!(
        order(&m)[0],
        "slow.example.test.",
        "newest of the errors first"
    );
    handle(&mut m, chr('s'));
    assert_eq!(m.sort, Sort::Time);
}

#[test]
fn navigation_and_follow() {
    let mut m = busy((120, 10));
    let page = view::flow_rows(&m);
    assert_eq!(
        page, 3,
        "10 rows: header 4, footer 1, list title and columns 2"
    );
    assert_eq!(&*m.selected().unwrap().lookup.qname, "nx.example.test.");
    // At the top, the selection follows the newest lookup.
    handle(&mut m, lookup_ev(nxdomain(7_000 * MS)));
    assert_eq!(m.selected().unwrap().seq, 6);
    handle(&mut m, key(KeyCode::Down));
    let held = m.selected().unwrap().seq;
    assert_eq!(held, 5);
    // Below the top, it stays on its lookup.
    handle(&mut m, lookup_ev(nxdomain(8_000 * MS)));
    assert_eq!(m.selected().unwrap().seq, held);
    handle(&mut m, key(KeyCode::PageDown));
    assert_eq!(m.selected().unwrap().seq, 2);
    handle(&mut m, key(KeyCode::End));
    assert_eq!(m.selected().unwrap().seq, 0);
    let text = screen(&m);
    assert!(
        text.contains("www.example.test."),
        "scrolled to the end:\n{text}"
    );
    assert!(!text.contains("nx.example.test."), "{text}");
    handle(&mut m, key(KeyCode::PageUp));
    assert_eq!(m.selected().unwrap().seq, 3);
    handle(&mut m, key(KeyCode::Home));
    assert!(m.cursor.follow);
    assert_eq!(m.selected().unwrap().seq, 7);
    handle(&mut m, key(KeyCode::Up));
    assert_eq!(m.selected().unwrap().seq, 7);
}

#[test]
fn rows_are_bounded() {
    let mut m = Model::new(header(), (120, 30));
    for i in 0..(MAX_ROWS as u64 + 25) {
        handle(&mut m, lookup_ev(nxdomain(i * MS)));
    }
    assert_eq!(m.len(), MAX_ROWS);
    assert_eq!(m.evicted_rows, 25);
    assert_eq!(m.totals[&Verdict::Ok], MAX_ROWS as u64 + 25);
    // Paused: the pending ones are bounded too.
    m.max_rows = 4;
    handle(&mut m, chr('p'));
    for i in 0..6 {
        handle(&mut m, lookup_ev(nxdomain(i * MS)));
    }
    assert_eq!(m.pending(), 4);
    handle(&mut m, chr('p'));
    assert_eq!(m.len(), 4);
    assert!(screen(&m).contains("older not kept"));
}

#[test]
fn quit_keys() {
    for ev in [
        chr('q'),
        Event::Key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
    ] {
        let mut m = busy((80, 24));
        handle(&mut m, ev);
        assert!(m.quit);
    }
    // Ctrl-C quits even while typing a filter.
    let mut m = busy((80, 24));
    handle(&mut m, chr('/'));
    handle(
        &mut m,
        Event::Key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
    );
    assert!(m.quit);
}

#[test]
fn ended_feed_is_shown() {
    let mut m = busy((120, 30));
    handle(&mut m, Event::FeedEnded);
    assert!(screen(&m).contains("ENDED"));
}

#[test]
fn rates_come_from_the_stats() {
    let m = busy((120, 30));
    assert_eq!(m.rates(), (57.0, 6.0));
    let text = screen(&m);
    assert!(text.contains("packets 57 (57.0/s)"), "{text}");
    assert!(text.contains("lookups 6 (6.0/s), 1 open"), "{text}");
    assert!(text.contains("malformed 2"), "{text}");
}

#[test]
fn feed_queue_never_blocks_and_counts_drops() {
    let (mut tx, rx) = channel(2);
    for i in 0..5 {
        tx.lookup(nxdomain(i));
    }
    assert_eq!(tx.dropped(), 3);
    let mut m = Model::new(header(), (80, 24));
    while let Ok(f) = rx.rx.try_recv() {
        handle(&mut m, Event::Feed(f));
    }
    assert_eq!(m.len(), 2);
    // The counters carry the drops; the upstream table goes along once a second.
    let mut calls = 0;
    tx.live(
        LiveStats {
            at_ns: 10,
            ..LiveStats::default()
        },
        || {
            calls += 1;
            upstreams()
        },
    );
    tx.live(
        LiveStats {
            at_ns: 20,
            ..LiveStats::default()
        },
        || {
            calls += 1;
            upstreams()
        },
    );
    assert_eq!(calls, 1);
    let got: Vec<Feed> = rx.rx.try_iter().collect();
    assert!(matches!(got[0], Feed::Stats(LiveStats { dropped: 3, .. })));
    assert!(matches!(got[1], Feed::Upstreams(_)));
    // close() is what ends the screen loop.
    tx.close();
    assert_eq!(rx.shared.state.load(Ordering::Relaxed), CLOSE);
    drop(tx);
    assert!(matches!(rx.rx.try_recv(), Err(TryRecvError::Disconnected)));
}

#[test]
fn detail_scrolls_within_its_lines() {
    let mut m = busy((120, 24));
    for ev in [key(KeyCode::End), key(KeyCode::Enter)] {
        handle(&mut m, ev);
    }
    let max = view::detail_scroll_max(&m);
    assert!(max > 0, "the forwarded chain does not fit in 24 rows");
    assert!(screen(&m).contains("more lines"));
    for _ in 0..20 {
        handle(&mut m, chr(']'));
    }
    assert_eq!(m.detail_scroll, max, "no scrolling past the end");
    let text = screen(&m);
    assert!(text.contains("lines above"), "{text}");
    assert!(!text.contains("more lines"), "{text}");
    assert!(
        text.contains("203.0.113.53:53 → 198.51.100.10:19634"),
        "the last hop: {text}"
    );
    insta::assert_snapshot!("detail_scrolled", text);
    for _ in 0..20 {
        handle(&mut m, chr('['));
    }
    assert_eq!(m.detail_scroll, 0);
    // Another selection starts at the top of its detail.
    handle(&mut m, chr(']'));
    handle(&mut m, key(KeyCode::Up));
    assert_eq!(m.detail_scroll, 0);
}

#[test]
fn a_panic_restores_the_terminal() {
    install_panic_hook();
    // As if the screen were up (no real terminal here: restoring it is harmless).
    ACTIVE.store(true, Ordering::SeqCst);
    let r = std::panic::catch_unwind(|| panic!("a bug while the TUI is up"));
    assert!(r.is_err());
    assert!(
        !ACTIVE.load(Ordering::SeqCst),
        "the panic hook restored the terminal"
    );
}

/// `--auto` follows interfaces: a pod's veth that appears, then goes, changes the count
/// and the names the header shows.
#[test]
fn header_follows_the_interfaces_watched() {
    let mut m = Model::new(header(), (200, 12));
    assert!(
        screen(&m).contains("4 interfaces, all of this netns: dtpod0 dtcdns0 dtup0 dtnld0"),
        "{}",
        screen(&m)
    );
    let mut c = header().coverage;
    c.ifaces.push("dtveth7".to_owned());
    handle(&mut m, Event::Feed(Feed::Coverage(c.clone())));
    assert!(
        screen(&m).contains("5 interfaces, all of this netns: dtpod0 dtcdns0 dtup0 dtnld0 dtveth7"),
        "{}",
        screen(&m)
    );
    c.ifaces.retain(|i| i != "dtpod0");
    handle(&mut m, Event::Feed(Feed::Coverage(c)));
    let s = screen(&m);
    assert!(
        s.contains("4 interfaces, all of this netns: dtcdns0 dtup0 dtnld0 dtveth7"),
        "{s}"
    );
}

/// A pod's lookup shows its namespace/name in the client column and the detail, and the
/// `/` filter finds it by pod, by word or by `--pod`.
#[test]
fn a_pods_lookup_is_shown_and_found_by_its_name() {
    let mut m = busy((120, 30));
    let mut l = ok_lookup(1_700 * MS);
    l.qname = "pod.example.test.".into();
    l.origin.pod = Some(std::sync::Arc::new(crate::correlate::PodRef {
        namespace: Some("shop".into()),
        name: Some("web-7f9c".into()),
        uid: "u-1".into(),
    }));
    handle(&mut m, lookup_ev(l));
    assert!(screen(&m).contains("shop/web-7f9c"), "{}", screen(&m));
    for query in ["web-7f9c", "--pod shop/web-*", "--namespace shop"] {
        handle(&mut m, chr('/'));
        for c in query.chars() {
            handle(&mut m, chr(c));
        }
        handle(&mut m, key(KeyCode::Enter));
        assert_eq!(order(&m), ["pod.example.test."], "{query}");
        handle(&mut m, chr('/'));
        while m.editing.as_deref().is_some_and(|e| !e.is_empty()) {
            handle(&mut m, key(KeyCode::Backspace));
        }
        handle(&mut m, key(KeyCode::Enter));
    }
    handle(&mut m, key(KeyCode::Enter));
    let selected = screen(&m);
    assert!(selected.contains("pod shop/web-7f9c"), "{selected}");
}

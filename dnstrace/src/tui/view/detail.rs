//! Detail pane: the selected lookup's verdict, hint, EDNS, hop timeline (with the
//! addresses as seen at each hop, so NAT shows) and forwarded queries.
use ratatui::{
    Frame,
    layout::Rect,
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Paragraph},
};

use super::{bold, clip, dim, fmt_ms, netns_label, verdict_style};
use crate::{
    correlate::{Hop, Lookup},
    tui::model::Model,
};

/// `selected`: the lookup the list's cursor is on.
pub fn render(f: &mut Frame, area: Rect, m: &Model, selected: Option<&Lookup>) {
    let block = Block::new()
        .borders(Borders::TOP)
        .title(Span::styled(" detail ([ ] scroll, Enter closes) ", bold()));
    let inner = block.inner(area);
    f.render_widget(block, area);
    let mut lines = match selected {
        Some(l) => lines(l, m.header.netns),
        None => vec![Line::styled(" no lookup selected", dim())],
    };
    // Scrolled past the end: show the last screenful.
    let room = usize::from(inner.height);
    let skip = usize::from(m.detail_scroll).min(lines.len().saturating_sub(room));
    if skip > 0 {
        lines.drain(..skip);
        lines[0] = Line::styled(format!(" … {} lines above", skip + 1), dim());
    }
    if lines.len() > room && room > 0 {
        let more = lines.len() - room + 1;
        lines.truncate(room - 1);
        lines.push(Line::styled(format!(" … {more} more lines"), dim()));
    }
    f.render_widget(Paragraph::new(lines), inner);
}

/// Every line of the detail of `l`; `host` is the node's netns cookie.
pub fn lines(l: &Lookup, host: u64) -> Vec<Line<'static>> {
    let mut out = Vec::new();
    let ns = netns_label(l.netns, host);
    let mut first = vec![
        Span::styled(format!(" #{} ", l.id), dim()),
        Span::styled(format!("{} {}", l.qtype, l.qname), bold()),
        Span::raw(format!("  from {}", l.client)),
    ];
    if let Some(pod) = &l.origin.pod {
        first.push(Span::raw(format!(" pod {}", pod.label())));
    }
    if !ns.is_empty() {
        first.push(Span::styled(format!(" ({ns})"), dim()));
    }
    first.push(Span::raw(format!(
        " to {}  {}  {}",
        l.server,
        l.rcode.map_or("no answer".into(), |r| r.name()),
        fmt_ms(l.latency_ms)
    )));
    if l.retries > 0 {
        first.push(Span::raw(format!("  {} retries", l.retries)));
    }
    out.push(Line::from(first));
    out.push(Line::from(vec![
        label("verdict"),
        Span::styled(l.verdict.as_str(), verdict_style(l.verdict)),
        Span::raw(if l.detail.is_empty() { "" } else { ": " }),
        Span::raw(l.detail.clone()),
    ]));
    match (&l.culprit, &l.last_hop) {
        (Some(c), h) => {
            let mut spans = vec![label("blame"), Span::raw(c.clone())];
            if let Some(h) = h {
                spans.push(Span::styled("   last hop ", dim()));
                spans.push(Span::raw(h.clone()));
            }
            out.push(Line::from(spans));
        }
        (None, Some(h)) => out.push(Line::from(vec![label("last hop"), Span::raw(h.clone())])),
        (None, None) => {}
    }
    if let Some(h) = &l.hint {
        out.push(Line::from(vec![
            label("hint"),
            Span::styled(h.clone(), Style::new().fg(Color::Yellow)),
        ]));
    }
    out.push(Line::from(vec![label("EDNS"), Span::raw(edns_summary(l))]));
    out.push(Line::from(vec![
        label("hops"),
        Span::styled(
            "ms since the first sighting, +ms since the one before; → to the server, ← to the client; NAT: address rewritten",
            dim(),
        ),
    ]));
    let t0 = l.t0();
    timeline(&mut out, l, t0, 1);
    out
}

fn label(s: &str) -> Span<'static> {
    Span::styled(format!(" {s:<9}"), dim())
}

fn timeline(out: &mut Vec<Line<'static>>, l: &Lookup, t0: u64, depth: usize) {
    let pad = "  ".repeat(depth);
    // TCP segments without a DNS message: those from the server's port go to the client.
    let server_port = Some(l.server.port());
    let mut prev_ts = None;
    for (i, h) in l.hops.iter().enumerate() {
        // The same message seen at an earlier point: an address that differs was rewritten.
        let before = l.hops[..i]
            .iter()
            .rev()
            .find(|p| p.id.is_some() && p.id == h.id && p.qr == h.qr && p.proto == h.proto);
        let to_client = match h.qr {
            Some(qr) => qr,
            None => Some(h.src.port()) == server_port,
        };
        out.push(hop_line(&pad, h, t0, prev_ts, before, to_client));
        prev_ts = Some(h.ts_ns);
    }
    if l.hops_omitted > 0 {
        out.push(Line::styled(
            format!("{pad}… {} more hops not kept", l.hops_omitted),
            dim(),
        ));
    }
    for c in &l.children {
        out.push(Line::from(vec![
            Span::raw(format!("{pad}↳ forwarded ")),
            Span::styled(format!("{} {}", c.qtype, c.qname), bold()),
            Span::raw(format!(
                " to {}: {} {} ",
                c.server,
                c.rcode.map_or("no answer".into(), |r| r.name()),
                fmt_ms(c.latency_ms)
            )),
            Span::styled(c.verdict.as_str(), verdict_style(c.verdict)),
        ]));
        timeline(out, c, t0, depth + 1);
    }
    if l.children_omitted > 0 {
        out.push(Line::styled(
            format!(
                "{pad}… {} more forwarded queries not kept",
                l.children_omitted
            ),
            dim(),
        ));
    }
}

fn hop_line(
    pad: &str,
    h: &Hop,
    t0: u64,
    prev_ts: Option<u64>,
    before: Option<&Hop>,
    to_client: bool,
) -> Line<'static> {
    let ms = |ns: u64| ns as f64 / 1e6;
    let at = format!("{:.3}", ms(h.ts_ns.saturating_sub(t0)));
    let delta = prev_ts.map_or_else(String::new, |p| {
        format!("+{:.3}", ms(h.ts_ns.saturating_sub(p)))
    });
    let reply = h.qr == Some(true);
    let arrow = if to_client { "←" } else { "→" };
    let nat = Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD);
    let addr = |a: std::net::SocketAddr, was: Option<std::net::SocketAddr>| {
        let text = format!("{a}");
        if was.is_some_and(|w| w != a) {
            Span::styled(text, nat)
        } else {
            Span::raw(text)
        }
    };
    let mut spans = vec![
        Span::raw(format!("{pad}{at:>8} ")),
        Span::styled(format!("{delta:>8} "), dim()),
        Span::raw(format!("{arrow} {:<15} {:<10} ", clip(&h.iface, 15), h.dir)),
        addr(h.src, before.map(|b| b.src)),
        Span::raw(" → "),
        addr(h.dst, before.map(|b| b.dst)),
    ];
    if let Some(b) = before
        && (b.src != h.src || b.dst != h.dst)
    {
        spans.push(Span::styled(" NAT", nat));
    }
    let mut rest = String::new();
    if let Some(id) = h.id {
        rest.push_str(&format!(" {} {id:04x}", if reply { "R" } else { "Q" }));
    }
    if let Some(rc) = &h.rcode {
        rest.push_str(&format!(" {rc}"));
    }
    if h.tc {
        rest.push_str(" TC");
    }
    if let Some(e) = &h.edns {
        rest.push_str(&format!(
            " OPT {}{}",
            e.udp,
            if e.dnssec_ok { " DO" } else { "" }
        ));
    }
    if let Some(f) = &h.tcp_flags {
        rest.push_str(&format!(" tcp[{f}]"));
    }
    spans.push(Span::raw(rest));
    if let Some(t) = &h.tunnel {
        spans.push(Span::styled(format!(" [{t}]"), dim()));
    }
    if let Some(r) = &h.drop_reason {
        spans.push(Span::styled(
            format!(" DROPPED {r}"),
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        ));
    }
    Line::from(spans)
}

/// EDNS of the client's query and of each forwarded query, in path order, and
/// of the answer the client got.
fn edns_summary(l: &Lookup) -> String {
    let query = |l: &Lookup| {
        l.hops
            .iter()
            .find(|h| h.qr == Some(false))
            .map(|h| opt(h.edns))
    };
    let mut parts = Vec::new();
    if let Some(q) = query(l) {
        parts.push(format!("client {q}"));
    }
    let mut stack: Vec<&Lookup> = l.children.iter().rev().collect();
    while let Some(c) = stack.pop() {
        if let Some(q) = query(c) {
            parts.push(format!("to {} {q}", c.server));
        }
        stack.extend(c.children.iter().rev());
    }
    if let Some(r) = l.hops.iter().rev().find(|h| h.qr == Some(true)) {
        parts.push(format!("answer {}", opt(r.edns)));
    }
    if parts.is_empty() {
        "no DNS message seen".to_owned()
    } else {
        parts.join(" → ")
    }
}

fn opt(e: Option<crate::correlate::HopEdns>) -> String {
    match e {
        Some(e) => e.to_string(),
        None => "no OPT".to_owned(),
    }
}

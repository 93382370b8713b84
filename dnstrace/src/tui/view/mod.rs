//! `view(frame, &model)`: one pure function per region of the screen.
//!
//! ```text
//! header     source, capture points, counters, filter, verdict totals   4 rows
//! flows      one row per lookup, newest first                           the rest
//! detail     the selected lookup's hops, forwards, EDNS, verdict        with Enter
//! upstreams  per upstream: queries, rcodes, latency                     when tall enough
//! footer     the keys                                                   1 row
//! ```
mod detail;
mod flows;
mod footer;
mod header;
mod upstreams;

use ratatui::{
    Frame,
    layout::Rect,
    style::{Color, Modifier, Style},
};

use super::model::Model;
use crate::correlate::{Severity, Verdict};

const HEADER_ROWS: u16 = 4;
const FOOTER_ROWS: u16 = 1;
/// Below this many body rows the upstream panel is left out.
const UPSTREAMS_MIN_BODY: u16 = 16;
const UPSTREAMS_MAX_ROWS: u16 = 7;
/// Flow list rows kept when the detail pane is open.
const FLOWS_MIN_ROWS: u16 = 5;

/// Where each region goes on a screen of `area`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Regions {
    pub header: Rect,
    pub flows: Rect,
    pub detail: Option<Rect>,
    pub upstreams: Option<Rect>,
    pub footer: Rect,
}

pub fn regions(area: Rect, m: &Model) -> Regions {
    let header_h = HEADER_ROWS.min(area.height);
    let footer_h = FOOTER_ROWS.min(area.height - header_h);
    let header = Rect {
        height: header_h,
        ..area
    };
    let footer = Rect {
        y: area.bottom() - footer_h,
        height: footer_h,
        ..area
    };
    let mut body = Rect {
        y: area.y + header_h,
        height: area.height - header_h - footer_h,
        ..area
    };
    let upstreams = (body.height >= UPSTREAMS_MIN_BODY).then(|| {
        let rows = u16::try_from(m.upstreams.len().max(1)).unwrap_or(u16::MAX);
        let h = rows.saturating_add(2).min(UPSTREAMS_MAX_ROWS);
        body.height -= h;
        Rect {
            y: body.bottom(),
            height: h,
            ..body
        }
    });
    let detail = m.detail.then(|| {
        let flows_h = (body.height * 2 / 5).max(FLOWS_MIN_ROWS).min(body.height);
        let d = Rect {
            y: body.y + flows_h,
            height: body.height - flows_h,
            ..body
        };
        body.height = flows_h;
        d
    });
    Regions {
        header,
        flows: body,
        detail,
        upstreams,
        footer,
    }
}

/// Lookup rows the flow list has room for on the model's screen.
pub fn flow_rows(m: &Model) -> usize {
    let r = regions(Rect::new(0, 0, m.size.0, m.size.1), m);
    usize::from(flows::data_rows(r.flows))
}

/// How far the detail pane can scroll: its lines beyond the room it has.
pub fn detail_scroll_max(m: &Model) -> u16 {
    let r = regions(Rect::new(0, 0, m.size.0, m.size.1), m);
    let (Some(area), Some(row)) = (r.detail, m.selected()) else {
        return 0;
    };
    let room = usize::from(area.height.saturating_sub(1));
    let n = detail::lines(&row.lookup, m.header.netns).len();
    u16::try_from(n.saturating_sub(room)).unwrap_or(u16::MAX)
}

/// Draws the whole screen.
pub fn view(f: &mut Frame, m: &Model) {
    let area = f.area();
    let r = regions(area, m);
    header::render(f, r.header, m);
    // Filtering and sorting up to 10,000 rows: once per frame.
    let visible = m.visible();
    flows::render(f, r.flows, m, &visible);
    if let Some(d) = r.detail {
        let selected = visible.get(m.selected_index(&visible));
        detail::render(f, d, m, selected.map(|r| &r.lookup));
    }
    if let Some(u) = r.upstreams {
        upstreams::render(f, u, m);
    }
    footer::render(f, r.footer, m);
    if m.help {
        footer::help(f, area);
    }
}

/// The colour of a verdict: green ok, cyan unknown (about the tracer), yellow warnings,
/// bold red errors.
pub fn verdict_style(v: Verdict) -> Style {
    match v.severity() {
        Severity::Ok => Style::new().fg(Color::Green),
        Severity::Info => Style::new().fg(Color::Cyan),
        Severity::Warning => Style::new().fg(Color::Yellow),
        Severity::Error => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
    }
}

/// Column titles and labels.
fn dim() -> Style {
    Style::new().add_modifier(Modifier::DIM)
}

fn bold() -> Style {
    Style::new().add_modifier(Modifier::BOLD)
}

/// "0.42ms", "12.3ms", "1.25s", "-".
pub fn fmt_ms(ms: Option<f64>) -> String {
    match ms {
        None => "-".to_owned(),
        Some(ms) if ms >= 1000.0 => format!("{:.2}s", ms / 1000.0),
        Some(ms) if ms >= 10.0 => format!("{ms:.1}ms"),
        Some(ms) => format!("{ms:.2}ms"),
    }
}

/// UTC time of day, "HH:MM:SS.mmm", of a lookup timestamp.
pub fn fmt_time(ts_ns: u64, offset_ns: i128) -> String {
    let epoch_ns = (i128::from(ts_ns) + offset_ns).clamp(0, i128::from(u64::MAX)) as u64;
    let mut t = crate::sink::clock(epoch_ns);
    // Microseconds → milliseconds.
    t.truncate(12);
    t
}

/// Where a client sent from: "host" for the node's own netns, else its cookie.
pub fn netns_label(netns: Option<u64>, host: u64) -> String {
    match netns {
        None => String::new(),
        Some(n) if n == host => "host".to_owned(),
        Some(n) => n.to_string(),
    }
}

/// Cuts `s` to `max` characters, marking the cut with "…".
fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

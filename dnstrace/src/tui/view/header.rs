//! Header: what is watched, the live counters, the filter and the verdict totals.
use ratatui::{
    Frame,
    layout::Rect,
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::Paragraph,
};

use super::{bold, dim, verdict_style};
use crate::tui::model::{Model, VerdictFilter};

pub fn render(f: &mut Frame, area: Rect, m: &Model) {
    let lines = vec![title(m, area.width), points(m), counters(m), filters(m)];
    f.render_widget(Paragraph::new(lines), area);
}

fn title(m: &Model, width: u16) -> Line<'static> {
    let h = &m.header;
    let ports: Vec<String> = h.ports.iter().map(u16::to_string).collect();
    let left = format!(
        " dnstrace {} · netns {} · port {}",
        h.source,
        h.netns,
        if ports.is_empty() {
            "-".to_owned()
        } else {
            ports.join(",")
        }
    );
    let (state, style) = if m.ended {
        ("ENDED ".to_owned(), Style::new().fg(Color::Yellow))
    } else if m.paused {
        (
            format!("PAUSED, {} new ", m.pending()),
            Style::new().fg(Color::Yellow),
        )
    } else {
        ("LIVE ".to_owned(), Style::new().fg(Color::Green))
    };
    let bar = Style::new().add_modifier(Modifier::REVERSED);
    let pad = usize::from(width)
        .saturating_sub(left.chars().count() + state.chars().count())
        .max(1);
    Line::from(vec![
        Span::styled(left, bar.add_modifier(Modifier::BOLD)),
        Span::styled(" ".repeat(pad), bar),
        Span::styled(state, bar.patch(style).add_modifier(Modifier::BOLD)),
    ])
}

fn points(m: &Model) -> Line<'static> {
    let c = &m.header.coverage;
    if c.all_ifaces && c.ifaces.is_empty() {
        // Full coverage without a list: a capture file not written by dnstrace, whose
        // capture points are whatever it holds, taken as the whole path.
        return Line::from(vec![
            Span::styled(" reading ", dim()),
            Span::raw("every interface in the file, taken as the whole path"),
        ]);
    }
    let mut parts = Vec::new();
    if c.socket {
        parts.push("socket hop (every netns)".to_owned());
    }
    if c.drops {
        parts.push("kernel drops".to_owned());
    }
    if !m.header.uplinks.is_empty() {
        parts.push(format!("uplink {}", m.header.uplinks.join(" ")));
    }
    if !c.ifaces.is_empty() || c.all_ifaces {
        let which = if c.all_ifaces {
            ", all of this netns"
        } else {
            ""
        };
        parts.push(format!(
            "{} interface{}{which}: {}",
            c.ifaces.len(),
            if c.ifaces.len() == 1 { "" } else { "s" },
            c.ifaces.join(" ")
        ));
    }
    if parts.is_empty() {
        parts.push("nothing".to_owned());
    }
    Line::from(vec![
        Span::styled(" watching ", dim()),
        Span::raw(parts.join(" · ")),
    ])
}

fn counters(m: &Model) -> Line<'static> {
    let s = &m.stats;
    let (pps, lps) = m.rates();
    let loss = |label: &'static str, n: u64| {
        let style = if n > 0 {
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
        } else {
            Style::new()
        };
        [
            Span::styled(label, dim()),
            Span::styled(n.to_string(), style),
        ]
    };
    let mut spans = vec![
        Span::styled(" packets ", dim()),
        Span::raw(format!("{} ({pps:.1}/s)", s.packets)),
        Span::styled(" · lookups ", dim()),
        Span::raw(format!("{} ({lps:.1}/s), {} open", s.lookups, s.open)),
    ];
    spans.extend(loss(" · lost in kernel ", s.kernel_lost));
    spans.extend(loss(" · dropped ", s.dropped));
    spans.extend(loss(" · malformed ", s.malformed));
    if s.evicted > 0 {
        spans.extend(loss(" · evicted ", s.evicted));
    }
    Line::from(spans)
}

fn filters(m: &Model) -> Line<'static> {
    let filter = m.active_filter();
    let mut spans = vec![
        Span::styled(" filter ", dim()),
        if filter.is_empty() {
            Span::raw("none")
        } else {
            Span::styled(format!("\"{filter}\""), bold())
        },
        Span::styled(" · verdicts ", dim()),
        match m.verdicts {
            VerdictFilter::All => Span::raw("all"),
            VerdictFilter::Problems => Span::styled("problems", bold()),
            VerdictFilter::Only(v) => Span::styled(v.as_str(), verdict_style(v)),
        },
        Span::styled(" · sort ", dim()),
        Span::raw(m.sort.label()),
        Span::styled(" │", dim()),
    ];
    if m.totals.is_empty() {
        spans.push(Span::styled(" no lookups yet", dim()));
    }
    for (v, n) in &m.totals {
        spans.push(Span::raw(" "));
        spans.push(Span::styled(format!("{v} {n}"), verdict_style(*v)));
    }
    Line::from(spans)
}

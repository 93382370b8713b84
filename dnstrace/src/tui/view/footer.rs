//! Footer (the keys, or the filter being typed) and the `?` help overlay.
use ratatui::{
    Frame,
    layout::{Constraint, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Clear, Paragraph},
};

use super::{bold, dim};
use crate::{correlate::Verdict, tui::model::Model};

/// (key, what it does), as the footer shows them.
const KEYS: &[(&str, &str)] = &[
    ("↑↓ PgUp PgDn Home End", "move"),
    ("Enter", "detail"),
    ("/", "filter"),
    ("v", "verdicts"),
    ("p", "pause"),
    ("s", "sort"),
    ("?", "help"),
    ("q", "quit"),
];

fn key() -> Style {
    Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD)
}

pub fn render(f: &mut Frame, area: Rect, m: &Model) {
    let line = match &m.editing {
        Some(text) => Line::from(vec![
            Span::styled(" filter: ", bold()),
            Span::raw(text.clone()),
            Span::styled("█", Style::new().add_modifier(Modifier::SLOW_BLINK)),
            Span::styled("  Enter", key()),
            Span::raw(" apply  "),
            Span::styled("Esc", key()),
            Span::raw(" cancel  "),
            match m.query() {
                Ok(_) => Span::styled(
                    "(words, or --client --qname --verdict --pod --namespace)",
                    dim(),
                ),
                Err(e) => Span::styled(format!("({e}: matched as text)"), bold()),
            },
        ]),
        None => {
            let mut spans = Vec::new();
            for (k, what) in KEYS {
                spans.push(Span::styled(format!(" {k}"), key()));
                spans.push(Span::raw(format!(" {what} ")));
            }
            Line::from(spans)
        }
    };
    f.render_widget(Paragraph::new(line), area);
}

/// The `?` overlay: every key, and what the colours mean.
pub fn help(f: &mut Frame, area: Rect) {
    let rows: &[(&str, &str)] = &[
        ("↑ ↓  k j", "move the selection"),
        ("PgUp PgDn", "move a page"),
        (
            "Home g / End G",
            "first / last row (the top row follows new lookups)",
        ),
        ("Enter", "open / close the detail of the selected lookup"),
        ("[  ]", "scroll the detail up / down"),
        (
            "/",
            "filter by qname, client or pod: type, Enter applies, Esc cancels",
        ),
        (
            "v  V",
            "verdicts: all → problems → each verdict seen (V: back)",
        ),
        (
            "p  space",
            "pause / resume: new lookups are counted, the list stays",
        ),
        (
            "s",
            "sort: latest finished first → slowest first → worst first",
        ),
        ("Esc", "close this help, then the detail"),
        ("q  Ctrl-C", "quit: detach and print the summary"),
    ];
    let mut lines = vec![Line::from("")];
    for (k, what) in rows {
        lines.push(Line::from(vec![
            Span::styled(format!("  {k:<16}"), key()),
            Span::raw(*what),
        ]));
    }
    lines.push(Line::from(""));
    let mut colours = vec![Span::styled("  colours         ", dim())];
    for v in [
        Verdict::Ok,
        Verdict::Unknown,
        Verdict::UpstreamRejectsEdns,
        Verdict::ServerError,
    ] {
        colours.push(Span::styled(v.as_str(), super::verdict_style(v)));
        colours.push(Span::raw(" "));
    }
    lines.push(Line::from(colours));
    lines.push(Line::styled(
        "  NAT             a yellow address was rewritten since the hop before",
        dim(),
    ));
    lines.push(Line::from(""));
    lines.push(Line::styled("  any key closes this help", dim()));
    let h = u16::try_from(lines.len() + 2).unwrap_or(u16::MAX);
    let popup = area.centered(Constraint::Length(86), Constraint::Length(h));
    f.render_widget(Clear, popup);
    f.render_widget(
        Paragraph::new(lines)
            .block(Block::bordered().title(Span::styled(" dnstrace keys ", bold()))),
        popup,
    );
}

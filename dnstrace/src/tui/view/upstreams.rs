//! Per-upstream panel: queries that left the node, by the server they went to.
use ratatui::{
    Frame,
    layout::{Alignment, Constraint, Rect},
    style::{Color, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Paragraph, Row, Table},
};

use super::{bold, dim, fmt_ms};
use crate::tui::model::Model;

pub fn render(f: &mut Frame, area: Rect, m: &Model) {
    let block = Block::new()
        .borders(Borders::TOP)
        .title(Span::styled(" upstreams ", bold()));
    let inner = block.inner(area);
    f.render_widget(block, area);
    if m.upstreams.is_empty() {
        f.render_widget(
            Paragraph::new(" no query has left the node yet").style(dim()),
            inner,
        );
        return;
    }
    let right = |s: String| Cell::from(Line::from(s).alignment(Alignment::Right));
    let rows = m.upstreams.iter().map(|u| {
        let rcodes: Vec<String> = u.rcodes.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let unanswered = if u.unanswered > 0 {
            Cell::from(
                Line::styled(u.unanswered.to_string(), Style::new().fg(Color::Red))
                    .alignment(Alignment::Right),
            )
        } else {
            right("0".to_owned())
        };
        Row::new(vec![
            Cell::from(u.upstream.clone()),
            right(u.queries.to_string()),
            right(u.answered.to_string()),
            unanswered,
            right(fmt_ms(u.p50_ms)),
            right(fmt_ms(u.p99_ms)),
            Cell::from(rcodes.join(" ")),
        ])
    });
    let widths = [
        Constraint::Length(26),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(10),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Fill(1),
    ];
    let header = Row::new(vec![
        Cell::from("SERVER"),
        right("QUERIES".to_owned()),
        right("ANSWERED".to_owned()),
        right("UNANSWERED".to_owned()),
        right("P50".to_owned()),
        right("P99".to_owned()),
        Cell::from("RCODES"),
    ])
    .style(dim());
    f.render_widget(
        Table::new(rows, widths).header(header).column_spacing(1),
        inner,
    );
}

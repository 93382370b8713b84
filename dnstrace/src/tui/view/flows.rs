//! Flow list: one row per lookup, in the chosen order, with the selection.
use ratatui::{
    Frame,
    layout::{Alignment, Constraint, Rect},
    style::{Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Paragraph, Row, Table},
};

use super::{bold, dim, fmt_ms, fmt_time, netns_label, verdict_style};
use crate::tui::model::{self, Model, scroll};

/// Rows of `area` left for lookups: minus the title and the column header.
pub fn data_rows(area: Rect) -> u16 {
    area.height.saturating_sub(2)
}

/// `visible`: the rows that pass the filter, in order (see [`Model::visible`]).
pub fn render(f: &mut Frame, area: Rect, m: &Model, visible: &[&model::Row]) {
    let mut title = vec![Span::styled(
        format!(" lookups {} shown of {} ", visible.len(), m.len()),
        bold(),
    )];
    if m.evicted_rows > 0 {
        title.push(Span::styled(
            format!("({} older not kept) ", m.evicted_rows),
            dim(),
        ));
    }
    if m.paused {
        title.push(Span::styled(
            format!("paused: {} new not shown ", m.pending()),
            Style::new().add_modifier(Modifier::REVERSED),
        ));
    }
    let block = Block::new().borders(Borders::TOP).title(Line::from(title));
    let inner = block.inner(area);
    f.render_widget(block, area);
    if visible.is_empty() {
        let text = if m.is_empty() {
            if m.ended {
                "no lookups were seen"
            } else {
                "no lookups yet: waiting for DNS queries at the watched points"
            }
        } else {
            "no lookup matches the filter (/ to change it, v for verdicts)"
        };
        let y = inner.y + inner.height / 2;
        if inner.height > 0 {
            f.render_widget(
                Paragraph::new(text)
                    .style(dim())
                    .alignment(Alignment::Center),
                Rect {
                    y,
                    height: 1,
                    ..inner
                },
            );
        }
        return;
    }
    // Narrower screens get shorter columns, so that the qname keeps room.
    let wide = area.width >= 140;
    let show_netns = area.width >= 110;
    let time_w: u16 = if area.width >= 96 { 12 } else { 8 };
    let client_w: u16 = if area.width >= 90 { 21 } else { 15 };
    let height = usize::from(data_rows(area));
    let sel = m.selected_index(visible);
    let offset = scroll(m.cursor.offset, sel, height);
    let rows = visible
        .iter()
        .enumerate()
        .skip(offset)
        .take(height)
        .map(|(i, r)| {
            let l = &r.lookup;
            let mut cells = vec![
                Cell::from(if i == sel { "▶" } else { " " }),
                Cell::from(fmt_time(l.start_ts_ns, m.header.clock_offset_ns)),
                // A pod's client is shown by its name: "namespace/name".
                Cell::from(match &l.origin.pod {
                    Some(pod) if pod.name.is_some() => pod.label(),
                    _ if client_w >= 21 => l.client.to_string(),
                    _ => l.client.ip().to_string(),
                }),
            ];
            if show_netns {
                cells.push(Cell::from(netns_label(l.netns, m.header.netns)));
            }
            cells.extend([
                Cell::from(&*l.qname),
                Cell::from(l.qtype.to_string()),
                Cell::from(l.rcode.map_or_else(|| "-".to_owned(), |r| r.to_string())),
                Cell::from(Span::styled(
                    if wide {
                        l.verdict.as_str()
                    } else {
                        l.verdict.short()
                    },
                    verdict_style(l.verdict),
                )),
                Cell::from(Line::from(fmt_ms(l.latency_ms)).alignment(Alignment::Right)),
            ]);
            let row = Row::new(cells);
            if i == sel {
                row.style(Style::new().add_modifier(Modifier::REVERSED))
            } else {
                row
            }
        });
    let mut widths = vec![
        Constraint::Length(1),
        Constraint::Length(time_w),
        Constraint::Length(client_w),
    ];
    let mut header = vec![
        "",
        if time_w >= 12 { "TIME (UTC)" } else { "UTC" },
        "CLIENT",
    ];
    if show_netns {
        widths.push(Constraint::Length(10));
        header.push("NETNS");
    }
    widths.extend([
        Constraint::Fill(1),
        Constraint::Length(6),
        Constraint::Length(8),
        Constraint::Length(if wide { 28 } else { 12 }),
        Constraint::Length(7),
    ]);
    header.extend(["QNAME", "TYPE", "RCODE", "VERDICT", "LATENCY"]);
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(dim()))
        .column_spacing(1);
    f.render_widget(table, inner);
}

//! The only place the model changes: `update(model, action)`, no I/O, no clock.
use super::{
    action::{Action, Feed},
    model::{Model, Sort, VerdictFilter, scroll},
    view,
};

/// Lines the detail pane scrolls per `]` / `[`.
const DETAIL_STEP: u16 = 5;

pub fn update(m: &mut Model, action: Action) {
    match action {
        Action::Feed(Feed::Lookup(l)) => m.push(*l),
        Action::Feed(Feed::Upstreams(u)) => m.upstreams = u,
        Action::Feed(Feed::Stats(s)) => m.set_stats(s),
        Action::Feed(Feed::Coverage(c)) => m.header.coverage = c,
        Action::FeedEnded => m.ended = true,
        Action::Resize(w, h) => {
            m.size = (w, h);
            refresh_scroll(m);
        }
        Action::Up => move_by(m, -1),
        Action::Down => move_by(m, 1),
        Action::PageUp => move_by(m, -(page(m) as isize)),
        Action::PageDown => move_by(m, page(m) as isize),
        Action::Home => select_at(m, 0),
        Action::End => select_at(m, usize::MAX),
        Action::DetailDown => {
            m.detail_scroll = m
                .detail_scroll
                .saturating_add(DETAIL_STEP)
                .min(view::detail_scroll_max(m));
        }
        Action::DetailUp => m.detail_scroll = m.detail_scroll.saturating_sub(DETAIL_STEP),
        Action::ToggleDetail => {
            m.detail = !m.detail;
            m.detail_scroll = 0;
            // Keep showing the lookup that was opened while new ones arrive.
            let idx = current(m);
            select_at(m, idx);
        }
        Action::EditFilter => m.editing = Some(m.filter.clone()),
        Action::FilterChar(c) => {
            if let Some(f) = &mut m.editing {
                f.push(c);
            }
            refresh_scroll(m);
        }
        Action::FilterBackspace => {
            if let Some(f) = &mut m.editing {
                f.pop();
            }
            refresh_scroll(m);
        }
        Action::ApplyFilter => {
            if let Some(f) = m.editing.take() {
                m.filter = f.trim().to_owned();
            }
            refresh_scroll(m);
        }
        Action::CancelFilter => {
            m.editing = None;
            refresh_scroll(m);
        }
        Action::CycleVerdicts => cycle_verdicts(m, true),
        Action::CycleVerdictsBack => cycle_verdicts(m, false),
        Action::TogglePause => {
            if m.paused {
                m.paused = false;
                m.resume();
            } else {
                m.paused = true;
            }
        }
        Action::CycleSort => {
            m.sort = m.sort.next();
            refresh_scroll(m);
        }
        Action::ToggleHelp => m.help = !m.help,
        Action::Back => {
            if m.help {
                m.help = false;
            } else if m.detail {
                m.detail = false;
            }
        }
        Action::Quit => m.quit = true,
    }
}

/// all → problems → each verdict seen so far → all.
fn cycle_verdicts(m: &mut Model, forward: bool) {
    let mut steps = vec![VerdictFilter::All, VerdictFilter::Problems];
    steps.extend(m.seen_verdicts().into_iter().map(VerdictFilter::Only));
    if let VerdictFilter::Only(v) = m.verdicts
        && !steps.contains(&m.verdicts)
    {
        steps.push(VerdictFilter::Only(v));
    }
    let at = steps.iter().position(|s| *s == m.verdicts).unwrap_or(0);
    let n = steps.len();
    let next = if forward {
        (at + 1) % n
    } else {
        (at + n - 1) % n
    };
    m.verdicts = steps[next];
    refresh_scroll(m);
}

/// Rows of the flow list on screen: a page.
fn page(m: &Model) -> usize {
    view::flow_rows(m).max(1)
}

fn current(m: &Model) -> usize {
    let v = m.visible();
    m.selected_index(&v)
}

fn move_by(m: &mut Model, delta: isize) {
    let idx = current(m).saturating_add_signed(delta);
    select_at(m, idx);
}

/// Selects the row at `idx` (clamped). The top row of the time order follows the
/// newest lookup, unless the detail pane holds on to one.
fn select_at(m: &mut Model, idx: usize) {
    m.detail_scroll = 0;
    let v = m.visible();
    let Some(last) = v.len().checked_sub(1) else {
        m.cursor.seq = None;
        m.cursor.follow = !m.detail;
        m.cursor.offset = 0;
        return;
    };
    let idx = idx.min(last);
    let seq = v[idx].seq;
    m.cursor.follow = idx == 0 && m.sort == Sort::Time && !m.detail;
    m.cursor.seq = Some(seq);
    m.cursor.offset = scroll(m.cursor.offset, idx, page(m));
}

/// Keeps the selection on screen after the list or the screen changed.
fn refresh_scroll(m: &mut Model) {
    let idx = current(m);
    m.cursor.offset = scroll(m.cursor.offset, idx, page(m));
}

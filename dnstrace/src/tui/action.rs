//! Everything that can happen to the TUI, as one enum, and how a key becomes one.
use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::model::{LiveStats, Model};
use crate::correlate::{Lookup, UpstreamStats};

/// What the pipeline sends to the TUI.
#[derive(Clone, Debug, PartialEq)]
pub enum Feed {
    Lookup(Box<Lookup>),
    Upstreams(Vec<UpstreamStats>),
    Stats(LiveStats),
    /// The capture points watched changed (`--auto` follows interfaces).
    Coverage(crate::correlate::Coverage),
}

/// One input to [`super::update`].
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Feed(Feed),
    /// No more feed: the capture or the file ended.
    FeedEnded,
    Resize(u16, u16),
    Up,
    Down,
    PageUp,
    PageDown,
    Home,
    End,
    ToggleDetail,
    /// `]` / `[`: scroll the detail pane.
    DetailDown,
    DetailUp,
    /// `/`: start typing a filter.
    EditFilter,
    FilterChar(char),
    FilterBackspace,
    /// Enter while typing.
    ApplyFilter,
    /// Esc while typing: back to the filter in force before.
    CancelFilter,
    CycleVerdicts,
    CycleVerdictsBack,
    TogglePause,
    CycleSort,
    ToggleHelp,
    /// Esc outside of typing: close help, then the detail pane.
    Back,
    Quit,
}

/// The action a key press stands for, given what the screen is in.
pub fn from_key(key: KeyEvent, model: &Model) -> Option<Action> {
    if key.kind == KeyEventKind::Release {
        return None;
    }
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    if ctrl && matches!(key.code, KeyCode::Char('c' | 'C')) {
        return Some(Action::Quit);
    }
    if model.editing.is_some() {
        return match key.code {
            KeyCode::Enter => Some(Action::ApplyFilter),
            KeyCode::Esc => Some(Action::CancelFilter),
            KeyCode::Backspace => Some(Action::FilterBackspace),
            KeyCode::Char(c) if !ctrl => Some(Action::FilterChar(c)),
            _ => None,
        };
    }
    if model.help {
        // Any key closes help; q still quits.
        return match key.code {
            KeyCode::Char('q') => Some(Action::Quit),
            _ => Some(Action::ToggleHelp),
        };
    }
    Some(match key.code {
        KeyCode::Up | KeyCode::Char('k') => Action::Up,
        KeyCode::Down | KeyCode::Char('j') => Action::Down,
        KeyCode::PageUp => Action::PageUp,
        KeyCode::PageDown => Action::PageDown,
        KeyCode::Home | KeyCode::Char('g') => Action::Home,
        KeyCode::End | KeyCode::Char('G') => Action::End,
        KeyCode::Enter => Action::ToggleDetail,
        KeyCode::Char(']') => Action::DetailDown,
        KeyCode::Char('[') => Action::DetailUp,
        KeyCode::Char('/') => Action::EditFilter,
        KeyCode::Char('v') => Action::CycleVerdicts,
        KeyCode::Char('V') => Action::CycleVerdictsBack,
        KeyCode::Char('p') | KeyCode::Char(' ') => Action::TogglePause,
        KeyCode::Char('s') => Action::CycleSort,
        KeyCode::Char('?') | KeyCode::F(1) => Action::ToggleHelp,
        KeyCode::Esc => Action::Back,
        KeyCode::Char('q') => Action::Quit,
        _ => return None,
    })
}

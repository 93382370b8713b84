//! What the TUI shows: a plain struct that only [`super::update`] changes and the
//! view functions read.
use std::collections::{BTreeMap, VecDeque};

use crate::correlate::{Coverage, Lookup, Severity, UpstreamStats, Verdict};

/// Lookups kept for display; older ones are counted in [`Model::evicted_rows`].
pub const MAX_ROWS: usize = 10_000;
/// Rates are averaged over about this long.
const RATE_WINDOW_NS: u64 = 1_000_000_000;

/// What the header says about where the lookups come from. Fixed for a run, but for
/// the interfaces watched, which `--auto` follows as they come and go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderInfo {
    /// "watch" or "replay FILE".
    pub source: String,
    /// The capture points watched.
    pub coverage: Coverage,
    /// Netns cookie of the namespace dnstrace runs in (the node's).
    pub netns: u64,
    pub uplinks: Vec<String>,
    pub ports: Vec<u16>,
    /// Added to lookup timestamps to get nanoseconds since the Unix epoch.
    pub clock_offset_ns: i128,
}

/// Cumulative counters of the pipeline feeding the TUI, sent a few times a second.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LiveStats {
    /// When this snapshot was taken (any monotonic ns clock; only differences matter).
    pub at_ns: u64,
    /// Packets decoded in userspace.
    pub packets: u64,
    /// Lookups finished by the correlator.
    pub lookups: u64,
    /// Lookups still open in the correlator.
    pub open: u64,
    /// Events the kernel could not queue (ring buffer full, copy failed).
    pub kernel_lost: u64,
    /// Lookups dropped in userspace because the TUI's queue was full.
    pub dropped: u64,
    /// Packets that could not be parsed.
    pub malformed: u64,
    /// Lookups the correlator evicted unfinished (too many open at once).
    pub evicted: u64,
}

/// Which verdicts the flow list shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VerdictFilter {
    #[default]
    All,
    /// Everything but `ok`.
    Problems,
    Only(Verdict),
}

impl VerdictFilter {
    pub fn admits(self, v: Verdict) -> bool {
        match self {
            Self::All => true,
            Self::Problems => v.severity() > Severity::Ok,
            Self::Only(o) => o == v,
        }
    }
}

/// Order of the flow list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sort {
    /// The latest finished first (a lookup is listed when its verdict is known).
    #[default]
    Time,
    /// Slowest first; lookups without an answer first of all.
    Latency,
    /// Most severe verdict first, then newest.
    Severity,
}

impl Sort {
    pub fn next(self) -> Self {
        match self {
            Self::Time => Self::Latency,
            Self::Latency => Self::Severity,
            Self::Severity => Self::Time,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Time => "latest first",
            Self::Latency => "slowest first",
            Self::Severity => "worst first",
        }
    }
}

/// One lookup in the list.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// Arrival order; identifies the row while the list moves.
    pub seq: u64,
    pub lookup: Lookup,
    /// Lower-cased "qname client": what `/` matches.
    key: String,
}

/// The selection. `follow`: stay on the top row as new lookups arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub follow: bool,
    pub seq: Option<u64>,
    /// First visible row of the list.
    pub offset: usize,
}

impl Default for Cursor {
    fn default() -> Self {
        Self {
            follow: true,
            seq: None,
            offset: 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    pub header: HeaderInfo,
    /// Oldest first, at most `max_rows`.
    rows: VecDeque<Row>,
    /// Lookups that arrived while paused, shown on resume.
    pending: VecDeque<Row>,
    next_seq: u64,
    pub max_rows: usize,
    /// Lookups pushed out of the list by the bound.
    pub evicted_rows: u64,
    /// Every lookup received, by verdict.
    pub totals: BTreeMap<Verdict, u64>,
    pub upstreams: Vec<UpstreamStats>,
    pub stats: LiveStats,
    /// Recent stats, for the rates.
    samples: VecDeque<LiveStats>,
    /// The applied `/` filter, as typed (matched case-insensitively).
    pub filter: String,
    /// `Some` while typing a filter.
    pub editing: Option<String>,
    pub verdicts: VerdictFilter,
    pub sort: Sort,
    pub paused: bool,
    pub detail: bool,
    /// Lines of the detail pane scrolled away.
    pub detail_scroll: u16,
    pub help: bool,
    pub cursor: Cursor,
    /// Terminal size (columns, rows).
    pub size: (u16, u16),
    /// No more lookups will come (the capture or the file ended).
    pub ended: bool,
    pub quit: bool,
}

impl Model {
    pub fn new(header: HeaderInfo, size: (u16, u16)) -> Self {
        Self {
            header,
            rows: VecDeque::new(),
            pending: VecDeque::new(),
            next_seq: 0,
            max_rows: MAX_ROWS,
            evicted_rows: 0,
            totals: BTreeMap::new(),
            upstreams: Vec::new(),
            stats: LiveStats::default(),
            samples: VecDeque::new(),
            filter: String::new(),
            editing: None,
            verdicts: VerdictFilter::All,
            sort: Sort::Time,
            paused: false,
            detail: false,
            detail_scroll: 0,
            help: false,
            cursor: Cursor::default(),
            size,
            ended: false,
            quit: false,
        }
    }

    /// Adds a finished lookup (to the pending ones while paused).
    pub(super) fn push(&mut self, lookup: Lookup) {
        *self.totals.entry(lookup.verdict).or_default() += 1;
        let pod = lookup.origin.pod.as_ref().map(|p| p.label());
        let key = format!(
            "{} {} {}",
            lookup.qname,
            lookup.client,
            pod.unwrap_or_default()
        )
        .to_lowercase();
        let row = Row {
            seq: self.next_seq,
            lookup,
            key,
        };
        self.next_seq += 1;
        let max = self.max_rows.max(1);
        let list = if self.paused {
            &mut self.pending
        } else {
            &mut self.rows
        };
        list.push_back(row);
        if list.len() > max {
            list.pop_front();
            self.evicted_rows += 1;
        }
    }

    /// Moves the lookups that arrived while paused into the list.
    pub(super) fn resume(&mut self) {
        let max = self.max_rows.max(1);
        self.rows.extend(self.pending.drain(..));
        while self.rows.len() > max {
            self.rows.pop_front();
            self.evicted_rows += 1;
        }
    }

    pub(super) fn set_stats(&mut self, s: LiveStats) {
        self.stats = s;
        self.samples.push_back(s);
        while self
            .samples
            .get(1)
            .is_some_and(|x| x.at_ns + RATE_WINDOW_NS <= s.at_ns)
        {
            self.samples.pop_front();
        }
    }

    /// (packets/s, lookups/s) over the last second or so.
    pub fn rates(&self) -> (f64, f64) {
        let (Some(a), Some(b)) = (self.samples.front(), self.samples.back()) else {
            return (0.0, 0.0);
        };
        let dt = b.at_ns.saturating_sub(a.at_ns) as f64 / 1e9;
        if dt <= 0.0 {
            return (0.0, 0.0);
        }
        (
            b.packets.saturating_sub(a.packets) as f64 / dt,
            b.lookups.saturating_sub(a.lookups) as f64 / dt,
        )
    }

    /// Rows in the list (not counting pending ones).
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The filter in force: the one being typed, else the applied one.
    pub fn active_filter(&self) -> &str {
        self.editing.as_deref().unwrap_or(&self.filter)
    }

    /// The filter in force, read as `--client`/`--qname`/`--verdict` flags and words; a
    /// flag whose value is wrong gives its error (and then the text is matched as typed).
    pub fn query(&self) -> Result<crate::filter::Query, String> {
        crate::filter::Query::parse(self.active_filter())
    }

    /// The rows the list shows, in display order.
    pub fn visible(&self) -> Vec<&Row> {
        let query = self.query();
        let needle = self.active_filter().to_lowercase();
        let admits = |r: &Row| match &query {
            Ok(q) => q.matches(&r.lookup, &r.key),
            Err(_) => r.key.contains(&needle),
        };
        let mut v: Vec<&Row> = self
            .rows
            .iter()
            .rev()
            .filter(|r| self.verdicts.admits(r.lookup.verdict))
            .filter(|r| admits(r))
            .collect();
        match self.sort {
            Sort::Time => {}
            // Stable sorts: ties stay newest first.
            Sort::Latency => v.sort_by(|a, b| {
                let key = |r: &Row| r.lookup.latency_ms.unwrap_or(f64::INFINITY);
                key(b).total_cmp(&key(a))
            }),
            Sort::Severity => v.sort_by(|a, b| {
                b.lookup
                    .verdict
                    .severity()
                    .cmp(&a.lookup.verdict.severity())
            }),
        }
        v
    }

    /// Index of the selected row within `visible`.
    pub fn selected_index(&self, visible: &[&Row]) -> usize {
        match self.cursor.seq {
            Some(seq) if !self.cursor.follow => {
                visible.iter().position(|r| r.seq == seq).unwrap_or(0)
            }
            _ => 0,
        }
    }

    /// The selected lookup, if the list shows any.
    pub fn selected(&self) -> Option<&Row> {
        let v = self.visible();
        let i = self.selected_index(&v);
        v.get(i).copied()
    }

    /// Verdicts seen so far, in [`Verdict::ALL`] order: what `v` cycles through.
    pub fn seen_verdicts(&self) -> Vec<Verdict> {
        // Entries are only ever created by counting, and the map's order is ALL's.
        self.totals.keys().copied().collect()
    }
}

/// First row to show so that `selected` is within a window of `height` rows.
pub fn scroll(offset: usize, selected: usize, height: usize) -> usize {
    let height = height.max(1);
    offset
        .max((selected + 1).saturating_sub(height))
        .min(selected)
}

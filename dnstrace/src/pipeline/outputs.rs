//! Where the pipeline's lookups go besides the pcapng file and the metrics: the
//! stream of text or JSON lines on stdout, and the full-screen view. They are peers:
//! each reads the same finished lookups, snapshots and counters.
use std::io::{BufWriter, Stdout};

use crate::{
    capture::CoverageChange,
    cli::Output,
    correlate::{Coverage, Lookup, UpstreamStats},
    decode::Packet,
    sink::{JsonSink, Names, Sink, TextSink},
    tui,
};

/// The readers of finished lookups: lines on stdout, or the screen while it is up.
pub(crate) struct Outputs {
    /// Text or JSON lines; none while the screen owns the terminal.
    stream: Option<Sink<BufWriter<Stdout>>>,
    /// The full-screen view: lookups, upstreams, coverage and live counters go to its queue.
    screen: Option<tui::FeedTx>,
}

impl Outputs {
    /// The screen when it is up, else text or JSON lines on stdout.
    pub(crate) fn new(output: Output, screen: Option<tui::FeedTx>) -> Self {
        let stream = match (output, &screen) {
            (_, Some(_)) => None,
            (Output::Json, None) => Some(Sink::Json(JsonSink::new(stdout()))),
            _ => Some(Sink::Text(TextSink::new(stdout()))),
        };
        Self { stream, screen }
    }

    /// Writes one packet line; `drop` is the kernel drop reason for drop events.
    pub(crate) fn packet(
        &mut self,
        p: &Packet,
        drop: Option<&str>,
        names: &Names,
    ) -> std::io::Result<()> {
        match &mut self.stream {
            Some(s) => s.packet(p, drop, names),
            None => Ok(()),
        }
    }

    /// The packet's line, made now and written later ([`Outputs::held_packet`]).
    pub(crate) fn render_packet(&self, p: &Packet, drop: Option<&str>, names: &Names) -> Vec<u8> {
        self.stream
            .as_ref()
            .map_or_else(Vec::new, |s| s.render_packet(p, drop, names))
    }

    /// Writes a line made by [`Outputs::render_packet`].
    pub(crate) fn held_packet(&mut self, line: &[u8]) -> std::io::Result<()> {
        match &mut self.stream {
            Some(s) => s.held_packet(line),
            None => Ok(()),
        }
    }

    /// One finished lookup, for each reader (the screen keeps it: hence by value).
    pub(crate) fn lookup(&mut self, l: Lookup, names: &Names) -> std::io::Result<()> {
        if let Some(s) = &mut self.stream {
            s.lookup(&l, names)?;
        }
        if let Some(t) = &self.screen {
            t.lookup(l);
        }
        Ok(())
    }

    /// The per-upstream table, as it stands at `epoch_ns`.
    pub(crate) fn upstreams(
        &mut self,
        u: &[UpstreamStats],
        names: &Names,
        epoch_ns: u64,
    ) -> std::io::Result<()> {
        if let Some(s) = &mut self.stream {
            s.upstreams(u, names, epoch_ns)?;
        }
        if let Some(t) = &self.screen {
            t.upstreams(u.to_vec());
        }
        Ok(())
    }

    /// A change of the interfaces watched, made at `epoch_ns`; the screen gets what is
    /// watched now.
    pub(crate) fn coverage(
        &mut self,
        c: &CoverageChange,
        names: &Names,
        epoch_ns: u64,
        watched: &Coverage,
    ) -> std::io::Result<()> {
        if let Some(s) = &mut self.stream {
            s.coverage(c, names, epoch_ns)?;
        }
        if let Some(t) = &self.screen {
            t.coverage(watched.clone());
        }
        Ok(())
    }

    /// The end-of-run record (JSON only; the rest print the summary on stderr).
    pub(crate) fn summary(
        &mut self,
        summary: &super::Summary,
        names: &Names,
        epoch_ns: u64,
    ) -> std::io::Result<()> {
        match &mut self.stream {
            Some(s) => s.summary(summary, summary.kernel.lost(), names, epoch_ns),
            None => Ok(()),
        }
    }

    pub(crate) fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.stream {
            Some(s) => s.flush(),
            None => Ok(()),
        }
    }

    /// True while the screen is up: it wants [`Outputs::live`] counters.
    pub(crate) fn is_live(&self) -> bool {
        self.screen.is_some()
    }

    /// Live counters for the screen (and, once a second, the upstream table that
    /// `upstreams` computes); the stream ignores them.
    pub(crate) fn live(
        &mut self,
        stats: tui::LiveStats,
        upstreams: impl FnOnce() -> Vec<UpstreamStats>,
    ) {
        if let Some(t) = &mut self.screen {
            t.live(stats, upstreams);
        }
    }
}

fn stdout() -> BufWriter<Stdout> {
    BufWriter::with_capacity(64 << 10, std::io::stdout())
}

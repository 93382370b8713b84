//! The live full-screen view (`--output tui`): one row per lookup, a detail pane,
//! the per-upstream panel and live counters.
//!
//! Model / action / update / view, as in the Elm-style ratatui apps: every input
//! (a lookup from the pipeline, a key, a resize) becomes an [`Event`], then at most one
//! [`Action`], which [`update`] (pure) applies to the [`Model`]; [`view`] draws the
//! model, one function per region, at a fixed frame rate whatever the event rate.
//! Tests drive the same path with scripted events and a `TestBackend`.
//!
//! The pipeline never waits for the screen: it hands lookups to a [`FeedTx`], which
//! drops and counts them when the bounded queue is full. One thread owns the
//! terminal ([`run`] / [`spawn`]); it restores it on quit, on [`FeedTx::close`] (the
//! app calls it on SIGINT/SIGTERM and at `--duration`), and on panic.
//!
//! Depends only on correlate's types.
mod action;
mod model;
mod update;
mod view;

#[cfg(test)]
mod tests;

use std::{
    io::{self, Stdout},
    sync::{
        Arc, Once,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering},
        mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crossterm::{
    cursor,
    event::{self, Event as TermEvent, KeyEvent},
    execute,
    terminal::{self, EnterAlternateScreen, LeaveAlternateScreen},
};
use ratatui::{Terminal, backend::CrosstermBackend};

pub use action::{Action, Feed, from_key};
pub use model::{HeaderInfo, LiveStats, MAX_ROWS, Model, Sort, VerdictFilter};
pub use update::update;
pub use view::view;

use crate::correlate::{Lookup, UpstreamStats};

/// Frames per second: the screen is redrawn at most this often.
pub const FRAME_RATE: u32 = 15;
/// Messages the queue to the screen holds; more are dropped and counted.
pub const QUEUE: usize = 4096;
/// The per-upstream panel is refreshed this often.
const UPSTREAMS_EVERY_NS: u64 = 1_000_000_000;

const OPEN: u8 = 0;
const CLOSE: u8 = 1;
const SIGNALLED: u8 = 2;

#[derive(Debug, Default)]
struct Shared {
    /// Lookups not queued because the queue was full.
    dropped: AtomicU64,
    /// OPEN, CLOSE or SIGNALLED.
    state: AtomicU8,
}

impl Shared {
    /// Asks the screen to end within a frame (unless it already is ending).
    fn close(&self) {
        let _ = self
            .state
            .compare_exchange(OPEN, CLOSE, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// The pipeline's end of the queue to the screen. Never blocks.
#[derive(Debug)]
pub struct FeedTx {
    tx: SyncSender<Feed>,
    shared: Arc<Shared>,
    upstreams_at: Option<u64>,
}

impl Clone for FeedTx {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            shared: self.shared.clone(),
            upstreams_at: None,
        }
    }
}

impl FeedTx {
    /// Queues a finished lookup, or counts it dropped when the queue is full.
    pub fn lookup(&self, l: Lookup) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(Feed::Lookup(Box::new(l))) {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queues the per-upstream table (a snapshot: losing one is harmless).
    pub fn upstreams(&self, u: Vec<UpstreamStats>) {
        let _ = self.tx.try_send(Feed::Upstreams(u));
    }

    /// Queues the live counters (with this queue's drops added) and, once a second,
    /// the per-upstream table that `upstreams` computes.
    pub fn live(&mut self, mut s: LiveStats, upstreams: impl FnOnce() -> Vec<UpstreamStats>) {
        s.dropped += self.dropped();
        let _ = self.tx.try_send(Feed::Stats(s));
        if self
            .upstreams_at
            .is_none_or(|t| s.at_ns >= t + UPSTREAMS_EVERY_NS)
        {
            self.upstreams_at = Some(s.at_ns);
            self.upstreams(upstreams());
        }
    }

    /// Queues what is watched now (a snapshot, like the counters).
    pub fn coverage(&self, c: crate::correlate::Coverage) {
        let _ = self.tx.try_send(Feed::Coverage(c));
    }

    /// Lookups dropped because the screen did not keep up.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Ends the screen within a frame and restores the terminal (end of capture, signal).
    pub fn close(&self) {
        self.shared.close();
    }
}

/// The screen's end of the queue.
#[derive(Debug)]
pub struct FeedRx {
    rx: Receiver<Feed>,
    shared: Arc<Shared>,
}

/// A bounded queue from the pipeline to the screen.
pub fn channel(capacity: usize) -> (FeedTx, FeedRx) {
    let (tx, rx) = mpsc::sync_channel(capacity.max(1));
    let shared = Arc::new(Shared::default());
    (
        FeedTx {
            tx,
            shared: shared.clone(),
            upstreams_at: None,
        },
        FeedRx { rx, shared },
    )
}

/// Why the screen ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// `q` or Ctrl-C.
    Quit,
    /// [`FeedTx::close`].
    Closed,
    /// SIGINT or SIGTERM, with [`Options::handle_signals`].
    Signal,
    /// Every [`FeedTx`] was dropped, without [`Options::linger`].
    FeedEnded,
}

#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Stay up after the feed ended (replay: browse the file's lookups), until `q`.
    pub linger: bool,
    /// [`spawn`] listens for SIGINT and SIGTERM itself and ends the screen on them
    /// (for callers that do not call [`FeedTx::close`] on signals).
    pub handle_signals: bool,
}

/// Every input of the screen.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Feed(Feed),
    FeedEnded,
    Key(KeyEvent),
    Resize(u16, u16),
}

/// Applies one input to the model: the whole behaviour of the screen, minus the drawing.
pub fn handle(model: &mut Model, ev: Event) {
    let action = match ev {
        Event::Feed(f) => Some(Action::Feed(f)),
        Event::FeedEnded => Some(Action::FeedEnded),
        Event::Key(k) => from_key(k, model),
        Event::Resize(w, h) => Some(Action::Resize(w, h)),
    };
    if let Some(a) = action {
        update(model, a);
    }
}

/// Owns the terminal until the user quits or the feed is closed; restores it
/// whatever happens. Blocks: run it on its own thread (see [`spawn`]).
pub fn run(rx: FeedRx, header: HeaderInfo, opts: &Options) -> io::Result<Exit> {
    install_panic_hook();
    enter()?;
    let result = (|| {
        let mut terminal = Terminal::new(CrosstermBackend::new(io::stdout()))?;
        let size = terminal.size()?;
        let mut model = Model::new(header, (size.width, size.height));
        event_loop(&mut terminal, &mut model, &rx, opts)
    })();
    restore();
    result
}

fn event_loop(
    terminal: &mut Terminal<CrosstermBackend<Stdout>>,
    model: &mut Model,
    rx: &FeedRx,
    opts: &Options,
) -> io::Result<Exit> {
    let period = Duration::from_secs(1) / FRAME_RATE;
    let mut next_frame = Instant::now();
    let mut dirty = true;
    let mut ended = false;
    loop {
        match rx.shared.state.load(Ordering::Relaxed) {
            CLOSE => return Ok(Exit::Closed),
            SIGNALLED => return Ok(Exit::Signal),
            _ => {}
        }
        // At most one queue's worth per pass, so that a fast feed cannot starve the keys.
        for _ in 0..QUEUE {
            match rx.rx.try_recv() {
                Ok(f) => handle(model, Event::Feed(f)),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    if !ended {
                        ended = true;
                        handle(model, Event::FeedEnded);
                    }
                    break;
                }
            }
            dirty = true;
        }
        if ended && !opts.linger {
            return Ok(Exit::FeedEnded);
        }
        let now = Instant::now();
        if now >= next_frame {
            if dirty {
                terminal.draw(|f| view(f, model))?;
                dirty = false;
            }
            next_frame = now + period;
        }
        if event::poll(next_frame.saturating_duration_since(Instant::now()))? {
            match event::read()? {
                TermEvent::Key(k) => handle(model, Event::Key(k)),
                TermEvent::Resize(w, h) => handle(model, Event::Resize(w, h)),
                _ => continue,
            }
            dirty = true;
            if model.quit {
                return Ok(Exit::Quit);
            }
        }
    }
}

/// The screen on its own thread, for async callers.
pub struct UiHandle {
    thread: Option<JoinHandle<io::Result<Exit>>>,
    done: tokio::sync::watch::Receiver<bool>,
    shared: Arc<Shared>,
}

/// Starts [`run`] on a thread named `dnstrace-tui`.
pub fn spawn(rx: FeedRx, header: HeaderInfo, opts: Options) -> io::Result<UiHandle> {
    let shared = rx.shared.clone();
    let (done_tx, done) = tokio::sync::watch::channel(false);
    if opts.handle_signals
        && let Ok(rt) = tokio::runtime::Handle::try_current()
    {
        let shared = shared.clone();
        rt.spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            shared.state.store(SIGNALLED, Ordering::Relaxed);
        });
    }
    let thread = std::thread::Builder::new()
        .name("dnstrace-tui".to_owned())
        .spawn(move || {
            let r = run(rx, header, &opts);
            let _ = done_tx.send(true);
            r
        })?;
    Ok(UiHandle {
        thread: Some(thread),
        done,
        shared,
    })
}

impl UiHandle {
    /// Resolves once the screen has ended (the user quit, or it failed). Cancel-safe.
    pub async fn ended(&mut self) {
        let _ = self.done.wait_for(|d| *d).await;
    }

    /// Ends the screen (if it is still up), waits until the terminal is restored, and
    /// says why it ended.
    pub async fn finish(mut self) -> io::Result<Exit> {
        self.shared.close();
        self.ended().await;
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(io::Error::other("the TUI thread panicked")),
            None => Ok(Exit::Closed),
        }
    }
}

impl Drop for UiHandle {
    /// An early return of the caller still gives the terminal back.
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.shared.close();
            let _ = thread.join();
        }
    }
}

/// Set while the terminal is in raw mode on the alternate screen.
static ACTIVE: AtomicBool = AtomicBool::new(false);

fn enter() -> io::Result<()> {
    terminal::enable_raw_mode()?;
    ACTIVE.store(true, Ordering::SeqCst);
    if let Err(e) = execute!(io::stdout(), EnterAlternateScreen, cursor::Hide) {
        restore();
        return Err(e);
    }
    Ok(())
}

/// Puts the terminal back as it was (once; later calls do nothing).
pub fn restore() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = terminal::disable_raw_mode();
        let _ = execute!(io::stdout(), LeaveAlternateScreen, cursor::Show);
    }
}

/// A panic anywhere restores the terminal before its message is printed.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

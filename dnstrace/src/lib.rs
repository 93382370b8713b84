//! dnstrace: a packet-level DNS wire tracer for Kubernetes nodes.
//!
//! Data flows one way: kernel → ring buffer → [`capture`] → [`pipeline`] ([`decode`] →
//! [`correlate`]) → [`sink`] and [`tui`]; `watch` ([`app`]) and [`replay`] feed the pipeline.
pub mod app;
pub mod capture;
pub mod cli;
pub mod correlate;
pub mod decode;
pub mod filter;
pub mod hold;
pub mod identity;
#[cfg(test)]
mod layering;
pub mod logging;
pub mod metrics;
pub mod outfile;
pub mod pipeline;
pub mod replay;
pub mod sink;
pub mod tui;

/// jemalloc's options for the binaries that use it as their allocator (dnstrace, and the
/// `collector_bench` example, so that it measures what dnstrace runs), exported by each
/// as `_rjem_malloc_conf` (the environment's `_RJEM_MALLOC_CONF` overrides it): one arena,
/// as one task does nearly all the work, and freed pages given back within a second, so
/// that the memory budget holds.
pub const JEMALLOC_CONF: &[u8; 47] = b"narenas:1,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// Like `eprintln!`, but a full or closed stderr is ignored instead of panicking:
/// a message that cannot be shown must not take the run (and its detach) down.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::writeln!(::std::io::stderr().lock(), $($arg)*);
    }};
}

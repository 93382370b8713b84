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

/// Like `eprintln!`, but a full or closed stderr is ignored instead of panicking:
/// a message that cannot be shown must not take the run (and its detach) down.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::writeln!(::std::io::stderr().lock(), $($arg)*);
    }};
}

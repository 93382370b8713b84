//! dnstrace: a packet-level DNS wire tracer for Kubernetes nodes.
//!
//! Data flows one way: kernel → ring buffer → [`capture`] → [`decode`] → [`sink`].
pub mod app;
pub mod capture;
pub mod cli;
pub mod correlate;
pub mod decode;
pub mod logging;
pub mod outfile;
pub mod replay;
pub mod sink;
pub mod tui;

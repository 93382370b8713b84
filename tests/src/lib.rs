//! The dnstrace network lab: real network namespaces, links, NAT and DNS
//! servers (dnsmasq, unbound, BIND) that exist only while a [`Lab`] lives.
//!
//! - [`Lab`] is the RAII guard: every namespace it creates and every process it
//!   spawns goes away on drop, and a crashed run's leftovers with the same tag
//!   are removed by the next `Lab::new`.
//! - [`Node`] builds a Kubernetes node's DNS path (pod → node-local-dns →
//!   ClusterIP DNAT → CoreDNS-role pod → MASQUERADE → upstream BIND) on a lab,
//!   varied as [`NodeOptions`] say: the [`Server`] in each forwarder role
//!   (dnsmasq, unbound, BIND, kresd), the [`Route`] to the upstreams, the pod
//!   [`Layout`] and the address [`Family`].
//! - [`Scenario`] turns a node into a real reproduction of one failure mode of
//!   shared FAILURE-MODES.md and runs the client that shows it.
//! - [`Tracer`] runs the real `dnstrace watch --output json` in a lab netns
//!   and hands back its records ([`Trace`]).
//!
//! This crate must not depend on `dnstrace`: xtask uses it before the eBPF
//! toolchain exists. Tests find the tracer binary through [`dnstrace_bin`].

mod dig;
pub mod hostile;
mod lab;
pub mod load;
mod node;
mod scenarios;
pub mod scratch;
mod servers;
mod tracer;

use std::path::PathBuf;

pub use dig::DigReply;
pub use lab::{CmdOutput, Lab, MAX_TAG_LEN, Proc, RUN_DIR, Signal, VethEnd, is_root};
pub use node::{Family, Layout, Node, NodeOptions, Route, example_zone};
pub use scenarios::*;
pub use servers::{Server, Zone};
pub use tracer::{Trace, Tracer, fqdn, one_line, program_ids, replay};

/// A scripted responder for python3: answers every datagram to ADDR (IPv4 or IPv6) on
/// each of the PORTS after it with itself, the QR bit set (a reply of the same ID and
/// length as its query, one byte apart). Prints `ready` once bound.
pub const ECHO_PY: &str = r#"
import select, socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
socks = []
for port in sys.argv[2:]:
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((sys.argv[1], int(port)))
    socks.append(s)
print("ready", flush=True)
while True:
    for s in select.select(socks, [], [])[0]:
        d, a = s.recvfrom(4096)
        r = bytearray(d)
        r[2] |= 0x80
        s.sendto(bytes(r), a)
"#;

/// Environment variable naming the `dnstrace` binary the privileged tests run.
pub const DNSTRACE_BIN_ENV: &str = "DNSTRACE_BIN";

/// True (after printing why) when the caller should skip a test that needs root.
///
/// `if dnstrace_tests::skip_without_root() { return; }`
pub fn skip_without_root() -> bool {
    if is_root() {
        return false;
    }
    eprintln!(
        "skipped: needs root (creates network namespaces and loads eBPF); run `cargo xtask test`"
    );
    true
}

/// The `dnstrace` binary named by `DNSTRACE_BIN` (set by `cargo xtask test`),
/// or `None` after printing why the caller should skip.
pub fn dnstrace_bin() -> Option<PathBuf> {
    match std::env::var_os(DNSTRACE_BIN_ENV) {
        Some(path) if PathBuf::from(&path).is_file() => Some(PathBuf::from(path)),
        Some(path) => {
            eprintln!(
                "skipped: {DNSTRACE_BIN_ENV}={} is not a file",
                PathBuf::from(path).display()
            );
            None
        }
        None => {
            eprintln!("skipped: {DNSTRACE_BIN_ENV} is unset; run `cargo xtask test`");
            None
        }
    }
}

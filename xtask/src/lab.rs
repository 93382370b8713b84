//! `cargo xtask lab up|down`: a lab node for manual poking.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use dnstrace_tests::{Lab, Node};

use crate::{fmt_duration, require_root, sleep_unless_stopped};

const TAG: &str = "lab";

#[derive(clap::Subcommand)]
pub enum Action {
    /// Build a node (tag "lab"), print its names and keep it up until Ctrl-C.
    Up,
    /// Stop running `lab up`s and remove labs whose creator died (any tag).
    Down,
}

pub fn run(action: Action) -> Result<()> {
    require_root()?;
    match action {
        Action::Up => up(),
        Action::Down => down(),
    }
}

fn up() -> Result<()> {
    let t = Instant::now();
    let node = Node::new(TAG).context("building the lab node")?;
    let n = &node;
    eprintln!(
        "[lab] node {} up in {}",
        n.lab.prefix(),
        fmt_duration(t.elapsed())
    );
    eprintln!(
        "  netns      node {}  pod {}  coredns {}  upstream {}",
        n.node_ns, n.pod_ns, n.cdns_ns, n.up_ns
    );
    eprintln!(
        "  node links {} (pod)  {} (coredns)  {} (uplink, MASQUERADE)  {} (ifb, node-local-dns)",
        n.pod_veth, n.cdns_veth, n.uplink, n.nodelocal_dev
    );
    eprintln!("  pod        {} {} via {}", n.pod_ip, n.pod_ip6, n.pod_gw);
    eprintln!(
        "  node-local-dns {} (dnsmasq in {})",
        n.nodelocal_ip, n.node_ns
    );
    eprintln!(
        "  ClusterIP  {} → DNAT {} (unbound in {})",
        n.cluster_ip, n.cdns_ip, n.cdns_ns
    );
    eprintln!(
        "  node IP    {} → gateway {}; upstream BIND {} ({})",
        n.node_ip, n.upstream_gw, n.resolver_ip, n.zone
    );
    eprintln!("  logs       {}", n.lab.dir().display());
    eprintln!(
        "  try        ip netns exec {} dig @{} {}",
        n.pod_ns, n.nodelocal_ip, n.www_name
    );
    eprintln!(
        "             ip netns exec {} dig +tcp @{} {}",
        n.pod_ns, n.cluster_ip, n.big_name
    );
    eprintln!("             ip netns exec {} conntrack -L", n.node_ns);
    eprintln!("[lab] Ctrl-C (or `cargo xtask lab down`) tears it down");
    while sleep_unless_stopped(Duration::from_secs(1)) {
        if let Some(status) = [&n.nodelocal, &n.coredns, &n.upstream]
            .into_iter()
            .find_map(|p| n.lab.status(p).ok().flatten().map(|s| (p, s)))
        {
            eprintln!(
                "[lab] warning: {} exited ({}); log: {}",
                status.0.name,
                status.1,
                n.lab.log_tail(status.0, 5)
            );
            break;
        }
    }
    let t = Instant::now();
    drop(node);
    eprintln!("[lab] torn down in {}", fmt_duration(t.elapsed()));
    Ok(())
}

fn down() -> Result<()> {
    let mut did = false;
    for (prefix, pid, tag) in Lab::live_labs()? {
        if tag != TAG {
            continue;
        }
        eprintln!("[lab] stopping `lab up` {prefix} (pid {pid})");
        // SAFETY: plain syscall; the pid belongs to a live `xtask lab up` (checked by start time).
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && Lab::live_labs()?.iter().any(|(p, ..)| *p == prefix) {
            std::thread::sleep(Duration::from_millis(50));
        }
        did = true;
    }
    for removed in Lab::clean_stale(None)? {
        eprintln!("[lab] removed {removed}");
        did = true;
    }
    if !did {
        eprintln!("[lab] nothing to do");
    }
    Ok(())
}

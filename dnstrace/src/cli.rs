//! Command-line arguments (raw, as typed) and their validation into a config.
use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum, builder::RangedU64ValueParser};

use crate::capture::{SNAPLEN_MAX, SNAPLEN_MIN, TcMode};

/// The exit status table, shown by every `--help` (and kept in the README).
macro_rules! exit_status {
    () => {
        "Exit status:
  0    the run ended as asked (Ctrl-C, SIGTERM, --duration, q, end of the file)
  1    an error: attaching failed, or stdout or --pcap could not be written
  2    a bad command line or a value out of range; nothing was attached
  3    replay --exit-code: a lookup it printed had a verdict other than ok
  141  stdout's reader went away (e.g. `| head`): dnstrace detached, then
       ended by SIGPIPE as other Unix tools do"
    };
}

/// `--version`: the package version and the commit it was built from (build.rs).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("DNSTRACE_COMMIT"),
    ")"
);

const ABOUT: &str = "Packet-level DNS wire tracer for Kubernetes nodes";
const LONG_ABOUT: &str = "\
Packet-level DNS wire tracer for Kubernetes nodes.

dnstrace captures DNS (UDP and TCP, IPv4 and IPv6) in the kernel with eBPF at
every hop of a node's DNS path: pod veths, the uplink, and the socket hop where
packets are delivered to local sockets without crossing an interface (a
host-network node-local-dns on 169.254.25.10, or a pod querying 127.0.0.53).
It never changes, delays or drops a packet.

It stitches the packets of each client lookup hop by hop, across DNAT, SNAT
and forwarders, and gives the lookup a verdict that says where and why it
failed (upstream rejects EDNS, upstreams disagree, loopback nameserver, reply
from an unexpected source, left via the uplink, forwarding loop, truncated
without TCP, dropped in the kernel with the reason, server error,
unanswered), with a hint that names the fix.

Run it as root in a privileged node shell, e.g.
  kubectl debug node/NODE -it --profile=sysadmin --image=IMAGE -- dnstrace watch --auto";

#[derive(Debug, Parser)]
#[command(
    name = "dnstrace",
    version = VERSION,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = exit_status!()
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Capture DNS live: a full-screen view on a terminal, else text or JSON lines.
    #[command(long_about = WATCH_ABOUT, after_help = exit_status!(), after_long_help = WATCH_EXAMPLES)]
    Watch(WatchArgs),
    /// Read a pcap or pcapng file and print its lookups and verdicts (no privileges needed).
    #[command(long_about = REPLAY_ABOUT, after_help = exit_status!(), after_long_help = REPLAY_EXAMPLES)]
    Replay(ReplayArgs),
    /// Remove netlink tc filters left by a killed dnstrace (watch also does this when it starts).
    #[command(long_about = CLEANUP_ABOUT, after_help = exit_status!())]
    Cleanup(CleanupArgs),
    /// Print a shell completion script: dnstrace completions bash > /etc/bash_completion.d/dnstrace
    #[command(long_about = COMPLETIONS_ABOUT, after_help = exit_status!())]
    Completions(CompletionsArgs),
    /// Write the man pages (dnstrace.1 and one per command) into a folder.
    #[command(hide = true)]
    Man(ManArgs),
    /// Attach a no-op tc classifier until SIGINT: the baseline of `cargo xtask bench`.
    #[command(hide = true)]
    BenchNoop(BenchNoopArgs),
}

const COMPLETIONS_ABOUT: &str = "\
Print a completion script for SHELL to stdout. Install it where your shell looks:
  bash  dnstrace completions bash > /etc/bash_completion.d/dnstrace
  zsh   dnstrace completions zsh > /usr/local/share/zsh/site-functions/_dnstrace
  fish  dnstrace completions fish > ~/.config/fish/completions/dnstrace.fish
The release archive (`cargo xtask dist`) ships them ready made.";

/// Arguments of `dnstrace completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to write completions for.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

/// Arguments of the hidden `dnstrace man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// The folder to write the pages into (it must exist).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// Prints the completion script for `shell` to `out`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(shell, &mut cmd, "dnstrace", out);
}

/// Writes dnstrace.1 and dnstrace-COMMAND.1 for each visible command into `dir`;
/// returns the files written.
pub fn man_pages(dir: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    // Building names each command "dnstrace-watch" (the page) and "dnstrace watch" (usage).
    cmd.build();
    let mut written = Vec::new();
    let mut page = |cmd: clap::Command| -> std::io::Result<()> {
        let name = cmd.get_display_name().unwrap_or(cmd.get_name()).to_owned();
        let path = dir.join(format!("{name}.1"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut buf)?;
        std::fs::write(&path, buf)?;
        written.push(path);
        Ok(())
    };
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        page(sub.clone())?;
    }
    page(cmd)?;
    Ok(written)
}

const WATCH_ABOUT: &str = "\
Capture DNS live, stitch each client lookup hop by hop, and give it a verdict.

Packets of one lookup are stitched across DNAT, SNAT and forwarders (which
re-issue the query under a new id) into one record per client lookup, with
its hop timeline, the forwarded queries, and a verdict: ok,
upstream_rejects_edns, upstream_disagreement, loopback_nameserver,
reply_from_unexpected_source, left_via_uplink, forwarding_loop,
truncated_no_tcp, dropped, server_error, unanswered, or unknown (the tracer
lost events or did not watch a hop it needed). Problems come with what is to
blame, the last hop seen and a hint naming the fix. A per-upstream table
(queries, rcodes, unanswered, p50/p99 latency) is printed periodically and
at exit.

With --packets, every packet is printed too: where it was seen (interface and
direction, or the socket hop), the addresses as they were at that point (so
NAT is visible from one hop to the next), the DNS id, flags, question, rcode,
a short answer summary and EDNS. On exit dnstrace prints its counters: packets
seen in the kernel, events emitted, events lost in the kernel (ring buffer
full), events dropped in userspace (output closed) and malformed packets. A
slow output never drops silently: the pipeline pushes back onto the ring
buffer, and the kernel counts each event it could not queue.

On a terminal the default output is a full-screen view (--output tui): one
row per lookup, coloured by verdict, a detail pane (hop timeline with the
addresses at each hop, forwarded queries, EDNS, verdict and hint), the
per-upstream table and live counters; ? shows its keys, q quits (like
Ctrl-C). It never slows the capture down: lookups it cannot keep up with are
dropped and counted on screen. Logs go to --log-file while it runs.";

const WATCH_EXAMPLES: &str = concat!(
    "\
Examples:
  dnstrace watch --auto                      every interface of this netns + the socket hop
  dnstrace watch --auto --output text        lines instead of the full-screen view
  dnstrace watch -i eth0 -i lxc12ab          two interfaces, no socket hop
  dnstrace watch --auto --output json | jq 'select(.verdict!=\"ok\")'
  dnstrace watch --auto --output text --pcap node.pcapng   also a capture for Wireshark
  dnstrace watch --auto --port 53 --port 5353 --duration 30s
  DNSTRACE_AUTO=1 DNSTRACE_OUTPUT=json dnstrace watch   same, from the environment

",
    exit_status!()
);

/// How much of each lookup JSON and text write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Hops {
    /// Every hop and forwarded query of every lookup.
    All,
    /// Every hop of a problem; a healthy lookup is one compact record (its hop count and path).
    #[default]
    Problems,
    /// No lookup's hops: compact records only, the verdict's culprit, last hop and detail kept.
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// One line per lookup, with a hop timeline and a hint for problems (and a line per packet with --packets).
    Text,
    /// One JSON object per line (schema in the README).
    Json,
    /// Full-screen live view: lookups, detail, upstreams, counters (needs a terminal).
    Tui,
}

impl Output {
    /// The output when none is given: the TUI on a terminal, text lines otherwise.
    pub fn default_for(stdout_is_terminal: bool) -> Self {
        if stdout_is_terminal {
            Self::Tui
        } else {
            Self::Text
        }
    }
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Interface to capture on, ingress and egress (repeatable, or comma-separated; each once).
    #[arg(
        short,
        long = "iface",
        value_name = "IF",
        env = "DNSTRACE_IFACE",
        value_delimiter = ',',
        value_parser = parse_iface
    )]
    pub ifaces: Vec<String>,

    /// Capture on every interface of the current network namespace (and each one that appears later), plus the socket hop and kernel drops.
    #[arg(short, long, env = "DNSTRACE_AUTO")]
    pub auto: bool,

    /// Also hook the socket hop (cgroup_skb on the cgroup v2 root; sees every netns).
    #[arg(long, env = "DNSTRACE_SOCKET_HOP", conflicts_with = "no_socket_hop")]
    pub socket_hop: bool,

    /// With --auto, leave the socket hop out.
    #[arg(long, env = "DNSTRACE_NO_SOCKET_HOP")]
    pub no_socket_hop: bool,

    /// Also trace kernel drops of DNS packets with their reason (tp_btf skb:kfree_skb; on with --auto).
    #[arg(long, env = "DNSTRACE_DROPS", conflicts_with = "no_drops")]
    pub drops: bool,

    /// With --auto, do not trace kernel drops.
    #[arg(long, env = "DNSTRACE_NO_DROPS")]
    pub no_drops: bool,

    /// DNS port to match, source or destination (1..=65535; repeatable, at most 8).
    #[arg(
        short,
        long = "port",
        value_name = "PORT",
        env = "DNSTRACE_PORT",
        value_delimiter = ',',
        default_value = "53",
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub ports: Vec<u16>,

    /// Bytes of each packet to copy from the kernel (64..=2048); longer packets are cut and counted.
    #[arg(
        long,
        value_name = "BYTES",
        env = "DNSTRACE_SNAPLEN",
        default_value_t = SNAPLEN_MAX,
        value_parser = clap::value_parser!(u32).range(i64::from(SNAPLEN_MIN)..=i64::from(SNAPLEN_MAX))
    )]
    pub snaplen: u32,

    /// Copy every sighting of a UDP payload in full, not once per CPU and second
    /// (to measure and test the compact records).
    #[arg(long, hide = true, env = "DNSTRACE_NO_DEDUP")]
    pub no_dedup: bool,

    /// Output format [default: tui when stdout is a terminal, else text].
    #[arg(short, long, value_enum, env = "DNSTRACE_OUTPUT")]
    pub output: Option<Output>,

    /// Write logs to this file instead of stderr [default with --output tui: /var/log/dnstrace/dnstrace.log as root, else $XDG_STATE_HOME/dnstrace/dnstrace.log, ~/.local/state/dnstrace/dnstrace.log or /tmp/dnstrace-UID/dnstrace.log].
    #[arg(long, value_name = "PATH", env = "DNSTRACE_LOG_FILE")]
    pub log_file: Option<PathBuf>,

    /// Also print every captured packet, not only the lookups stitched from them.
    #[arg(long, env = "DNSTRACE_PACKETS")]
    pub packets: bool,

    /// A lookup without an answer this long after the client's last try is `unanswered` (1ms..=1h).
    #[arg(long, value_name = "TIME", env = "DNSTRACE_TIMEOUT", default_value = "5s", value_parser = parse_timeout)]
    pub timeout: Duration,

    /// Interface that leads off the node (repeatable); default: those holding a default route
    /// or a route via a gateway, in any routing table.
    #[arg(
        long = "uplink",
        value_name = "IF",
        env = "DNSTRACE_UPLINK",
        value_delimiter = ',',
        value_parser = parse_iface
    )]
    pub uplinks: Vec<String>,

    /// Print the per-upstream table this often, 1s..=24h (and always at exit); 0 turns the periodic one off.
    #[arg(long, value_name = "TIME", env = "DNSTRACE_UPSTREAM_EVERY", default_value = "60s", value_parser = parse_upstream_every)]
    pub upstream_every: Duration,

    /// Stop after this long (e.g. 30, 30s, 5m, 1h; at most 8760h); default: until Ctrl-C or SIGTERM.
    #[arg(short, long, value_name = "TIME", env = "DNSTRACE_DURATION", value_parser = parse_run_duration)]
    pub duration: Option<Duration>,

    /// Write this file (our pid) once everything has started: every attach, --pcap, the output (for scripts and tests).
    #[arg(long, value_name = "PATH", env = "DNSTRACE_READY_FILE")]
    pub ready_file: Option<PathBuf>,

    /// Kernel ring buffer size in bytes: a power of two from 4096 to 1073741824 (1 GiB).
    #[arg(
        long,
        value_name = "BYTES",
        env = "DNSTRACE_RING_SIZE",
        default_value_t = 8 << 20,
        value_parser = parse_ring_size
    )]
    pub ring_size: u32,

    /// Userspace queue between the ring buffer and the decoder, in batches of up to 256 events (1..=65536), and never more than 16 MiB of events whatever the count; when it is full, events wait in the ring buffer.
    #[arg(
        long,
        value_name = "BATCHES",
        env = "DNSTRACE_QUEUE",
        default_value_t = 1024,
        value_parser = RangedU64ValueParser::<usize>::new().range(1..=QUEUE_MAX)
    )]
    pub queue: usize,

    /// Memory dnstrace may hold: its own resident set (RSS) stays within it, even when no query is answered. It sets how many lookups may be open at once: what is left after the ring buffer (--ring-size), the full event queue (16 MiB) and dnstrace itself (28 MiB), at 1 KiB per open lookup (64 MiB: 12288 lookups). When that many are open, the oldest is finished at once as `unknown` ("evicted", counted in the summary and metrics) to make room. Bytes, or with a unit: 512MiB, 1GiB (K, M, G are KiB, MiB, GiB).
    #[arg(long, value_name = "SIZE", env = "DNSTRACE_MEMORY_BUDGET", default_value = "64MiB", value_parser = parse_size)]
    pub memory_budget: u64,

    /// How to attach tc programs.
    #[arg(long, value_enum, env = "DNSTRACE_TC_MODE", default_value = "auto")]
    pub tc_mode: TcMode,

    /// First priority tried for netlink tc filters, 2..=65535 (1 is left to other tools); when it is taken, the next free one up to 15 higher.
    #[arg(
        long,
        value_name = "PRIO",
        env = "DNSTRACE_TC_PRIORITY",
        default_value_t = 53,
        value_parser = clap::value_parser!(u16).range(2..)
    )]
    pub tc_priority: u16,

    /// Also write every captured packet to this pcapng file for Wireshark: one interface per capture point, each packet commented with its lookup, hop and verdict.
    #[arg(long, value_name = "FILE", env = "DNSTRACE_PCAP")]
    pub pcap: Option<PathBuf>,

    /// The `node` named in every JSON record [default: the host name].
    #[arg(long, value_name = "NAME", env = "DNSTRACE_NODE", value_parser = parse_node)]
    pub node: Option<String>,

    /// Serve Prometheus metrics on http://ADDR/metrics (e.g. 127.0.0.1:9968, or :9968 for every
    /// address): lookups by verdict, qtype and rcode, latency histograms, per-upstream figures,
    /// and the tracer's own losses and coverage. Counts every lookup, whatever the filters show.
    #[arg(long, value_name = "ADDR", env = "DNSTRACE_METRICS", value_parser = parse_listen)]
    pub metrics: Option<std::net::SocketAddr>,

    /// With --metrics, also dnstrace_pod_lookups_total{namespace,pod,verdict}: one series per
    /// pod and verdict (at most 1024 pods), off by default for the sake of cardinality.
    #[arg(long, requires = "metrics", env = "DNSTRACE_METRICS_PODS")]
    pub metrics_pods: bool,

    /// The container runtime's CRI socket, which names the pods [default: /run/containerd/containerd.sock, else /run/crio/crio.sock].
    #[arg(
        long,
        value_name = "PATH",
        env = "DNSTRACE_CRI_SOCKET",
        conflicts_with = "no_cri"
    )]
    pub cri_socket: Option<PathBuf>,

    /// Do not ask the container runtime: pods are known by the UID in their cgroup only.
    #[arg(long, env = "DNSTRACE_NO_CRI")]
    pub no_cri: bool,
    #[command(flatten)]
    pub filter: FilterArgs,
}

/// "127.0.0.1:9968", "[::1]:9968", or ":9968" (every address).
fn parse_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    let full = match s.strip_prefix(':') {
        Some(port) => format!("[::]:{port}"),
        None => s.to_owned(),
    };
    full.parse()
        .map_err(|_| format!("{s:?} is not ADDR:PORT (e.g. 127.0.0.1:9968 or :9968)"))
}

/// Which lookups are shown (`watch` and `replay`). Every lookup is still stitched and
/// counted in the summary; these only select what is written out.
#[derive(Debug, Default, Args)]
#[command(next_help_heading = "Which lookups to show, and how much of each")]
pub struct FilterArgs {
    /// Which lookups' hops and forwarded queries are written (JSON and text).
    #[arg(
        long,
        value_enum,
        value_name = "WHICH",
        env = "DNSTRACE_HOPS",
        default_value = "problems"
    )]
    pub hops: Hops,

    /// Only lookups from a client in this CIDR or address (repeatable, or comma-separated), e.g. 10.244.3.0/24, fd00::/8.
    #[arg(long = "client", value_name = "CIDR", value_delimiter = ',', value_parser = crate::filter::parse_client)]
    pub clients: Vec<ipnet::IpNet>,

    /// Only lookups for a name matching this glob, without case or trailing dot (repeatable): `*` is any run of characters, dots too, e.g. '*.svc.cluster.local'.
    #[arg(long = "qname", value_name = "GLOB", value_parser = crate::filter::parse_qname)]
    pub qnames: Vec<crate::filter::QnameGlob>,

    /// Only lookups with these verdicts: `problems` (every verdict but ok) or names, comma-separated, e.g. problems, server_error,unanswered.
    #[arg(long = "verdict", value_name = "LIST", value_parser = crate::filter::parse_verdicts)]
    pub verdicts: Vec<crate::filter::VerdictSet>,

    /// Only lookups from a pod matching NAMESPACE/NAME, each part a glob, or NAME in any namespace (repeatable, or comma-separated), e.g. 'shop/web-*', '*/coredns-*'.
    #[arg(long = "pod", value_name = "NS/NAME", value_delimiter = ',', value_parser = crate::filter::parse_pod)]
    pub pods: Vec<crate::filter::PodGlob>,

    /// Only lookups from a pod in this namespace (repeatable, or comma-separated).
    #[arg(long = "namespace", value_name = "NS", value_delimiter = ',', value_parser = crate::filter::parse_namespace)]
    pub namespaces: Vec<String>,
}

impl FilterArgs {
    pub fn build(self) -> crate::filter::LookupFilter {
        crate::filter::LookupFilter::new(self.clients, &self.qnames, self.verdicts)
            .with_pods(&self.pods, self.namespaces)
    }
}

const REPLAY_ABOUT: &str = "\
Read a capture file and run the same decoder and correlator as `watch`, printing
the same lookups and verdicts. Time comes from the file: lookups expire on
packet timestamps. The file ends at its last packet (or, for a file written by
`watch --pcap`, when that capture ended); a lookup whose client was still
within --timeout then ends `unknown`, since its reply may have come later.

Reads pcap (micro- or nanosecond, either byte order) and pcapng (several
interfaces, each with its own link type and time resolution). Link types:
Ethernet (with VLAN tags), raw IP, Linux cooked (SLL and SLL2, as written by
`tcpdump -i any`), BSD loopback (NULL and LOOP) and NFLOG. Interface names come
from the interface blocks; directions from epb_flags or the SLL packet type.
A file written by `dnstrace watch --pcap` is read back with its capture points,
network namespaces and drop reasons, so it gives the verdicts of the live run.

DNS over TCP is reassembled (several messages in one segment, one message split
over several), and so are IPv4 and IPv6 fragments; fragments of a datagram that
never completes are counted. Only UDP and TCP on the --port ports is DNS: mDNS (5353), LLMNR
(5355) and DNS quoted inside ICMP errors are skipped and counted.";

const REPLAY_EXAMPLES: &str = concat!(
    "\
Examples:
  dnstrace replay capture.pcapng
  dnstrace replay --output json --packets node.pcap | jq 'select(.type==\"lookup\")'
  tcpdump -i any -w any.pcap port 53; dnstrace replay any.pcap

",
    exit_status!()
);

/// Arguments of `dnstrace replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The pcap or pcapng file to read.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// Output format.
    #[arg(
        short,
        long,
        value_enum,
        env = "DNSTRACE_OUTPUT",
        default_value = "text"
    )]
    pub output: Output,

    /// Also print every DNS packet, not only the lookups.
    #[arg(long, env = "DNSTRACE_PACKETS")]
    pub packets: bool,

    /// A lookup still unanswered this long after the client's last query is finished as unanswered, 1ms..=1h [default: the capture's timeout for a file written by dnstrace, else 5s].
    #[arg(long, value_name = "TIME", env = "DNSTRACE_TIMEOUT", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,

    /// UDP/TCP port(s) that carry DNS (1..=65535); other traffic in the file is skipped.
    #[arg(
        short,
        long = "port",
        value_name = "PORT",
        value_delimiter = ',',
        default_value = "53",
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub ports: Vec<u16>,

    /// Interface(s) that lead off the node (default: from the file's section header when
    /// dnstrace wrote it, else none).
    #[arg(
        long = "uplink",
        value_name = "IF",
        value_delimiter = ',',
        value_parser = parse_iface
    )]
    pub uplinks: Vec<String>,

    /// Also write what was read to this pcapng file, commented with lookups and verdicts.
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,

    /// Write logs to this file instead of stderr [default with --output tui:
    /// /var/log/dnstrace/dnstrace.log as root, else $XDG_STATE_HOME/dnstrace/dnstrace.log,
    /// ~/.local/state/dnstrace/dnstrace.log or /tmp/dnstrace-UID/dnstrace.log].
    #[arg(long, value_name = "PATH", env = "DNSTRACE_LOG_FILE")]
    pub log_file: Option<PathBuf>,

    /// Fail (exit status 1) when the file is cut short or damaged. Without it such a file is
    /// replayed as far as it can be read, with a warning, `complete: false` in the summary,
    /// and exit status 0.
    #[arg(long, env = "DNSTRACE_STRICT")]
    pub strict: bool,

    /// Exit with status 3 when a lookup that is printed (after --client, --qname and
    /// --verdict) has a verdict other than ok: for CI jobs that check captures.
    #[arg(long)]
    pub exit_code: bool,

    /// The `node` named in every JSON record (where the file was captured) [default: the host name].
    #[arg(long, value_name = "NAME", env = "DNSTRACE_NODE", value_parser = parse_node)]
    pub node: Option<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
}

const CLEANUP_ABOUT: &str = "\
Remove the netlink tc filters that a killed dnstrace left behind, in this
network namespace, and say what was removed.

On exit dnstrace removes its own filters. A tcx link goes with the process
even on SIGKILL, but a netlink clsact filter stays, and with it the program and
its ring buffer (8 MiB by default). `--tc-mode auto` uses netlink filters on nodes with
more than 32 interfaces (and on kernels before 6.6), so on a real node a
SIGKILLed or OOM-killed dnstrace leaves them. `dnstrace watch` removes them
when it starts; this command does the same without tracing.

A filter is removed only when it is beyond doubt a dnstrace filter that no
process uses: a bpf filter with dnstrace's own handle (0xd7530001 ingress,
0xd7530002 egress), a program named like dnstrace's classifiers with the same
tag (hash of the instructions) as this build's, and no running dnstrace or
other process holding that program. Other tools' filters and a running
dnstrace's are never touched; a filter of another dnstrace build is reported
with the `tc` command that removes it.

Prints one line per filter: `removed`, `would remove` (--dry-run), `kept (a
running dnstrace holds it)` or `kept (another dnstrace build's program…)`, each
with its `tc filter del` command. An empty clsact qdisc may stay: nothing tells
who created it.";

/// Arguments of `dnstrace cleanup`.
#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Say what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Only look at this interface (repeatable, or comma-separated) [default: every interface of this netns].
    #[arg(
        short,
        long = "iface",
        value_name = "IF",
        value_delimiter = ',',
        value_parser = parse_iface
    )]
    pub ifaces: Vec<String>,
}

/// Arguments of the hidden `bench-noop` (used by `cargo xtask bench` only).
#[derive(Debug, Args)]
pub struct BenchNoopArgs {
    /// Interface to attach to (repeatable).
    #[arg(short, long = "iface", value_name = "IF", required = true, value_parser = parse_iface)]
    pub ifaces: Vec<String>,
    /// Attach on egress only.
    #[arg(long)]
    pub egress_only: bool,
    /// Write this file once attached.
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
}

/// Validated `watch` settings.
#[derive(Clone, Debug)]
pub struct WatchConfig {
    pub ifaces: Vec<String>,
    pub auto: bool,
    pub socket_hop: bool,
    pub drops: bool,
    pub ports: Vec<u16>,
    pub snaplen: u32,
    /// Compact records for a UDP payload seen again (off with the hidden --no-dedup).
    pub dedup: bool,
    pub output: Output,
    /// Where logs go (None: stderr). Always set with the TUI, which owns the terminal.
    pub log_file: Option<PathBuf>,
    pub packets: bool,
    pub timeout: Duration,
    /// None: find them from the default routes.
    pub uplinks: Option<Vec<String>>,
    pub upstream_every: Option<Duration>,
    pub duration: Option<Duration>,
    pub ready_file: Option<PathBuf>,
    pub ring_size: u32,
    pub queue: usize,
    /// Open lookups at most, from `--memory-budget` ([`max_lookups_for`]).
    pub max_lookups: usize,
    pub tc_mode: TcMode,
    pub tc_priority: u16,
    pub pcap: Option<PathBuf>,
    /// The `node` of the records.
    pub node: String,
    /// `--client`, `--qname`, `--verdict`.
    pub filter: crate::filter::LookupFilter,
    /// `--hops`.
    pub hops: Hops,
    /// `--metrics`: where to serve them.
    pub metrics: Option<std::net::SocketAddr>,
    /// `--metrics-pods`.
    pub metrics_pods: bool,
    /// `--cri-socket`, `--no-cri`.
    pub pods: crate::identity::PodSource,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("nothing to capture: give --iface IF (repeatable), --auto, --socket-hop or --drops")]
    NothingToCapture,
    #[error("--port: at most {max} ports, got {got}")]
    TooManyPorts { max: usize, got: usize },
    #[error(
        "--output tui needs a terminal on stdout; use --output text or json with a pipe or file"
    )]
    TuiNeedsTerminal,
    #[error(
        "--memory-budget {budget} leaves too little for lookups: the ring buffer, the event queue and dnstrace itself take {fixed}, and at least {min} open lookups need {room} more; give at least {need}"
    )]
    MemoryBudget {
        budget: Size,
        fixed: Size,
        min: usize,
        room: Size,
        need: Size,
    },
}

impl TryFrom<WatchArgs> for WatchConfig {
    type Error = ConfigError;

    fn try_from(a: WatchArgs) -> Result<Self, ConfigError> {
        let socket_hop = a.socket_hop || (a.auto && !a.no_socket_hop);
        let drops = a.drops || (a.auto && !a.no_drops);
        if a.ifaces.is_empty() && !a.auto && !socket_hop && !drops {
            return Err(ConfigError::NothingToCapture);
        }
        let mut ports = a.ports;
        ports.sort_unstable();
        ports.dedup();
        let max = dnstrace_common::MAX_PORTS;
        if ports.len() > max {
            return Err(ConfigError::TooManyPorts {
                max,
                got: ports.len(),
            });
        }
        let stdout_tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
        let output = a.output.unwrap_or(Output::default_for(stdout_tty));
        if output == Output::Tui && !stdout_tty {
            return Err(ConfigError::TuiNeedsTerminal);
        }
        let log_file = log_file_for(output, a.log_file);
        let max_lookups = max_lookups_for(a.memory_budget, a.ring_size)?;
        Ok(Self {
            ifaces: first_of_each(a.ifaces),
            auto: a.auto,
            socket_hop,
            drops,
            ports,
            snaplen: a.snaplen,
            dedup: !a.no_dedup,
            output,
            log_file,
            packets: a.packets,
            timeout: a.timeout,
            uplinks: (!a.uplinks.is_empty()).then(|| first_of_each(a.uplinks)),
            upstream_every: (!a.upstream_every.is_zero()).then_some(a.upstream_every),
            duration: a.duration,
            ready_file: a.ready_file,
            ring_size: a.ring_size,
            queue: a.queue,
            max_lookups,
            tc_mode: a.tc_mode,
            tc_priority: a.tc_priority,
            pcap: a.pcap,
            node: a.node.unwrap_or_else(crate::identity::hostname),
            hops: a.filter.hops,
            metrics: a.metrics,
            metrics_pods: a.metrics_pods,
            filter: a.filter.build(),
            pods: match (a.cri_socket, a.no_cri) {
                (_, true) => crate::identity::PodSource::Cgroups,
                (Some(p), false) => crate::identity::PodSource::Socket(p),
                (None, false) => crate::identity::PodSource::Auto,
            },
        })
    }
}

/// Where logs go: the file given, else under the TUI (which owns the terminal) the
/// default file, else stderr (None).
pub fn log_file_for(output: Output, given: Option<PathBuf>) -> Option<PathBuf> {
    match (given, output) {
        (Some(p), _) => Some(p),
        (None, Output::Tui) => Some(crate::outfile::default_log_path()),
        (None, _) => None,
    }
}

/// `v` without repeats, in first-seen order: `-i A -i B -i A` hooks A once.
fn first_of_each(v: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(v.len());
    for s in v {
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// Most batches `--queue` may hold.
pub const QUEUE_MAX: u64 = 65_536;
/// Largest `--ring-size`: 1 GiB of kernel memory is already far past any need.
pub const RING_SIZE_MAX: u32 = 1 << 30;
/// Bounds of `--timeout`.
pub const TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_millis(1), Duration::from_secs(3600));
/// Bounds of `--upstream-every` (besides 0, off).
pub const UPSTREAM_EVERY_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(24 * 3600));
/// Bounds of `--duration`: up to a year.
pub const RUN_DURATION_RANGE: (Duration, Duration) =
    (Duration::from_millis(1), Duration::from_secs(8760 * 3600));

/// An interface name as Linux accepts one: 1 to 15 bytes, no '/', ':' or whitespace,
/// not "." or "..".
pub fn parse_iface(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 15 {
        return Err(format!(
            "{s:?} is not an interface name (1 to 15 characters)"
        ));
    }
    if s == "." || s == ".." || s.contains(['/', ':']) || s.chars().any(char::is_whitespace) {
        return Err(format!(
            "{s:?} is not an interface name (no '/', ':' or spaces)"
        ));
    }
    Ok(s.to_owned())
}

/// A `--node` name: 1 to 253 printable characters, as a Kubernetes node name fits in.
pub fn parse_node(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 253 || s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "{s:?} is not a node name (1 to 253 characters, no spaces or control characters)"
        ));
    }
    Ok(s.to_owned())
}

/// A power of two from 4096 to [`RING_SIZE_MAX`].
pub fn parse_ring_size(s: &str) -> Result<u32, String> {
    let n: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of bytes"))?;
    if n < 4096 || n > u64::from(RING_SIZE_MAX) || !n.is_power_of_two() {
        return Err(format!(
            "{n} is not a power of two from 4096 to {RING_SIZE_MAX}"
        ));
    }
    Ok(n as u32)
}

/// `--timeout`: see [`TIMEOUT_RANGE`].
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    parse_duration_within(s, TIMEOUT_RANGE)
}

/// `--duration`: see [`RUN_DURATION_RANGE`].
pub fn parse_run_duration(s: &str) -> Result<Duration, String> {
    parse_duration_within(s, RUN_DURATION_RANGE)
}

/// `--upstream-every`: "0" means off, else see [`UPSTREAM_EVERY_RANGE`].
pub fn parse_upstream_every(s: &str) -> Result<Duration, String> {
    if s.trim().trim_end_matches(|c: char| c.is_ascii_alphabetic()) == "0" {
        return Ok(Duration::ZERO);
    }
    parse_duration_within(s, UPSTREAM_EVERY_RANGE)
}

/// [`parse_duration`], within `[min, max]`.
fn parse_duration_within(s: &str, (min, max): (Duration, Duration)) -> Result<Duration, String> {
    let secs = parse_secs(s)?;
    if secs < min.as_secs_f64() || secs > max.as_secs_f64() {
        return Err(format!(
            "{:?} is out of range: from {} to {}",
            s.trim(),
            human(min),
            human(max)
        ));
    }
    Ok(Duration::from_secs_f64(secs).clamp(min, max))
}

/// A bound as the user would type it: "1ms", "1s", "24h".
fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// What `watch` holds apart from its open lookups, measured as its resident set after
/// attaching (about 26 MiB on one interface), with room to spare.
pub const SELF_BYTES: u64 = 28 << 20;
/// Resident bytes per open lookup: about 0.75 KiB measured under a flood of one-sighting
/// lookups (state, indexes, allocator; `collector_bench`), with room for the output
/// stage's share.
pub const LOOKUP_BYTES: u64 = 1024;
/// Fewest open lookups a budget must leave room for.
pub const MIN_LOOKUPS: usize = 1000;

/// A byte count, shown in the largest binary unit it is a whole number of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0;
        for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
            if n >= 1 << shift && n.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", n >> shift);
            }
        }
        if n >= 1 << 20 {
            return write!(f, "{:.1}MiB", n as f64 / f64::from(1 << 20));
        }
        write!(f, "{n} bytes")
    }
}

/// The open-lookup cap a memory budget leaves room for: `budget`, less the ring buffer,
/// the full event queue and dnstrace itself, at [`LOOKUP_BYTES`] each.
pub fn max_lookups_for(budget: u64, ring_size: u32) -> Result<usize, ConfigError> {
    let fixed = u64::from(ring_size) + crate::capture::QUEUE_BYTES as u64 + SELF_BYTES;
    let room = budget.saturating_sub(fixed) / LOOKUP_BYTES;
    let min = MIN_LOOKUPS as u64 * LOOKUP_BYTES;
    if room < MIN_LOOKUPS as u64 {
        return Err(ConfigError::MemoryBudget {
            budget: Size(budget),
            fixed: Size(fixed),
            min: MIN_LOOKUPS,
            room: Size(min),
            need: Size((fixed + min).next_multiple_of(1 << 20)),
        });
    }
    Ok(usize::try_from(room).unwrap_or(usize::MAX))
}

/// `--memory-budget`: bytes, or a whole number of KiB, MiB, GiB (K/KiB, M/MiB, G/GiB, any
/// case), up to 1 TiB.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (try 64MiB, 1GiB or a number of bytes)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {s:?} (use KiB, MiB or GiB: powers of 1024)"
            ));
        }
    };
    n.checked_mul(1 << shift)
        .filter(|&b| b <= 1 << 40)
        .ok_or_else(|| format!("{s:?} is more than 1GiB × 1024 (1 TiB)"))
}

/// Parses "30", "30s", "1500ms", "5m", "1h" into a positive duration.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(parse_secs(s)?)
        .map_err(|_| format!("{:?} is far too long", s.trim()))
}

/// "30", "30s", "1500ms", "5m", "1h" in seconds, positive and finite.
fn parse_secs(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (try 30s, 5m, 1h)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {s:?} (use ms, s, m or h)"
            ));
        }
    };
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("{s:?}: the duration must be positive"));
    }
    Ok(secs)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    fn watch(args: &[&str]) -> Result<WatchConfig, ConfigError> {
        let mut argv = vec!["dnstrace", "watch"];
        argv.extend_from_slice(args);
        let Command::Watch(w) = Cli::try_parse_from(argv).expect("parses").command else {
            panic!("not a watch command");
        };
        WatchConfig::try_from(w)
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_snapshot() {
        // The README quotes this text; the snapshot keeps both honest.
        let mut cmd = Cli::command();
        cmd.build();
        let top = cmd.render_long_help().to_string();
        let watch = cmd
            .find_subcommand_mut("watch")
            .expect("watch")
            .render_long_help()
            .to_string();
        insta::assert_snapshot!("help", top);
        insta::assert_snapshot!("watch_help", watch);
    }

    #[test]
    fn replay_help_snapshot() {
        let mut cmd = Cli::command();
        cmd.build();
        let replay = cmd
            .find_subcommand_mut("replay")
            .expect("replay")
            .render_long_help()
            .to_string();
        insta::assert_snapshot!("replay_help", replay);
    }

    #[test]
    fn cleanup_help_snapshot() {
        let mut cmd = Cli::command();
        cmd.build();
        let cleanup = cmd
            .find_subcommand_mut("cleanup")
            .expect("cleanup")
            .render_long_help()
            .to_string();
        insta::assert_snapshot!("cleanup_help", cleanup);
    }

    #[test]
    fn cleanup_args() {
        let parse = |args: &[&str]| {
            let mut argv = vec!["dnstrace", "cleanup"];
            argv.extend_from_slice(args);
            match Cli::try_parse_from(argv).expect("parses").command {
                Command::Cleanup(c) => (c.dry_run, c.ifaces),
                _ => panic!("not a cleanup command"),
            }
        };
        assert_eq!(parse(&[]), (false, vec![]));
        assert_eq!(
            parse(&["--dry-run", "-i", "eth0,eth1"]),
            (true, vec!["eth0".to_owned(), "eth1".to_owned()])
        );
    }

    #[test]
    fn replay_args() {
        let Command::Replay(r) = Cli::try_parse_from([
            "dnstrace", "replay", "x.pcap", "-o", "json", "--port", "53,5353",
        ])
        .expect("parses")
        .command
        else {
            panic!("not a replay command");
        };
        assert_eq!(r.file, PathBuf::from("x.pcap"));
        assert_eq!(
            (r.output, r.ports.as_slice()),
            (Output::Json, &[53, 5353][..])
        );
        assert_eq!((r.timeout, r.pcap), (None, None));
        assert!(Cli::try_parse_from(["dnstrace", "replay"]).is_err());
    }

    #[test]
    fn memory_budget_sets_the_lookup_cap() {
        // The default: 64 MiB less 8 MiB of ring, 16 MiB of queue and 28 MiB of dnstrace.
        assert_eq!(watch(&["-a"]).unwrap().max_lookups, 12 * 1024);
        assert_eq!(
            watch(&["-a", "--memory-budget", "1GiB"])
                .unwrap()
                .max_lookups,
            (1024 - 52) * 1024
        );
        assert_eq!(
            watch(&["-a", "--memory-budget", "128m", "--ring-size", "4096"])
                .unwrap()
                .max_lookups,
            ((128u64 << 20) - 4096 - (44 << 20)) as usize / 1024
        );
        let err = watch(&["-a", "--memory-budget", "48MiB"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--memory-budget 48MiB leaves too little for lookups: the ring buffer, the event \
             queue and dnstrace itself take 52MiB, and at least 1000 open lookups need 1000KiB \
             more; give at least 53MiB"
        );
        for bad in ["", "64 MB", "1.5GiB", "-1", "2TiB", "1025GiB", "64X"] {
            let argv = ["dnstrace", "watch", "-a", "--memory-budget", bad];
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
        }
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("64 mib"), Ok(64 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(
            parse_size("1TiB").unwrap_err(),
            "unknown unit \"TiB\" in \"1TiB\" (use KiB, MiB or GiB: powers of 1024)"
        );
    }

    #[test]
    fn auto_implies_socket_hop_unless_disabled() {
        assert!(watch(&["--auto"]).unwrap().socket_hop);
        assert!(!watch(&["--auto", "--no-socket-hop"]).unwrap().socket_hop);
        assert!(!watch(&["-i", "eth0"]).unwrap().socket_hop);
    }

    #[test]
    fn validation_names_the_problem() {
        assert_eq!(watch(&[]).unwrap_err(), ConfigError::NothingToCapture);
        let c = watch(&["-a", "-p", "53,5353", "-p", "53"]).unwrap();
        assert_eq!(c.ports, vec![53, 5353]);
        assert!(matches!(
            watch(&["-a", "-p", "1,2,3,4,5,6,7,8,9"]),
            Err(ConfigError::TooManyPorts { got: 9, .. })
        ));
    }

    /// Every out-of-range value is a usage error from clap (exit 2), never a panic.
    #[test]
    fn values_out_of_range_are_usage_errors() {
        let huge = "99999999999999999999";
        for args in [
            &["--duration", huge][..],
            &["--timeout", huge],
            &["--upstream-every", huge],
            &["--queue", "18446744073709551615"],
            &["--queue", "0"],
            &["--tc-priority", "1"],
            &["--tc-priority", "0"],
            &["--tc-priority", "65536"],
            &["--port", "0"],
            &["--port", "65536"],
            &["--snaplen", "10"],
            &["--snaplen", "4096"],
            &["--ring-size", "5000"],
            &["--ring-size", "2147483648"],
            &["--ring-size", huge],
            &["--timeout", "0"],
            &["--timeout", "2h"],
            &["--upstream-every", "25h"],
            &["--duration", "8761h"],
            &["-i", "a/b"],
            &["-i", ""],
            &["-i", "sixteen-chars-xx"],
            &["--uplink", "a b"],
        ] {
            let mut argv = vec!["dnstrace", "watch", "-a"];
            argv.extend_from_slice(args);
            let err = Cli::try_parse_from(&argv).expect_err(&format!("{args:?} must be refused"));
            assert_eq!(err.exit_code(), 2, "{args:?}");
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{args:?}"
            );
        }
        let mut argv = vec!["dnstrace", "replay", "x.pcap", "--timeout"];
        argv.push(huge);
        assert!(Cli::try_parse_from(argv).is_err());
        // The edges are accepted.
        let c = watch(&[
            "-a",
            "--tc-priority",
            "65535",
            "--queue",
            "65536",
            "--ring-size",
            "1073741824",
            // The ring counts against the budget.
            "--memory-budget",
            "2GiB",
            "--duration",
            "8760h",
            "--upstream-every",
            "0",
            "--timeout",
            "1h",
        ])
        .unwrap();
        assert_eq!(
            (c.tc_priority, c.queue, c.upstream_every),
            (65535, 65536, None)
        );
    }

    #[test]
    fn interfaces_are_hooked_once() {
        let c = watch(&["-i", "a", "-i", "b,a", "-i", "a", "--uplink", "b,b"]).unwrap();
        assert_eq!(c.ifaces, ["a", "b"]);
        assert_eq!(c.uplinks, Some(vec!["b".to_owned()]));
    }

    #[test]
    fn tui_is_the_default_on_a_terminal_only() {
        assert_eq!(Output::default_for(true), Output::Tui);
        assert_eq!(Output::default_for(false), Output::Text);
        // `cargo test` runs with stdout on a pipe or a file unless asked otherwise.
        if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            let c = watch(&["-a"]).unwrap();
            assert_eq!(c.output, Output::Text);
            assert_eq!(c.log_file, None);
            assert_eq!(
                watch(&["-a", "-o", "tui"]).unwrap_err(),
                ConfigError::TuiNeedsTerminal
            );
            let c = watch(&["-a", "-o", "json", "--log-file", "/tmp/x.log"]).unwrap();
            assert_eq!(c.log_file, Some(PathBuf::from("/tmp/x.log")));
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(
            parse_duration("1500ms").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("5 weeks").is_err());
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("-3").is_err());
        assert!(parse_duration("99999999999999999999").is_err());
        assert_eq!(parse_upstream_every("0s").unwrap(), Duration::ZERO);
    }
}

//! Command-line arguments (raw, as typed) and their validation into a config.
use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::capture::{SNAPLEN_MAX, SNAPLEN_MIN, TcMode};

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
#[command(name = "dnstrace", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Capture DNS live: a full-screen view on a terminal, else text or JSON lines.
    #[command(long_about = WATCH_ABOUT, after_long_help = WATCH_EXAMPLES)]
    Watch(WatchArgs),
    /// Read a pcap or pcapng file and print its lookups and verdicts (no privileges needed).
    #[command(long_about = REPLAY_ABOUT, after_long_help = REPLAY_EXAMPLES)]
    Replay(ReplayArgs),
    /// Remove netlink tc filters left by a killed dnstrace (watch also does this when it starts).
    #[command(long_about = CLEANUP_ABOUT)]
    Cleanup(CleanupArgs),
    /// Attach a no-op tc classifier until SIGINT: the baseline of `cargo xtask bench`.
    #[command(hide = true)]
    BenchNoop(BenchNoopArgs),
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

const WATCH_EXAMPLES: &str = "\
Examples:
  dnstrace watch --auto                      every interface of this netns + the socket hop
  dnstrace watch --auto --output text        lines instead of the full-screen view
  dnstrace watch -i eth0 -i lxc12ab          two interfaces, no socket hop
  dnstrace watch --auto --output json | jq 'select(.verdict!=\"ok\")'
  dnstrace watch --auto --output text --pcap node.pcapng   also a capture for Wireshark
  dnstrace watch --auto --port 53 --port 5353 --duration 30s
  DNSTRACE_AUTO=1 DNSTRACE_OUTPUT=json dnstrace watch   same, from the environment";

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
    /// Interface to capture on, ingress and egress (repeatable, or comma-separated).
    #[arg(
        short,
        long = "iface",
        value_name = "IF",
        env = "DNSTRACE_IFACE",
        value_delimiter = ','
    )]
    pub ifaces: Vec<String>,

    /// Capture on every interface of the current network namespace, plus the socket hop and kernel drops.
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

    /// DNS port to match, source or destination (repeatable, at most 8).
    #[arg(
        short,
        long = "port",
        value_name = "PORT",
        env = "DNSTRACE_PORT",
        value_delimiter = ',',
        default_value = "53"
    )]
    pub ports: Vec<u16>,

    /// Bytes of each packet to copy from the kernel (64..=2048); longer packets are cut and counted.
    #[arg(long, value_name = "BYTES", env = "DNSTRACE_SNAPLEN", default_value_t = SNAPLEN_MAX)]
    pub snaplen: u32,

    /// Output format [default: tui when stdout is a terminal, else text].
    #[arg(short, long, value_enum, env = "DNSTRACE_OUTPUT")]
    pub output: Option<Output>,

    /// Write logs to this file instead of stderr [default with --output tui: /var/log/dnstrace/dnstrace.log as root, else $XDG_STATE_HOME/dnstrace/dnstrace.log, ~/.local/state/dnstrace/dnstrace.log or /tmp/dnstrace-UID/dnstrace.log].
    #[arg(long, value_name = "PATH", env = "DNSTRACE_LOG_FILE")]
    pub log_file: Option<PathBuf>,

    /// Also print every captured packet, not only the lookups stitched from them.
    #[arg(long, env = "DNSTRACE_PACKETS")]
    pub packets: bool,

    /// A lookup without an answer this long after the client's last try is `unanswered`.
    #[arg(long, value_name = "TIME", env = "DNSTRACE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Interface that leads off the node (repeatable); default: those holding a default route.
    #[arg(
        long = "uplink",
        value_name = "IF",
        env = "DNSTRACE_UPLINK",
        value_delimiter = ','
    )]
    pub uplinks: Vec<String>,

    /// Print the per-upstream table this often (and always at exit); 0 turns the periodic one off.
    #[arg(long, value_name = "TIME", env = "DNSTRACE_UPSTREAM_EVERY", default_value = "60s", value_parser = parse_duration_or_zero)]
    pub upstream_every: Duration,

    /// Stop after this long (e.g. 30, 30s, 5m, 1h); default: until Ctrl-C or SIGTERM.
    #[arg(short, long, value_name = "TIME", env = "DNSTRACE_DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Write this file once every attach has succeeded (for scripts and tests).
    #[arg(long, value_name = "PATH", env = "DNSTRACE_READY_FILE")]
    pub ready_file: Option<PathBuf>,

    /// Kernel ring buffer size in bytes (power of two, at least 4096).
    #[arg(long, value_name = "BYTES", env = "DNSTRACE_RING_SIZE", default_value_t = 8 << 20)]
    pub ring_size: u32,

    /// Userspace queue between the ring buffer and the decoder, in batches of up to 256 events; when it is full, events wait in the ring buffer.
    #[arg(
        long,
        value_name = "BATCHES",
        env = "DNSTRACE_QUEUE",
        default_value_t = 1024
    )]
    pub queue: usize,

    /// How to attach tc programs.
    #[arg(long, value_enum, env = "DNSTRACE_TC_MODE", default_value = "auto")]
    pub tc_mode: TcMode,

    /// First priority tried for netlink tc filters (never 1; the next free one is used).
    #[arg(
        long,
        value_name = "PRIO",
        env = "DNSTRACE_TC_PRIORITY",
        default_value_t = 53
    )]
    pub tc_priority: u16,

    /// Also write every captured packet to this pcapng file for Wireshark: one interface per capture point, each packet commented with its lookup, hop and verdict.
    #[arg(long, value_name = "FILE", env = "DNSTRACE_PCAP")]
    pub pcap: Option<PathBuf>,
}

const REPLAY_ABOUT: &str = "\
Read a capture file and run the same decoder and correlator as `watch`, printing
the same lookups and verdicts. Time comes from the file: lookups expire on
packet timestamps, and at the end of the file every open lookup reaches its
deadline (or, for a file written by `watch --pcap`, ends when that capture
ended).

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

const REPLAY_EXAMPLES: &str = "\
Examples:
  dnstrace replay capture.pcapng
  dnstrace replay --output json --packets node.pcap | jq 'select(.type==\"lookup\")'
  tcpdump -i any -w any.pcap port 53; dnstrace replay any.pcap";

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

    /// A lookup still unanswered this long after the client's last query is finished as unanswered [default: the capture's timeout for a file written by dnstrace, else 5s].
    #[arg(long, value_name = "TIME", env = "DNSTRACE_TIMEOUT", value_parser = parse_duration)]
    pub timeout: Option<Duration>,

    /// UDP/TCP port(s) that carry DNS; other traffic in the file is skipped.
    #[arg(
        short,
        long = "port",
        value_name = "PORT",
        value_delimiter = ',',
        default_value = "53"
    )]
    pub ports: Vec<u16>,

    /// Interface(s) that lead off the node (default: from the file's section header when
    /// dnstrace wrote it, else none).
    #[arg(long = "uplink", value_name = "IF", value_delimiter = ',')]
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
    #[arg(short, long = "iface", value_name = "IF", value_delimiter = ',')]
    pub ifaces: Vec<String>,
}

/// Arguments of the hidden `bench-noop` (used by `cargo xtask bench` only).
#[derive(Debug, Args)]
pub struct BenchNoopArgs {
    /// Interface to attach to (repeatable).
    #[arg(short, long = "iface", value_name = "IF", required = true)]
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
    pub tc_mode: TcMode,
    pub tc_priority: u16,
    pub pcap: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("nothing to capture: give --iface IF (repeatable), --auto, --socket-hop or --drops")]
    NothingToCapture,
    #[error("--port: 0 is not a port")]
    PortZero,
    #[error("--port: at most {max} ports, got {got}")]
    TooManyPorts { max: usize, got: usize },
    #[error("--snaplen {got}: must be between {min} and {max}")]
    Snaplen { got: u32, min: u32, max: u32 },
    #[error("--ring-size {got}: must be a power of two of at least 4096 bytes")]
    RingSize { got: u32 },
    #[error("--tc-priority 1 is reserved for other tools; use 2 or higher")]
    TcPriority,
    #[error("--queue must be at least 1")]
    Queue,
    #[error(
        "--output tui needs a terminal on stdout; use --output text or json with a pipe or file"
    )]
    TuiNeedsTerminal,
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
        if ports.contains(&0) {
            return Err(ConfigError::PortZero);
        }
        let max = dnstrace_common::MAX_PORTS;
        if ports.len() > max {
            return Err(ConfigError::TooManyPorts {
                max,
                got: ports.len(),
            });
        }
        if !(SNAPLEN_MIN..=SNAPLEN_MAX).contains(&a.snaplen) {
            return Err(ConfigError::Snaplen {
                got: a.snaplen,
                min: SNAPLEN_MIN,
                max: SNAPLEN_MAX,
            });
        }
        if a.ring_size < 4096 || !a.ring_size.is_power_of_two() {
            return Err(ConfigError::RingSize { got: a.ring_size });
        }
        if a.tc_priority <= 1 {
            return Err(ConfigError::TcPriority);
        }
        if a.queue == 0 {
            return Err(ConfigError::Queue);
        }
        let stdout_tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
        let output = a.output.unwrap_or(Output::default_for(stdout_tty));
        if output == Output::Tui && !stdout_tty {
            return Err(ConfigError::TuiNeedsTerminal);
        }
        let log_file = log_file_for(output, a.log_file);
        let mut ifaces = a.ifaces;
        ifaces.dedup();
        Ok(Self {
            ifaces,
            auto: a.auto,
            socket_hop,
            drops,
            ports,
            snaplen: a.snaplen,
            output,
            log_file,
            packets: a.packets,
            timeout: a.timeout,
            uplinks: (!a.uplinks.is_empty()).then_some(a.uplinks),
            upstream_every: (!a.upstream_every.is_zero()).then_some(a.upstream_every),
            duration: a.duration,
            ready_file: a.ready_file,
            ring_size: a.ring_size,
            queue: a.queue,
            tc_mode: a.tc_mode,
            tc_priority: a.tc_priority,
            pcap: a.pcap,
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

/// Like [`parse_duration`], and "0" means off.
pub fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    if s.trim().trim_end_matches(|c: char| c.is_ascii_alphabetic()) == "0" {
        return Ok(Duration::ZERO);
    }
    parse_duration(s)
}

/// Parses "30", "30s", "1500ms", "5m", "1h".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
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
    Ok(Duration::from_secs_f64(secs))
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
    fn auto_implies_socket_hop_unless_disabled() {
        assert!(watch(&["--auto"]).unwrap().socket_hop);
        assert!(!watch(&["--auto", "--no-socket-hop"]).unwrap().socket_hop);
        assert!(!watch(&["-i", "eth0"]).unwrap().socket_hop);
    }

    #[test]
    fn validation_names_the_problem() {
        assert_eq!(watch(&[]).unwrap_err(), ConfigError::NothingToCapture);
        assert_eq!(
            watch(&["-a", "--port", "0"]).unwrap_err(),
            ConfigError::PortZero
        );
        assert!(matches!(
            watch(&["-a", "--snaplen", "10"]),
            Err(ConfigError::Snaplen { got: 10, .. })
        ));
        assert_eq!(
            watch(&["-a", "--ring-size", "5000"]).unwrap_err(),
            ConfigError::RingSize { got: 5000 }
        );
        assert_eq!(
            watch(&["-a", "--tc-priority", "1"]).unwrap_err(),
            ConfigError::TcPriority
        );
        let c = watch(&["-a", "-p", "53,5353", "-p", "53"]).unwrap();
        assert_eq!(c.ports, vec![53, 5353]);
        assert!(matches!(
            watch(&["-a", "-p", "1,2,3,4,5,6,7,8,9"]),
            Err(ConfigError::TooManyPorts { got: 9, .. })
        ));
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
    }
}

//! `cargo xtask bench`: measures dnstrace on real namespaces and real load,
//! and writes BENCHMARKS.md. Every comparison (with vs without dnstrace, vs a
//! no-op classifier, vs tcpdump, vs tshark) is made within one run, with
//! repeats interleaved, and reported as median (min–max).
//!
//! Sections (`--only` runs a subset):
//! - `tax`: non-DNS packets/s through a veth without and with dnstrace.
//! - `kernel`: BPF run time per packet above a no-op classifier on the same
//!   hook (kernel.bpf_stats_enabled), for non-DNS and DNS packets.
//! - `dns`: dnsperf through pod veth → node → server veth: max qps, CPU per
//!   10k qps, latency, loss accounting (and with a 4 KiB ring), peak RSS; with
//!   nothing attached, with dnstrace, with `tcpdump -w`.
//! - `flood`: peak RSS and evictions under 1M unanswered queries.
//! - `collector`: decode + correlate over a ≥1M-packet capture, vs tshark.
//! - `attach`: attach time for 250 veths, by name and with `--auto`.
//! - `load`: healthy traffic at 10k qps through the lab node's whole DNS path
//!   (dnsload and dnsperf): every lookup `ok`, latency as the client measured.
//! - `volume`: JSON bytes per healthy lookup, default `--hops problems` vs `all`.
//! - `cost`: the tracer's own CPU and the client's latency on the node-local-dns
//!   path, JSON and text output vs `tcpdump -i any -w` vs nothing attached.

mod attach;
mod collector;
mod cost;
mod dnspath;
pub mod flood;
mod kernel;
mod load;
mod measure;
mod report;
mod topo;
mod volume;

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use dnstrace_tests::{Lab, Proc, Signal};

use crate::{bail_if_stopped, cargo, fmt_duration, require_root, run_visible};
use measure::TraceSummary;
use report::Report;

#[derive(clap::Args)]
pub struct Args {
    /// Longer runs and more repeats (about 20 minutes on a 2-vCPU VM) instead of the short mode (about 10).
    #[arg(long)]
    full: bool,
    /// Run only these sections: tax, kernel, dns, flood, collector, attach, load, volume, cost (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "SECTION")]
    only: Vec<Section>,
    /// Measure this dnstrace binary instead of building one (`cargo build --release -p dnstrace`).
    #[arg(long, value_name = "PATH")]
    bin: Option<PathBuf>,
    /// Where to write the report (default: BENCHMARKS.md in the workspace; with --only,
    /// target/bench/BENCHMARKS-<sections>.md, so that a partial run never replaces the full report).
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,
    /// A sentence on the conditions of this run, quoted in the report (e.g. what else was running).
    #[arg(long, value_name = "TEXT")]
    note: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Section {
    Tax,
    Kernel,
    Dns,
    Flood,
    Collector,
    Attach,
    Load,
    Volume,
    Cost,
}

impl Section {
    /// Every section, in the order a full run takes them.
    pub const ALL: [Section; 9] = [
        Section::Tax,
        Section::Kernel,
        Section::Dns,
        Section::Flood,
        Section::Collector,
        Section::Attach,
        Section::Load,
        Section::Volume,
        Section::Cost,
    ];
}

/// Durations and sizes of one mode.
#[derive(Clone, Copy, Debug)]
struct Plan {
    full: bool,
    repeats: usize,
    /// Length of one UDP flood.
    flood_secs: f64,
    /// Paced rate of the DNS flood used for the kernel cost of DNS packets.
    dns_flood_pps: u64,
    /// Length of one dnsperf run.
    dnsperf_secs: u64,
    /// dnsperf's rate for the fixed-load runs (CPU, latency).
    fixed_qps: u64,
    /// Unanswered queries in the memory flood, and their rate.
    flood_queries: u64,
    flood_queries_pps: u64,
    /// Lookups in the generated capture (about two packets each).
    capture_lookups: u64,
    tshark_repeats: usize,
    veths: usize,
    /// Repeats of the attach runs that use tcx (each costs seconds, see attach.rs).
    attach_repeats: usize,
    /// Repeats and flood length of the kernel cost runs (short ones, many: the VM is noisy).
    kernel_repeats: usize,
    kernel_flood_secs: f64,
}

impl Plan {
    pub(super) fn new(full: bool) -> Plan {
        if full {
            Plan {
                full,
                repeats: 5,
                flood_secs: 8.0,
                dns_flood_pps: 100_000,
                dnsperf_secs: 15,
                fixed_qps: 10_000,
                flood_queries: 1_000_000,
                flood_queries_pps: 100_000,
                capture_lookups: 1_000_000,
                tshark_repeats: 3,
                veths: 250,
                attach_repeats: 3,
                kernel_repeats: 9,
                kernel_flood_secs: 3.0,
            }
        } else {
            Plan {
                full,
                repeats: 3,
                flood_secs: 3.0,
                dns_flood_pps: 100_000,
                dnsperf_secs: 4,
                fixed_qps: 10_000,
                flood_queries: 1_000_000,
                flood_queries_pps: 100_000,
                capture_lookups: 510_000,
                tshark_repeats: 1,
                veths: 250,
                attach_repeats: 1,
                kernel_repeats: 5,
                kernel_flood_secs: 2.0,
            }
        }
    }
}

/// What every section needs.
struct Ctx {
    plan: Plan,
    /// The dnstrace binary measured.
    bin: PathBuf,
    /// This xtask binary (runs the flood generator inside lab namespaces).
    exe: PathBuf,
    /// The collector benchmark example binary.
    collector: PathBuf,
    /// Scratch space on disk (generated capture).
    scratch: PathBuf,
}

pub fn run(args: &Args) -> Result<()> {
    require_root()?;
    let started = Instant::now();
    crate::setup::run()?;
    bail_if_stopped()?;
    let plan = Plan::new(args.full);
    let bin = crate::release_dnstrace("bench", args.bin.as_deref())?;
    let sections: Vec<Section> = if args.only.is_empty() {
        Section::ALL.to_vec()
    } else {
        args.only.clone()
    };
    let collector = if sections.contains(&Section::Collector) {
        eprintln!("[bench] building the collector benchmark (release)");
        run_visible(
            "cargo build --release --example collector_bench",
            cargo().args([
                "build",
                "--release",
                "-p",
                "dnstrace",
                "--example",
                "collector_bench",
            ]),
        )?;
        crate::target_dir().join("release/examples/collector_bench")
    } else {
        PathBuf::new()
    };
    let scratch = crate::target_dir().join("bench");
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let ctx = Ctx {
        plan,
        bin,
        exe: stable_copy_of_self(&scratch)?,
        collector,
        scratch,
    };
    let mut report = Report::new(&plan, &sections, args.note.clone());
    for section in &sections {
        bail_if_stopped()?;
        let t = Instant::now();
        eprintln!("[bench] {section:?}");
        let result = match section {
            Section::Tax => kernel::tax(&ctx, &mut report),
            Section::Kernel => kernel::cost(&ctx, &mut report),
            Section::Dns => dnspath::run(&ctx, &mut report),
            Section::Flood => kernel::memory_flood(&ctx, &mut report),
            Section::Collector => collector::run(&ctx, &mut report),
            Section::Attach => attach::run(&ctx, &mut report),
            Section::Load => load::run(&ctx, &mut report),
            Section::Volume => volume::run(&ctx, &mut report),
            Section::Cost => cost::run(&ctx, &mut report),
        };
        bail_if_stopped()?;
        if let Err(e) = result {
            eprintln!("[bench] {section:?} failed: {e:#}");
            report.failed(&format!("{section:?}"), &format!("{e:#}"));
        }
        eprintln!("[bench] {section:?} done in {}", fmt_duration(t.elapsed()));
    }
    let _ = std::fs::remove_file(&ctx.exe);
    report.elapsed = started.elapsed();
    let out = args.out.clone().unwrap_or_else(|| {
        if args.only.is_empty() {
            crate::workspace_root().join("BENCHMARKS.md")
        } else {
            let names: Vec<String> = sections
                .iter()
                .map(|s| format!("{s:?}").to_lowercase())
                .collect();
            ctx.scratch
                .join(format!("BENCHMARKS-{}.md", names.join("-")))
        }
    });
    let text = report.render();
    std::fs::write(&out, &text).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("{}", report.table());
    eprintln!(
        "[bench] wrote {} in {}",
        out.display(),
        fmt_duration(started.elapsed())
    );
    if report.has_failures() {
        bail!("some sections failed; see {}", out.display());
    }
    Ok(())
}

/// A copy of this binary for the flood generator: `cargo build` may replace
/// target/debug/xtask while the bench runs.
fn stable_copy_of_self(scratch: &Path) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the xtask binary")?;
    let copy = scratch.join(format!("xtask-flood-{}", std::process::id()));
    std::fs::copy(&exe, &copy)
        .with_context(|| format!("copying {} to {}", exe.display(), copy.display()))?;
    Ok(copy)
}

/// A dnstrace (or other tool) process started by the bench.
/// `dnstrace watch -i IF… --upstream-every 0 EXTRA…`: the tracer as every section runs it.
fn watch_args(ifaces: &[&str], extra: &[&str]) -> Vec<String> {
    let mut v = vec!["watch".to_owned()];
    for i in ifaces {
        v.extend(["-i".to_owned(), (*i).to_owned()]);
    }
    v.extend(["--upstream-every".to_owned(), "0".to_owned()]);
    v.extend(extra.iter().map(|s| (*s).to_owned()));
    v
}

struct Traced {
    proc: Proc,
    err: PathBuf,
}

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(30);

/// Starts `dnstrace <args> --ready-file …` in `ns` (stdout discarded, stderr
/// kept) and waits until it has attached; returns it and the time that took.
fn start_dnstrace(
    ctx: &Ctx,
    lab: &Lab,
    ns: &str,
    name: &str,
    args: &[String],
) -> Result<(Traced, Duration)> {
    let ready = lab.dir().join(format!("{name}.ready"));
    let err = lab.dir().join(format!("{name}.err"));
    let _ = std::fs::remove_file(&ready);
    let mut cmd = lab.cmd_setns(ns, &ctx.bin)?;
    cmd.args(args)
        .arg("--ready-file")
        .arg(&ready)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&err).with_context(|| format!("creating {}", err.display()))?);
    let t = Instant::now();
    let proc = lab.spawn(name, cmd)?;
    wait_file(lab, &proc, &ready, &err)?;
    let took = t.elapsed();
    Ok((Traced { proc, err }, took))
}

/// Like `Lab::wait_for_file`, polling every millisecond (attach times are measured with it).
fn wait_file(lab: &Lab, proc: &Proc, path: &Path, err: &Path) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if path.exists() {
            return Ok(());
        }
        if let Some(status) = lab.status(proc)? {
            bail!(
                "{} exited ({status}) before it was ready: {}",
                proc.name,
                std::fs::read_to_string(err).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            bail!("{} not ready within {READY_TIMEOUT:?}", proc.name);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Stops a dnstrace with SIGINT and parses its exit summary.
fn stop_dnstrace(lab: &Lab, t: Traced) -> Result<TraceSummary> {
    let status = lab.stop(&t.proc, Signal::Int, STOP_GRACE)?;
    let stderr = std::fs::read_to_string(&t.err).unwrap_or_default();
    if !status.success() {
        bail!("{} exited with {status}: {stderr}", t.proc.name);
    }
    TraceSummary::parse(&stderr)
}

/// Runs the flood generator (this binary's hidden `bench-flood`) in `ns`.
fn flood(ctx: &Ctx, lab: &Lab, ns: &str, args: &flood::FloodArgs) -> Result<FloodResult> {
    let mut cmd = lab.cmd_setns(ns, &ctx.exe)?;
    cmd.args(args.to_args()).stdin(Stdio::null());
    let out = cmd.output().context("running the flood generator")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "flood generator failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_str(stdout.trim())
        .with_context(|| format!("flood generator output: {stdout}"))?;
    Ok(FloodResult {
        sent: v["sent"].as_u64().unwrap_or(0),
        seconds: v["seconds"].as_f64().unwrap_or(0.0),
    })
}

struct FloodResult {
    sent: u64,
    seconds: f64,
}

/// The flood command as a reader would type it.
fn flood_command(args: &flood::FloodArgs) -> String {
    format!("cargo xtask {}", args.to_args().join(" "))
}

/// BPF run-time statistics (what `kernel.bpf_stats_enabled=1` turns on),
/// enabled through BPF_ENABLE_STATS: they stay on while the returned fd is
/// open, so they go off again however the bench ends, even on SIGKILL.
fn enable_bpf_stats() -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    const BPF_ENABLE_STATS: libc::c_long = 32;
    const BPF_STATS_RUN_TIME: u32 = 0;
    // union bpf_attr, enable_stats member: { __u32 type; }, zero-padded.
    let mut attr = [0u8; 128];
    attr[..4].copy_from_slice(&BPF_STATS_RUN_TIME.to_ne_bytes());
    // SAFETY: bpf(2) reads `attr.len()` bytes from a valid buffer.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_ENABLE_STATS,
            attr.as_mut_ptr(),
            attr.len() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("bpf(BPF_ENABLE_STATS)");
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

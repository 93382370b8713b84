//! `cargo xtask fuzz [--seconds N] [TARGET…]`: builds the fuzz targets of `fuzz/` (cargo-fuzz,
//! libFuzzer with AddressSanitizer, on the nightly toolchain), seeds them from the shared
//! capture corpus, runs each for N seconds, then replays the regression corpus
//! `fuzz/regressions/<target>/`. Prints per target the executions, exec/s, corpus size,
//! coverage and crashes; fails on any crash, naming the artifact.
//!
//! Folders (all but `regressions/` are ignored by git): `fuzz/seeds/<target>` is rewritten
//! from the corpus on every run, `fuzz/corpus/<target>` is what the fuzzer found (kept between
//! runs), `fuzz/artifacts/<target>` holds crashes and the fuzzer's log.

use std::{
    collections::HashSet,
    fs,
    hash::{DefaultHasher, Hash, Hasher},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use pcap_file::{
    DataLink, TsResolution,
    pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter},
    pcapng::{Block, PcapNgReader},
};

/// The fuzz targets' input format: xtask writes seeds in it, the targets read it.
#[path = "../../fuzz/src/ops.rs"]
#[allow(dead_code, reason = "the reading half is for the fuzz targets")]
mod ops;

use crate::{bail_if_stopped, fmt_duration, workspace_root};

/// cargo-fuzz, pinned; `cargo xtask setup` installs it.
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";
const TOOLCHAIN_ENV: &str = "DNSTRACE_FUZZ_TOOLCHAIN";
const CORPUS_ENV: &str = "DNSTRACE_CORPUS";
const SECONDS_ENV: &str = "DNSTRACE_FUZZ_SECONDS";
/// Where the replay target writes its scratch files; removed after each target.
const SCRATCH_ENV: &str = "DNSTRACE_FUZZ_SCRATCH";

struct Target {
    name: &'static str,
    /// Longest input the fuzzer makes.
    max_len: usize,
    /// Discard the target's stdout and stderr (replay prints a summary per run).
    quiet: bool,
}

const TARGETS: [Target; 6] = [
    Target {
        name: "decode",
        max_len: 16 << 10,
        quiet: false,
    },
    Target {
        name: "dns",
        max_len: 8 << 10,
        quiet: false,
    },
    Target {
        name: "tcp",
        max_len: 64 << 10,
        quiet: false,
    },
    Target {
        name: "replay",
        max_len: 64 << 10,
        quiet: true,
    },
    Target {
        name: "correlate",
        max_len: 64 << 10,
        quiet: false,
    },
    Target {
        name: "records",
        max_len: 16 << 10,
        quiet: false,
    },
];

#[derive(clap::Args)]
pub struct Args {
    /// Seconds to fuzz each target.
    #[arg(long, env = SECONDS_ENV, default_value_t = 60)]
    seconds: u64,
    /// Targets to run (decode, dns, tcp, replay, correlate, records); all when none is given.
    targets: Vec<String>,
}

pub fn run(args: &Args) -> Result<()> {
    install_cargo_fuzz()?;
    let toolchain = match nightly() {
        Ok(t) => t,
        Err(reason) => bail!("[fuzz] {reason}"),
    };
    let targets: Vec<&Target> = if args.targets.is_empty() {
        TARGETS.iter().collect()
    } else {
        args.targets
            .iter()
            .map(|name| {
                TARGETS.iter().find(|t| t.name == name).with_context(|| {
                    let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
                    format!("no fuzz target {name:?}; there are {}", names.join(", "))
                })
            })
            .collect::<Result<_>>()?
    };
    fuzz(&toolchain, &targets, Duration::from_secs(args.seconds))
}

/// The fuzz phase of `cargo xtask test`: every target for DNSTRACE_FUZZ_SECONDS (60 s) and
/// the regression corpus. Skips, saying so, only when there is no nightly toolchain.
pub fn in_test() -> Result<()> {
    let seconds = match std::env::var(SECONDS_ENV) {
        Ok(s) => s
            .parse()
            .with_context(|| format!("{SECONDS_ENV}={s:?} is not a number of seconds"))?,
        Err(_) => 60,
    };
    let toolchain = match nightly() {
        Ok(t) => t,
        Err(reason) => {
            eprintln!("[test] fuzz: SKIPPED: {reason}");
            return Ok(());
        }
    };
    fuzz(
        &toolchain,
        &TARGETS.iter().collect::<Vec<_>>(),
        Duration::from_secs(seconds),
    )
}

/// The toolchain that builds the targets, or why there is none.
fn nightly() -> std::result::Result<String, String> {
    let toolchain = std::env::var(TOOLCHAIN_ENV).unwrap_or_else(|_| "nightly".to_owned());
    let out = rustup(&toolchain)
        .args(["rustc", "--version"])
        .output()
        .map_err(|e| {
            format!("cannot run rustup ({e}); the fuzz targets need a nightly toolchain")
        })?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || !version.contains("nightly") {
        return Err(format!(
            "no nightly toolchain {toolchain:?} (`rustup run {toolchain} rustc --version`: {}); \
             set {TOOLCHAIN_ENV} to one",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(toolchain)
}

/// `rustup run TOOLCHAIN …`, from the workspace root, with the PATH xtask's builds use.
fn rustup(toolchain: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", toolchain])
        .current_dir(workspace_root())
        .env("PATH", crate::setup::path_with_install_root())
        // cargo fuzz puts its own build in fuzz/target.
        .env_remove("CARGO_TARGET_DIR");
    cmd
}

/// Installs cargo-fuzz CARGO_FUZZ_VERSION unless it is there; true when it installed.
pub fn install_cargo_fuzz() -> Result<bool> {
    let what = format!("cargo-fuzz {CARGO_FUZZ_VERSION}");
    let version = |bin: &Path| -> Option<String> {
        let out = Command::new(bin).arg("--version").output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut words = text.split_whitespace();
        (words.next()? == "cargo-fuzz").then(|| words.next().map(str::to_owned))?
    };
    let installed = crate::setup::install_root().join("bin/cargo-fuzz");
    if version(&installed).as_deref() == Some(CARGO_FUZZ_VERSION) {
        crate::setup::step(&what, "ok (already installed)");
        return Ok(false);
    }
    crate::setup::step(&what, "installing with cargo (~1 min)");
    let started = Instant::now();
    crate::run_visible(
        "cargo install cargo-fuzz",
        crate::cargo().current_dir(std::env::temp_dir()).args([
            "install",
            &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"),
            "--locked",
        ]),
    )
    .context("[setup] cargo-fuzz")?;
    match version(&installed) {
        Some(v) if v == CARGO_FUZZ_VERSION => {}
        other => bail!(
            "[setup] cargo-fuzz: {} reports {} after install",
            installed.display(),
            other.unwrap_or_else(|| "nothing".to_owned())
        ),
    }
    crate::setup::step(
        &what,
        &format!("ok (installed in {})", fmt_duration(started.elapsed())),
    );
    Ok(true)
}

/// What one target's run gave.
struct Report {
    name: &'static str,
    runs: u64,
    exec_per_s: u64,
    corpus: String,
    cov: String,
    /// Crash artifacts, from fuzzing and from the regression corpus.
    crashes: Vec<String>,
    regressions: usize,
}

fn fuzz(toolchain: &str, targets: &[&Target], seconds: Duration) -> Result<()> {
    let dir = workspace_root().join("fuzz");
    let started = Instant::now();
    eprintln!(
        "[fuzz] building {} targets ({toolchain}, cargo fuzz build)",
        targets.len()
    );
    let mut build = rustup(toolchain);
    build.args(["cargo", "fuzz", "build"]);
    if let [one] = targets {
        build.arg(one.name);
    }
    crate::run_visible("cargo fuzz build", &mut build)?;
    eprintln!("[fuzz] build: ok ({})", fmt_duration(started.elapsed()));
    let bins = bin_dir(toolchain, &dir)?;

    let seeds = dir.join("seeds");
    write_seeds(&seeds)?;

    let mut reports = Vec::new();
    for t in targets {
        bail_if_stopped()?;
        reports.push(run_target(t, &bins.join(t.name), &dir, seconds)?);
    }
    eprintln!(
        "[fuzz] {:<10} {:>10} {:>8} {:>18} {:>12} {:>5} crashes",
        "target", "runs", "exec/s", "corpus", "cov ft", "regr"
    );
    for r in &reports {
        eprintln!(
            "[fuzz] {:<10} {:>10} {:>8} {:>18} {:>12} {:>5} {}",
            r.name,
            r.runs,
            r.exec_per_s,
            r.corpus,
            r.cov,
            r.regressions,
            r.crashes.len()
        );
    }
    let crashes: Vec<&String> = reports.iter().flat_map(|r| &r.crashes).collect();
    eprintln!(
        "[fuzz] {} s per target, total {}",
        seconds.as_secs(),
        fmt_duration(started.elapsed())
    );
    if !crashes.is_empty() {
        for c in &crashes {
            eprintln!("[fuzz] CRASH: {c}");
        }
        bail!(
            "[fuzz] {} crash(es); minimize with `cargo +nightly fuzz tmin TARGET ARTIFACT` and add \
             the result to fuzz/regressions/TARGET/ once fixed",
            crashes.len()
        );
    }
    eprintln!("[fuzz] no crash");
    Ok(())
}

/// Where cargo fuzz put the binaries: fuzz/target/<host triple>/release.
fn bin_dir(toolchain: &str, dir: &Path) -> Result<PathBuf> {
    let out = rustup(toolchain).args(["rustc", "-vV"]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let host = text
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .context("rustc -vV names no host")?;
    Ok(dir.join("target").join(host).join("release"))
}

fn run_target(t: &Target, bin: &Path, dir: &Path, seconds: Duration) -> Result<Report> {
    let corpus = dir.join("corpus").join(t.name);
    let artifacts = dir.join("artifacts").join(t.name);
    let regressions = dir.join("regressions").join(t.name);
    for d in [&corpus, &artifacts] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let log = artifacts.join("fuzz.log");
    eprintln!(
        "[fuzz] {}: fuzzing for {} s (log {})",
        t.name,
        seconds.as_secs(),
        log.display()
    );
    let mut cmd = libfuzzer(t, bin, &artifacts);
    cmd.arg(format!("-max_total_time={}", seconds.as_secs()))
        .arg(format!("-max_len={}", t.max_len))
        .arg("-print_final_stats=1")
        .arg(&corpus)
        .arg(dir.join("seeds").join(t.name));
    if regressions.is_dir() {
        cmd.arg(&regressions);
    }
    let status = cmd
        .stderr(fs::File::create(&log)?)
        .status()
        .with_context(|| format!("running {}", bin.display()))?;
    bail_if_stopped()?;
    let text = fs::read_to_string(&log).unwrap_or_default();
    let mut crashes = artifacts_written(&text);
    if !status.success() && crashes.is_empty() {
        bail!(
            "[fuzz] {}: the fuzzer failed ({status}) without a crash artifact; see {}",
            t.name,
            log.display()
        );
    }
    for c in &crashes {
        explain(t, bin, dir, Path::new(c));
    }
    let stat = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let last = text
        .lines()
        .rev()
        .find(|l| l.starts_with('#') && l.contains("cov:"))
        .unwrap_or("");
    let field = |name: &str| -> String {
        let mut words = last.split_whitespace();
        words
            .by_ref()
            .find(|w| *w == name)
            .and_then(|_| words.next())
            .unwrap_or("?")
            .to_owned()
    };
    let units = fs::read_dir(&corpus).map(|d| d.count()).unwrap_or(0);
    let mut report = Report {
        name: t.name,
        runs: stat("stat::number_of_executed_units:"),
        exec_per_s: stat("stat::average_exec_per_sec:"),
        corpus: format!("{} ({})", field("corp:"), units),
        cov: format!("{} {}", field("cov:"), field("ft:")),
        crashes: Vec::new(),
        regressions: 0,
    };
    let (count, failed) = replay_regressions(t, bin, &regressions, &artifacts)?;
    report.regressions = count;
    crashes.extend(failed);
    report.crashes = crashes;
    let _ = fs::remove_dir_all(scratch_dir());
    eprintln!(
        "[fuzz] {}: {} runs, {} exec/s, corpus {}, cov {}, regressions {} passed, {} crash(es)",
        t.name,
        report.runs,
        report.exec_per_s,
        report.corpus,
        report.cov,
        count,
        report.crashes.len()
    );
    Ok(report)
}

/// A folder for the targets' scratch files (tmpfs when there is one), ours alone.
fn scratch_dir() -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    base.join(format!("dnstrace-xtask-fuzz-{}", std::process::id()))
}

/// The target's binary with the options every run shares.
fn libfuzzer(t: &Target, bin: &Path, artifacts: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env(SCRATCH_ENV, scratch_dir());
    let mut prefix = artifacts.as_os_str().to_owned();
    prefix.push("/");
    cmd.arg("-timeout=20")
        .arg({
            let mut a = std::ffi::OsString::from("-artifact_prefix=");
            a.push(&prefix);
            a
        })
        .stdin(Stdio::null());
    if t.quiet {
        cmd.arg("-close_fd_mask=3");
    }
    cmd
}

/// "Test unit written to PATH" lines of a libFuzzer log.
fn artifacts_written(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| l.split("Test unit written to ").nth(1))
        .map(|p| p.trim().to_owned())
        .collect()
}

/// Runs every file of `fuzz/regressions/<target>` once; returns how many passed and the
/// ones that crashed.
fn replay_regressions(
    t: &Target,
    bin: &Path,
    regressions: &Path,
    artifacts: &Path,
) -> Result<(usize, Vec<String>)> {
    let mut files: Vec<PathBuf> = match fs::read_dir(regressions) {
        Ok(d) => d
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => return Ok((0, Vec::new())),
    };
    files.sort();
    let mut failed = Vec::new();
    for f in &files {
        let out = libfuzzer(t, bin, artifacts)
            .arg(f)
            .stdout(Stdio::null())
            .output()
            .with_context(|| format!("running {}", bin.display()))?;
        if !out.status.success() {
            let log = artifacts.join(format!(
                "regression-{}.log",
                f.file_name().unwrap_or_default().to_string_lossy()
            ));
            let _ = fs::write(&log, &out.stderr);
            eprintln!(
                "[fuzz] {}: regression {} FAILS ({}); log {}",
                t.name,
                f.display(),
                out.status,
                log.display()
            );
            summarize(&String::from_utf8_lossy(&out.stderr));
            failed.push(f.display().to_string());
        }
    }
    Ok((files.len() - failed.len(), failed))
}

/// Runs a crash artifact once more, with its output visible, and prints what crashed where.
fn explain(t: &Target, bin: &Path, dir: &Path, artifact: &Path) {
    let artifact = if artifact.is_absolute() {
        artifact.to_path_buf()
    } else {
        dir.join(artifact)
    };
    let Ok(out) = Command::new(bin)
        .arg(&artifact)
        .stdin(Stdio::null())
        .output()
    else {
        return;
    };
    eprintln!("[fuzz] {}: crash {}", t.name, artifact.display());
    summarize(&String::from_utf8_lossy(&out.stderr));
}

/// The lines of a crash report that say what happened: the panic or sanitizer message, and
/// the frames of the first stack between the panic machinery and the fuzz entry point.
fn summarize(report: &str) {
    let lines: Vec<&str> = report.lines().map(str::trim_start).collect();
    for (i, l) in lines.iter().enumerate() {
        if l.contains("panicked at") {
            eprintln!("[fuzz]   {l}");
            if let Some(message) = lines.get(i + 1) {
                eprintln!("[fuzz]   {message}");
            }
        }
        if (l.starts_with("==") && l.contains("ERROR")) || l.starts_with("SUMMARY:") {
            eprintln!("[fuzz]   {l}");
        }
    }
    for frame in stack_of_interest(&lines) {
        eprintln!("[fuzz]     {frame}");
    }
}

/// "#N 0xADDR in FUNCTION LOCATION" frames of the first sanitizer stack, shortened, from
/// after the last panic/abort frame to before the fuzzer's entry point, std's frames left out.
fn stack_of_interest(lines: &[&str]) -> Vec<String> {
    let stack: Vec<&str> = lines
        .iter()
        .skip_while(|l| !l.starts_with("#0 "))
        .enumerate()
        .take_while(|(i, l)| l.starts_with('#') && (*i == 0 || !l.starts_with("#0 ")))
        .map(|(_, l)| *l)
        .collect();
    let end = stack
        .iter()
        .position(|l| l.contains("rust_fuzzer_test_input"))
        .unwrap_or(stack.len());
    let machinery = [
        "panicking",
        "rust_begin_unwind",
        "abort",
        "sanitizer",
        "fuzzer::",
        "_init",
    ];
    let start = stack[..end]
        .iter()
        .rposition(|l| machinery.iter().any(|m| l.contains(m)))
        .map_or(0, |i| i + 1);
    stack[start..end]
        .iter()
        .filter_map(|l| l.split_once(" in "))
        .map(|(_, frame)| frame)
        .filter(|frame| !frame.contains(" /rustc/"))
        .take(10)
        .map(|frame| {
            // Crates from the registry: "etherparse-0.21.0/src/…" is enough.
            let short = frame.rsplit_once(' ').and_then(|(name, at)| {
                let (_, rest) = at.split_once("/registry/src/")?;
                Some(format!("{name} {}", rest.split_once('/')?.1))
            });
            short.unwrap_or_else(|| frame.to_owned())
        })
        .collect()
}

// ---- seeds ----

/// The capture corpus: DNSTRACE_CORPUS, else ../shared/corpus beside the repository.
fn corpus_dir() -> PathBuf {
    match std::env::var_os(CORPUS_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => workspace_root().join("../shared/corpus"),
    }
}

/// One frame of a capture.
struct Frame {
    link: u8,
    ts_ns: u64,
    orig_len: usize,
    data: Vec<u8>,
}

/// Writes each target's seeds, converted from the captures, into `seeds/<target>` (anew).
fn write_seeds(seeds: &Path) -> Result<()> {
    let _ = fs::remove_dir_all(seeds);
    for t in &TARGETS {
        fs::create_dir_all(seeds.join(t.name))?;
    }
    let corpus = corpus_dir();
    let mut files: Vec<PathBuf> = match fs::read_dir(&corpus) {
        Ok(d) => d
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "pcap" || e == "pcapng"))
            .collect(),
        Err(e) => {
            eprintln!(
                "[fuzz] seeds: WARNING: no capture corpus at {} ({e}; set {CORPUS_ENV}); \
                 the fuzzers start from the regression corpus alone",
                corpus.display()
            );
            Vec::new()
        }
    };
    files.sort();
    let mut writer = Seeds::new(seeds);
    for (target, _, bytes) in crafted() {
        writer.write(target, &bytes);
    }
    for path in &files {
        let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        // Whole files (cut to the fuzzer's longest input) for the reader.
        writer.write("replay", &bytes[..bytes.len().min(64 << 10)]);
        let frames = read_frames(&bytes);
        for group in frames.chunks(4) {
            writer.write("decode", &ops_of(group));
        }
        for f in &frames {
            for message in dns_payloads(f) {
                writer.write("dns", message);
            }
        }
        let tcp: Vec<&Frame> = frames.iter().filter(|f| is_tcp(f)).collect();
        for group in tcp.chunks(64) {
            writer.write("tcp", &ops_of(group.iter().copied()));
        }
        for group in frames.chunks(256) {
            writer.write("correlate", &ops_of(group));
        }
    }
    eprintln!(
        "[fuzz] seeds: {} from {} captures in {}",
        writer.summary(),
        files.len(),
        corpus.display()
    );
    Ok(())
}

/// Seed files, named by a hash of their content (so duplicates are written once).
struct Seeds<'a> {
    dir: &'a Path,
    seen: HashSet<(&'static str, u64)>,
}

impl<'a> Seeds<'a> {
    fn new(dir: &'a Path) -> Self {
        Self {
            dir,
            seen: HashSet::new(),
        }
    }

    fn write(&mut self, target: &'static str, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut h = DefaultHasher::new();
        bytes.hash(&mut h);
        let hash = h.finish();
        if self.seen.insert((target, hash)) {
            let _ = fs::write(self.dir.join(target).join(format!("{hash:016x}")), bytes);
        }
    }

    fn summary(&self) -> String {
        TARGETS
            .iter()
            .map(|t| {
                let n = self.seen.iter().filter(|(name, _)| *name == t.name).count();
                format!("{} {n}", t.name)
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The `ops` link index of a capture's link type, for the types dnstrace decodes.
fn link_index(link: DataLink) -> Option<u8> {
    Some(match link {
        DataLink::ETHERNET => ops::LINK_ETHERNET,
        DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 | DataLink::Unknown(12 | 14) => {
            ops::LINK_RAW_IP
        }
        DataLink::LINUX_SLL => ops::LINK_SLL,
        DataLink::LINUX_SLL2 => ops::LINK_SLL2,
        DataLink::NULL => ops::LINK_NULL,
        DataLink::LOOP => ops::LINK_LOOP,
        _ => return None,
    })
}

/// The frames of a pcap or pcapng file, as far as it reads, of the link types dnstrace
/// decodes.
fn read_frames(bytes: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    if bytes.starts_with(&[0x0a, 0x0d, 0x0d, 0x0a]) {
        let Ok(mut r) = PcapNgReader::new(bytes) else {
            return frames;
        };
        let mut links = Vec::new();
        while let Some(Ok(block)) = r.next_block() {
            match block {
                Block::SectionHeader(_) => links.clear(),
                Block::InterfaceDescription(idb) => links.push(link_index(idb.linktype)),
                Block::EnhancedPacket(epb) => {
                    if let Some(Some(link)) = links.get(epb.interface_id as usize) {
                        frames.push(Frame {
                            link: *link,
                            ts_ns: u64::try_from(epb.timestamp.as_nanos()).unwrap_or(0),
                            orig_len: epb.original_len as usize,
                            data: epb.data.into_owned(),
                        });
                    }
                }
                _ => {}
            }
        }
    } else if let Ok(mut r) = PcapReader::new(bytes) {
        let Some(link) = link_index(r.header().datalink) else {
            return frames;
        };
        let frac_ns = match r.header().ts_resolution {
            TsResolution::MicroSecond => 1_000,
            TsResolution::NanoSecond => 1,
        };
        // Raw: the checked reader refuses frames longer than the snaplen on the wire.
        while let Some(Ok(p)) = r.next_raw_packet() {
            frames.push(Frame {
                link,
                ts_ns: u64::from(p.ts_sec) * 1_000_000_000 + u64::from(p.ts_frac) * frac_ns,
                orig_len: p.orig_len as usize,
                data: p.data.into_owned(),
            });
        }
    }
    frames
}

/// Frames as `ops` records, with ticks for the time between them.
fn ops_of<'a>(frames: impl IntoIterator<Item = &'a Frame>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut last = None;
    for f in frames {
        let last = last.get_or_insert(f.ts_ns);
        let ms = f.ts_ns.saturating_sub(*last) / 1_000_000;
        if ms > 0 {
            ops::tick(&mut out, ms);
        }
        *last = (*last).max(f.ts_ns);
        ops::frame(
            &mut out,
            f.link,
            f.orig_len.saturating_sub(f.data.len()),
            &f.data,
        );
    }
    out
}

/// The IP packet of a frame, parsed by etherparse (lax: cut packets too).
fn sliced(f: &Frame) -> Option<etherparse::LaxSlicedPacket<'_>> {
    use etherparse::{EtherType, LaxSlicedPacket};
    let d = &f.data;
    let cooked = |len: usize, at: usize| {
        let ether_type = EtherType(u16::from_be_bytes([*d.get(at)?, *d.get(at + 1)?]));
        Some(LaxSlicedPacket::from_ether_type(ether_type, d.get(len..)?))
    };
    match f.link {
        ops::LINK_ETHERNET => LaxSlicedPacket::from_ethernet(d).ok(),
        ops::LINK_RAW_IP => LaxSlicedPacket::from_ip(d).ok(),
        ops::LINK_SLL => cooked(16, 14),
        ops::LINK_SLL2 => cooked(20, 0),
        _ => LaxSlicedPacket::from_ip(d.get(4..)?).ok(),
    }
}

fn is_tcp(f: &Frame) -> bool {
    matches!(
        sliced(f).and_then(|s| s.transport),
        Some(etherparse::TransportSlice::Tcp(_))
    )
}

/// The DNS messages of a frame: a UDP payload, or the length-prefixed messages of a TCP
/// segment that holds them whole (DNS, mDNS and LLMNR ports).
fn dns_payloads(f: &Frame) -> Vec<&[u8]> {
    use etherparse::TransportSlice;
    let ports = [53, 5353, 5355];
    let on_port = |s: u16, d: u16| ports.contains(&s) || ports.contains(&d);
    let Some(transport) = sliced(f).and_then(|s| s.transport) else {
        return Vec::new();
    };
    match transport {
        TransportSlice::Udp(u) if on_port(u.source_port(), u.destination_port()) => {
            vec![u.payload()]
        }
        TransportSlice::Tcp(t) if on_port(t.source_port(), t.destination_port()) => {
            let mut out = Vec::new();
            let mut rest = t.payload();
            while let [hi, lo, body @ ..] = rest {
                let len = usize::from(u16::from_be_bytes([*hi, *lo]));
                let Some(message) = body.get(..len) else {
                    break;
                };
                out.push(message);
                rest = &body[len..];
            }
            out
        }
        _ => Vec::new(),
    }
}

// ---- the crafted IPv6 extension chain of issue 8 ----

/// Captured lengths of the crafted Ethernet frame: cut right after the Fragment header,
/// then 1 and 2 bytes into the second hop-by-hop header (2048 is dnstrace's longest snaplen).
const IPV6_CHAIN_CUTS: [usize; 3] = [2046, 2047, 2048];

/// An Ethernet frame holding the IPv6 packet of issue 8: hop-by-hop options (1984 bytes) →
/// Fragment header (offset 0, M=1) → hop-by-hop → UDP to port 53 with a DNS query.
fn ipv6_chain_frame() -> Vec<u8> {
    let query = [
        &[0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0][..],
        b"\x04fuzz\x04test\x00",
        &[0, 1, 0, 1],
    ]
    .concat();
    let mut udp = vec![0x9c, 0x40, 0, 53];
    udp.extend(((8 + query.len()) as u16).to_be_bytes());
    udp.extend([0, 0]);
    udp.extend(&query);
    // Next header, length in 8-byte units after the first 8, then PadN options.
    let hop_by_hop = |next: u8, units: u8| {
        let mut h = vec![next, units];
        let mut left = (usize::from(units) + 1) * 8 - 2;
        while left > 0 {
            let n = (left - 2).min(255);
            h.extend([1, n as u8]);
            h.resize(h.len() + n, 0);
            left -= 2 + n;
        }
        h
    };
    let mut chain = hop_by_hop(44, 247);
    chain.extend([0, 0, 0x00, 0x01, 0x12, 0x34, 0x56, 0x78]);
    chain.extend(hop_by_hop(17, 0));
    chain.extend(&udp);
    let mut frame = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x86, 0xdd];
    frame.extend([0x60, 0, 0, 0]);
    frame.extend((chain.len() as u16).to_be_bytes());
    frame.extend([0, 64]);
    for last in [0x10, 0x53] {
        frame.extend([0x20, 0x01, 0x0d, 0xb8]);
        frame.extend([0; 11]);
        frame.push(last);
    }
    frame.extend(&chain);
    frame
}

/// The crafted inputs: (target, file name, bytes). `fuzz/regressions/` holds them too.
fn crafted() -> Vec<(&'static str, String, Vec<u8>)> {
    let frame = ipv6_chain_frame();
    let mut out = Vec::new();
    for cap in IPV6_CHAIN_CUTS {
        let mut input = Vec::new();
        ops::frame(
            &mut input,
            ops::LINK_ETHERNET,
            frame.len() - cap,
            &frame[..cap],
        );
        out.push(("decode", format!("ipv6-ext-chain-eth-{cap}"), input));
    }
    // The socket hop sees the IP packet alone; cut right after the Fragment header.
    let ip = &frame[14..];
    let mut input = Vec::new();
    ops::frame(&mut input, ops::LINK_RAW_IP, ip.len() - 2032, &ip[..2032]);
    out.push(("decode", "ipv6-ext-chain-ip-2032".to_owned(), input));

    let header = PcapHeader {
        datalink: DataLink::ETHERNET,
        snaplen: 2048,
        ..PcapHeader::default()
    };
    let mut pcap = PcapWriter::with_header(Vec::new(), header).expect("writing to memory");
    for (i, cap) in IPV6_CHAIN_CUTS.into_iter().enumerate() {
        let ts = Duration::from_secs(1_700_000_000 + i as u64);
        pcap.write_packet(&PcapPacket::new(ts, frame.len() as u32, &frame[..cap]))
            .expect("writing to memory");
    }
    out.push((
        "replay",
        "ipv6-ext-chain.pcap".to_owned(),
        pcap.into_writer(),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crafted_inputs_are_in_the_regression_corpus() {
        for (target, name, bytes) in crafted() {
            let path = workspace_root()
                .join("fuzz/regressions")
                .join(target)
                .join(&name);
            let committed = fs::read(&path).unwrap_or_default();
            assert!(
                committed == bytes,
                "{} differs from what xtask crafts",
                path.display()
            );
        }
    }

    #[test]
    fn crafted_chain_is_well_formed() {
        let frame = ipv6_chain_frame();
        // Ethernet 14 + IPv6 40 + hop-by-hop 1984 + Fragment 8 + hop-by-hop 8 + UDP 8 + DNS 27.
        assert_eq!(frame.len(), 14 + 40 + 1984 + 8 + 8 + 8 + 27);
        assert_eq!(
            usize::from(u16::from_be_bytes([frame[18], frame[19]])),
            frame.len() - 54
        );
        assert_eq!(&frame[54 + 1984..54 + 1984 + 4], &[0, 0, 0, 1]);
        assert_eq!(frame[54 + 1992], 17);
    }

    #[test]
    fn frames_become_seeds() {
        let (_, _, pcap) = crafted().pop().unwrap();
        let frames = read_frames(&pcap);
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].orig_len, ipv6_chain_frame().len());
        let input = ops_of(&frames);
        let ops: Vec<ops::Op> = ops::Ops::new(&input).collect();
        assert_eq!(ops.len(), 5, "3 frames with a 1 s tick between each");
        assert!(matches!(ops[1], ops::Op::Tick { ms: 1000 }));
    }

    #[test]
    fn crash_stack_from_the_panic_to_the_target() {
        let report = "#0 0x1 in __sanitizer_print_stack_trace /x/asan_stack.cpp:87:3\n\
            #1 0x2 in core::panicking::panic_nounwind_fmt /rustc/abc/library/core/src/panicking.rs:1\n\
            #2 0x3 in <etherparse::Iter as Iterator>::next /root/.cargo/registry/src/index.crates.io-1/etherparse-0.21.0/src/a.rs\n\
            #3 0x3 in any<etherparse::Iter> /rustc/abc/library/core/src/iter/traits/iterator.rs:1\n\
            #4 0x4 in dnstrace::decode::decode /w/dnstrace/src/decode/mod.rs:201:25\n\
            #5 0x5 in rust_fuzzer_test_input /x/lib.rs:276:60\n\
            #0 0x6 in malloc\n";
        let lines: Vec<&str> = report.lines().map(str::trim_start).collect();
        assert_eq!(
            stack_of_interest(&lines),
            [
                "<etherparse::Iter as Iterator>::next etherparse-0.21.0/src/a.rs",
                "dnstrace::decode::decode /w/dnstrace/src/decode/mod.rs:201:25"
            ]
        );
    }

    #[test]
    fn libfuzzer_log_lines() {
        let log = "#1024\tpulse  cov: 10 ft: 12 corp: 5/100b exec/s: 512\n\
                   artifact_prefix='/x/'; Test unit written to /x/crash-abc\n";
        assert_eq!(artifacts_written(log), ["/x/crash-abc"]);
    }
}

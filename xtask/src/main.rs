//! `cargo xtask …`: developer tasks for dnstrace.
//!
//! - `setup`: installs the eBPF toolchain and the lab's tools (idempotent).
//! - `demo`: builds dnstrace, builds a lab node and traces real queries;
//!   `demo --scenario NAME` reproduces one failure mode for real instead.
//! - `test`: setup, build, then every test (privileged ones single-threaded).
//! - `lab up|down`: keep a lab node up for manual poking / remove leftovers.
//! - `dist`: the release artifacts (stripped binary, debug file, completions, man pages).
//! - `image`: the container image (podman), from the `dist` binary.
//! - `bench`: measure dnstrace's overhead and throughput, write BENCHMARKS.md.
//! - `minroot`: run `test` and `demo` in a debootstrapped minimal Debian 12.
//! - `fuzz`: build the fuzz targets, seed them from the capture corpus, run each for a
//!   while, replay the regression corpus.
//!
//! This crate never depends on `dnstrace`: `setup` must build before the eBPF
//! toolchain that dnstrace's build script needs exists.

mod bench;
mod demo;
mod dist;
mod fuzz;
mod image;
mod lab;
mod minroot;
mod setup;
mod test;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "dnstrace developer tasks",
    disable_help_subcommand = true
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the eBPF toolchain (Debian rustc-web, BPF core library, bpf-linker) and the lab's DNS tools; idempotent.
    Setup,
    /// Setup, build dnstrace (release), build a lab node and trace real queries from its pod; with --scenario, reproduce one failure mode of FAILURE-MODES.md.
    Demo(demo::Args),
    /// Setup, build dnstrace, run every test; privileged tests run single-threaded.
    Test {
        /// Extra arguments for `cargo test` (after `--`), e.g. `-- -p dnstrace-tests lab`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Keep a lab node up for manual poking, or remove leftover labs.
    Lab {
        #[command(subcommand)]
        action: lab::Action,
    },
    /// Setup, build dnstrace (release), measure its overhead and throughput on lab namespaces, write BENCHMARKS.md.
    Bench(bench::Args),
    /// Check the README's two commands on a minimal Debian 12: debootstrap a minbase root, clone this checkout's HEAD into it, run `cargo xtask test` and `cargo xtask demo` inside.
    Minroot(minroot::Args),
    /// Build the fuzz targets (nightly, cargo-fuzz), seed them from the capture corpus, run each for --seconds, replay fuzz/regressions; fails on any crash.
    Fuzz(fuzz::Args),
    /// Build the release artifacts into target/dist (stripped binary, its debug file, completions, man pages, licenses, SHA256SUMS) and check them.
    Dist(dist::Args),
    /// Build the container image localhost/dnstrace:VERSION with podman (deploy/Containerfile) from the stripped binary of `dist` and its libraries.
    Image,
    /// The bench's UDP/DNS flood generator (runs inside a lab netns).
    #[command(hide = true)]
    BenchFlood(bench::flood::FloodArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // SAFETY: no other thread exists yet (the stop handler starts one below).
    unsafe { std::env::set_var("PATH", setup::path_with_install_root()) };
    install_stop_handler();
    let result = match cli.task {
        Task::Setup => setup::run().map(drop),
        Task::Demo(args) => demo::run(&args),
        Task::Test { args } => test::run(&args),
        Task::Lab { action } => lab::run(action),
        Task::Bench(args) => bench::run(&args),
        Task::Minroot(args) => minroot::run(&args),
        Task::Fuzz(args) => fuzz::run(&args),
        Task::Dist(args) => dist::run(&args),
        Task::Image => image::run(),
        Task::BenchFlood(args) => bench::flood::run(&args),
    };
    match result {
        Ok(()) if stopped() => ExitCode::from(130),
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if stopped() => {
            eprintln!("[xtask] interrupted ({e:#})");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("[xtask] error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

static STOP: AtomicBool = AtomicBool::new(false);
static SIGNALS: AtomicUsize = AtomicUsize::new(0);

/// Ctrl-C, SIGTERM and SIGHUP set a flag that the tasks poll, so the lab's
/// Drop runs. A second one exits at once (the next run removes what is left).
fn install_stop_handler() {
    let installed = ctrlc::set_handler(|| {
        if SIGNALS.fetch_add(1, Ordering::SeqCst) == 0 {
            STOP.store(true, Ordering::SeqCst);
            eprintln!("\n[xtask] stopping and cleaning up (signal again to abort without cleanup)");
        } else {
            std::process::exit(130);
        }
    });
    if let Err(e) = installed {
        eprintln!("[xtask] warning: no signal handler ({e}); Ctrl-C may leave a lab behind");
    }
}

/// True once the user asked to stop.
fn stopped() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Like `thread::sleep`, but returns early (false) when asked to stop.
fn sleep_unless_stopped(duration: Duration) -> bool {
    let deadline = Instant::now() + duration;
    while Instant::now() < deadline {
        if stopped() {
            return false;
        }
        thread::sleep(Duration::from_millis(50).min(deadline - Instant::now()));
    }
    !stopped()
}

fn bail_if_stopped() -> Result<()> {
    if stopped() {
        bail!("stopped by signal");
    }
    Ok(())
}

fn require_root() -> Result<()> {
    if !dnstrace_tests::is_root() {
        bail!("needs root: creates network namespaces and loads eBPF; run with sudo");
    }
    Ok(())
}

/// The workspace root (this crate's parent directory).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// The cargo that runs us (`cargo xtask` sets CARGO), else the one on PATH.
fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root())
        .env("PATH", setup::path_with_install_root());
    cmd
}

/// Builds dnstrace (`cargo build [--release] -p dnstrace`, progress visible) and returns
/// the binary; `task` prefixes the progress lines ("demo", "test"…).
fn build_dnstrace(task: &str, release: bool) -> Result<PathBuf> {
    let (profile, flags): (&str, &[&str]) = if release {
        ("release", &["build", "--release", "-p", "dnstrace"])
    } else {
        ("debug", &["build", "-p", "dnstrace"])
    };
    eprintln!("[{task}] building dnstrace ({profile})");
    let t = Instant::now();
    run_visible(&format!("cargo {}", flags.join(" ")), cargo().args(flags))?;
    let bin = target_dir().join(profile).join("dnstrace");
    if !bin.is_file() {
        bail!("build succeeded but {} is missing", bin.display());
    }
    eprintln!("[{task}] build: ok ({})", fmt_duration(t.elapsed()));
    Ok(bin)
}

/// The dnstrace to run: `--bin PATH` when given, else a fresh release build.
fn release_dnstrace(task: &str, given: Option<&Path>) -> Result<PathBuf> {
    match given {
        Some(bin) => {
            let bin = std::path::absolute(bin)?;
            // Said now, not when the first section tries to start it minutes later.
            if !bin.is_file() {
                bail!(
                    "--bin {}: no such file (build one with `cargo build --release -p dnstrace`, or leave --bin out to build it)",
                    bin.display()
                );
            }
            Ok(bin)
        }
        None => build_dnstrace(task, true),
    }
}

/// Runs `cmd` with inherited stdio (its progress stays visible); fails unless it exits 0.
fn run_visible(what: &str, cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("{what}: cannot run {:?}", cmd.get_program()))?;
    bail_if_stopped()?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// "1.2s" / "250ms".
fn fmt_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `--bin` that is not there is refused before any section runs, naming the path.
    #[test]
    fn a_missing_bin_is_refused_at_once() {
        let missing = Path::new("/nonexistent/dnstrace-bin");
        let err = release_dnstrace("bench", Some(missing))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/nonexistent/dnstrace-bin") && err.contains("no such file"),
            "{err}"
        );
        let here = std::env::current_exe().unwrap();
        assert_eq!(release_dnstrace("bench", Some(&here)).unwrap(), here);
    }
}

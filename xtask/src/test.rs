//! `cargo xtask test`: setup, build dnstrace (debug), then the tests: unit
//! tests in parallel, the privileged lab tests (crate `dnstrace-tests`)
//! single-threaded, all with DNSTRACE_BIN naming the built binary; then each
//! fuzz target for a bounded time and the fuzz regression corpus.

use std::time::Instant;

use anyhow::{Result, bail};
use dnstrace_tests::DNSTRACE_BIN_ENV;

use crate::{bail_if_stopped, cargo, fmt_duration, require_root};

const PRIVILEGED: &str = "dnstrace-tests";
/// bpf-only; dnstrace's build script builds it.
const EBPF: &str = "dnstrace-ebpf";

pub fn run(extra: &[String]) -> Result<()> {
    require_root()?;
    let total = Instant::now();
    let mut times = Vec::new();

    let t = Instant::now();
    crate::setup::run()?;
    times.push(("setup".to_owned(), t.elapsed()));

    let t = Instant::now();
    let bin = crate::build_dnstrace("test", false)?;
    times.push(("build".to_owned(), t.elapsed()));

    let mut failed = Vec::new();
    // The release artifacts and the image: before the tests, which run the image.
    let mut image = None;
    if extra.is_empty() || extra.iter().any(|a| a.contains("image")) {
        let t = Instant::now();
        let built = crate::dist::build_checked(&crate::target_dir().join("dist-test"))
            .and_then(|a| crate::image::build(&a.tree.join("bin/dnstrace")));
        match built {
            Ok(i) => {
                eprintln!(
                    "[test] image {} ({:.1} MiB)",
                    i.tag,
                    i.bytes as f64 / (1024.0 * 1024.0)
                );
                image = Some(i.tag);
            }
            Err(e) => {
                bail_if_stopped()?;
                eprintln!("[test] dist and image: {e:#}");
                failed.push("dist and image".to_owned());
            }
        }
        times.push(("dist and image".to_owned(), t.elapsed()));
    }
    for (phase, args) in phases(extra) {
        bail_if_stopped()?;
        eprintln!("[test] {phase}: cargo {}", args.join(" "));
        let t = Instant::now();
        let mut cmd = cargo();
        cmd.args(&args).env(DNSTRACE_BIN_ENV, &bin);
        if let Some(tag) = &image {
            cmd.env("DNSTRACE_IMAGE", tag);
        }
        if phase != UNIT {
            // Every lookup written with its hops: the lab tests read them. A test of the
            // default (`--hops problems`) says so on its own command line. Not for the
            // unit tests: `--help` would show the variable's value.
            cmd.env("DNSTRACE_HOPS", "all");
        }
        let status = cmd.status()?;
        times.push((phase.clone(), t.elapsed()));
        bail_if_stopped()?;
        if !status.success() {
            failed.push(phase);
        }
    }
    if let Some(tag) = &image {
        // The image is rebuilt by every run; it is not left to pile up.
        let _ = std::process::Command::new("podman")
            .args(["rmi", "--force", tag])
            .output();
    }
    if extra.is_empty() {
        let t = Instant::now();
        if let Err(e) = crate::fuzz::in_test() {
            bail_if_stopped()?;
            eprintln!("[test] fuzz: {e:#}");
            failed.push("fuzz".to_owned());
        }
        times.push(("fuzz".to_owned(), t.elapsed()));
    }

    let line: Vec<String> = times
        .iter()
        .map(|(phase, d)| format!("{phase} {}", fmt_duration(*d)))
        .collect();
    eprintln!(
        "[test] times: {}; total {}",
        line.join(", "),
        fmt_duration(total.elapsed())
    );
    if !failed.is_empty() {
        bail!("[test] FAILED: {}", failed.join(", "));
    }
    eprintln!("[test] all passed");
    Ok(())
}

/// The phase of the unit tests (no lab, no tracer binary needed).
const UNIT: &str = "unit tests";

/// The `cargo` invocations to run: (phase name, args).
fn phases(extra: &[String]) -> Vec<(String, Vec<String>)> {
    let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    if extra.is_empty() {
        return vec![
            (
                UNIT.to_owned(),
                owned(&[
                    "test",
                    "--no-fail-fast",
                    "--workspace",
                    "--exclude",
                    EBPF,
                    "--exclude",
                    PRIVILEGED,
                ]),
            ),
            (
                "privileged tests".to_owned(),
                owned(&[
                    "test",
                    "--no-fail-fast",
                    "-p",
                    PRIVILEGED,
                    "--",
                    "--test-threads=1",
                ]),
            ),
        ];
    }
    // User arguments: one run, single-threaded (it may include lab tests).
    let (cargo_args, test_args) = match extra.iter().position(|a| a == "--") {
        Some(i) => (&extra[..i], &extra[i + 1..]),
        None => (extra, &[][..]),
    };
    let mut args = owned(&["test"]);
    let selects = cargo_args.iter().any(|a| {
        a == "-p"
            || a.starts_with("--package")
            || a == "--workspace"
            || a.starts_with("--manifest-path")
    });
    if !selects {
        args.extend(owned(&["--workspace", "--exclude", EBPF]));
    }
    args.extend(cargo_args.iter().cloned());
    args.push("--".to_owned());
    args.push("--test-threads=1".to_owned());
    args.extend(test_args.iter().cloned());
    vec![("tests".to_owned(), args)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn default_phases_split_unit_and_privileged() {
        let p = phases(&[]);
        assert_eq!(p.len(), 2);
        assert!(p[0].1.contains(&"--exclude".to_owned()));
        assert_eq!(p[1].1.last().unwrap(), "--test-threads=1");
    }

    #[test]
    fn extra_args_are_passed_through() {
        let p = phases(&strings(&["-p", "dnstrace-tests", "--", "lab"]));
        assert_eq!(
            p[0].1,
            strings(&[
                "test",
                "-p",
                "dnstrace-tests",
                "--",
                "--test-threads=1",
                "lab"
            ])
        );
        let p = phases(&strings(&["--release"]));
        assert_eq!(
            p[0].1,
            strings(&[
                "test",
                "--workspace",
                "--exclude",
                "dnstrace-ebpf",
                "--release",
                "--",
                "--test-threads=1"
            ])
        );
    }
}

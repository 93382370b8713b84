//! `cargo xtask minroot`: checks the README's two commands on a minimal
//! Debian 12, like the `debian:12` image a `kubectl debug` shell often runs.
//!
//! It debootstraps a `minbase` bookworm root, gives it the image's apt
//! sources, clones this checkout's HEAD into it, installs only the README's
//! prerequisites, then runs `cargo xtask test` and `cargo xtask demo` inside,
//! with a PATH that lacks the sbin folders, and reports the time of each step.
//!
//! Everything inside runs in a private mount namespace (`unshare --mount`):
//! /proc, /sys, /dev and /run of the root, and every mount the tests make,
//! go away with its last process, however the run ends. Not part of
//! `cargo xtask test`: it downloads about 600 MB and takes a quarter of an hour.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::{bail_if_stopped, fmt_duration, require_root, run_visible, workspace_root};

/// What a minimal Debian 12 needs before `cargo xtask` can run at all. The
/// README's "On a minimal Debian 12" paragraph quotes it (a test checks).
pub const PREREQUISITES: &str =
    "apt-get update && apt-get install -y --no-install-recommends cargo-web ca-certificates";
/// The `debian:12` image's apt sources; debootstrap writes only the first line.
const APT_SOURCES: &str = "\
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";
/// Marks a root this task made, so `--fresh` never deletes anything else.
const MARKER: &str = "dnstrace-minroot";
/// A root login shell's PATH, for the prerequisites (dpkg needs the sbin folders).
const LOGIN_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// A PATH without the sbin folders (`su` without `-`, some `chroot`s): xtask must add them.
const BARE_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Mounts the root's API folders in the private mount namespace, then enters it.
const ENTER: &str = r#"set -eu
root=$1; shift
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs tmpfs "$root/run"
exec chroot "$root" "$@"
"#;

#[derive(clap::Args)]
pub struct Args {
    /// Folder of the minimal root.
    #[arg(long, default_value = "/var/tmp/dnstrace-minroot")]
    root: PathBuf,
    /// Delete a root left by an earlier run and start from debootstrap.
    /// Without it an existing root is reused (its packages and build stay).
    #[arg(long)]
    fresh: bool,
    /// Debian mirror for debootstrap.
    #[arg(long, default_value = "http://deb.debian.org/debian")]
    mirror: String,
    /// The `cargo xtask` tasks to run inside, in order.
    #[arg(long, value_delimiter = ',', default_value = "test,demo")]
    tasks: Vec<String>,
}

pub fn run(args: &Args) -> Result<()> {
    require_root()?;
    let root = std::path::absolute(&args.root)?;
    let mut times = Vec::new();
    if args.fresh && root.exists() {
        remove_root(&root)?;
    }

    let t = Instant::now();
    if root.join(MARKER).exists() {
        step("root", &format!("reusing {}", root.display()));
    } else {
        debootstrap(&root, &args.mirror)?;
        times.push(("debootstrap".to_owned(), t.elapsed()));
    }
    prepare(&root)?;
    copy_checkout(&root)?;
    bail_if_stopped()?;

    let t = Instant::now();
    step("prerequisites", PREREQUISITES);
    let result = inside(&root, LOGIN_PATH, &["sh", "-c", PREREQUISITES]);
    times.push(("prerequisites".to_owned(), t.elapsed()));
    let mut result = result.context("[minroot] prerequisites");

    for task in &args.tasks {
        if result.is_err() {
            break;
        }
        let t = Instant::now();
        step(task, &format!("cargo xtask {task} (PATH={BARE_PATH})"));
        let cmd = format!("cd /src && cargo xtask {task}");
        result = inside(&root, BARE_PATH, &["sh", "-c", &cmd])
            .with_context(|| format!("[minroot] cargo xtask {task}"));
        times.push((format!("cargo xtask {task}"), t.elapsed()));
    }

    let leftovers = check_nothing_left(&root);
    let line: Vec<String> = times
        .iter()
        .map(|(what, d)| format!("{what} {}", fmt_duration(*d)))
        .collect();
    step("times", &line.join(", "));
    step(
        "root",
        &format!(
            "kept at {} for inspection or a faster rerun; `cargo xtask minroot --fresh` starts over",
            root.display()
        ),
    );
    result?;
    leftovers?;
    let ran: Vec<String> = args
        .tasks
        .iter()
        .map(|t| format!("`cargo xtask {t}`"))
        .collect();
    step(
        "done",
        &format!("{} passed on a minimal Debian 12", ran.join(" and ")),
    );
    Ok(())
}

fn step(what: &str, result: &str) {
    eprintln!("[minroot] {what}: {result}");
}

fn debootstrap(root: &Path, mirror: &str) -> Result<()> {
    if Command::new("debootstrap")
        .arg("--version")
        .output()
        .is_err()
    {
        step("debootstrap", "installing the Debian package");
        run_visible(
            "apt-get install debootstrap",
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "--no-install-recommends", "debootstrap"]),
        )?;
    }
    step(
        "debootstrap",
        &format!("minbase bookworm into {} (~1 min)", root.display()),
    );
    let t = Instant::now();
    run_visible(
        "debootstrap",
        Command::new("debootstrap")
            .args(["--variant=minbase", "bookworm"])
            .arg(root)
            .arg(mirror),
    )?;
    fs::write(root.join(MARKER), "made by cargo xtask minroot\n")?;
    step(
        "debootstrap",
        &format!("ok ({})", fmt_duration(t.elapsed())),
    );
    Ok(())
}

/// The `debian:12` image's apt sources, and the host's local CA certificates
/// (so that a proxy which intercepts TLS works inside as it does outside).
fn prepare(root: &Path) -> Result<()> {
    let _ = fs::remove_file(root.join("etc/apt/sources.list"));
    fs::write(
        root.join("etc/apt/sources.list.d/debian.sources"),
        APT_SOURCES,
    )
    .context("writing the apt sources")?;
    let local_cas = Path::new("/usr/local/share/ca-certificates");
    let mut copied = 0;
    if let Ok(entries) = fs::read_dir(local_cas) {
        let dest = root.join("usr/local/share/ca-certificates");
        fs::create_dir_all(&dest)?;
        for entry in entries.flatten() {
            if entry.path().extension().is_some_and(|e| e == "crt") {
                fs::copy(entry.path(), dest.join(entry.file_name()))?;
                copied += 1;
            }
        }
    }
    step(
        "prepare",
        &format!(
            "apt sources bookworm, bookworm-updates, bookworm-security; {copied} local CA certificate(s)"
        ),
    );
    Ok(())
}

/// This checkout's HEAD in `<root>/src` (uncommitted changes are not copied),
/// and the shared corpus beside it in `<root>/shared/corpus`.
fn copy_checkout(root: &Path) -> Result<()> {
    let ws = workspace_root();
    let src = root.join("src");
    if src.join(".git").exists() {
        run_visible(
            "git fetch",
            Command::new("git")
                .arg("-C")
                .arg(&src)
                .args(["fetch", "--quiet"])
                .arg(&ws)
                .arg("HEAD"),
        )?;
        run_visible(
            "git checkout",
            Command::new("git").arg("-C").arg(&src).args([
                "checkout",
                "--quiet",
                "--force",
                "--detach",
                "FETCH_HEAD",
            ]),
        )?;
    } else {
        run_visible(
            "git clone",
            Command::new("git")
                .args(["clone", "--quiet"])
                .arg(&ws)
                .arg(&src),
        )?;
    }
    // The corpus tests read ../shared/corpus beside the checkout.
    let corpus = ws.join("../shared/corpus");
    let mut corpus_note = String::new();
    if let Ok(entries) = fs::read_dir(&corpus) {
        let dest = root.join("shared/corpus");
        fs::create_dir_all(&dest)?;
        let mut n = 0;
        for entry in entries.flatten() {
            if entry.path().is_file() {
                fs::copy(entry.path(), dest.join(entry.file_name()))?;
                n += 1;
            }
        }
        corpus_note = format!("; /shared/corpus: {n} files");
    }
    let head = Command::new("git")
        .arg("-C")
        .arg(&src)
        .args(["log", "--oneline", "-1"])
        .output()?;
    let dirty = Command::new("git")
        .arg("-C")
        .arg(&ws)
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .is_ok_and(|o| !o.stdout.is_empty());
    step(
        "source",
        &format!(
            "/src at {}{corpus_note}{}",
            String::from_utf8_lossy(&head.stdout).trim(),
            if dirty {
                " (this checkout's uncommitted changes are not in it)"
            } else {
                ""
            }
        ),
    );
    Ok(())
}

/// Runs `argv` chrooted into `root`, in a private mount namespace, with a
/// clean environment and the given PATH; output stays visible.
fn inside(root: &Path, path: &str, argv: &[&str]) -> Result<()> {
    let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".to_owned());
    run_visible(
        &argv.join(" "),
        Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                ENTER,
                "sh",
            ])
            .arg(root)
            .args(["/usr/bin/env", "-i", "HOME=/root", "LANG=C.UTF-8"])
            .arg(format!("TERM={term}"))
            .arg(format!("PATH={path}"))
            .args(argv),
    )
}

/// Fails if a mount under `root` is visible here, or a process still runs in
/// it (those are ours: the root is; they are killed).
fn check_nothing_left(root: &Path) -> Result<()> {
    let mounts = mounts_under(root);
    let mut procs = Vec::new();
    for entry in fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if fs::read_link(entry.path().join("root")).is_ok_and(|r| r.starts_with(root)) {
            // SAFETY: kill(2) on a pid whose root is our minimal root.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            procs.push(pid);
        }
    }
    if !mounts.is_empty() || !procs.is_empty() {
        bail!("[minroot] left behind: mounts {mounts:?}, processes {procs:?} (killed)");
    }
    step("cleanup", "no mount and no process left in the root");
    Ok(())
}

/// Mount points at or below `root` in this mount namespace.
fn mounts_under(root: &Path) -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| Path::new(point).starts_with(root))
        .map(str::to_owned)
        .collect()
}

/// Deletes a root this task made, never one with a mount inside.
fn remove_root(root: &Path) -> Result<()> {
    if !root.join(MARKER).exists() {
        bail!(
            "[minroot] {} exists but was not made by `cargo xtask minroot`; pick another --root",
            root.display()
        );
    }
    let mounts = mounts_under(root);
    if !mounts.is_empty() {
        bail!(
            "[minroot] not deleting {}: mounts inside: {mounts:?}",
            root.display()
        );
    }
    step("fresh", &format!("deleting {}", root.display()));
    fs::remove_dir_all(root).with_context(|| format!("deleting {}", root.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README tells users the same prerequisite line that this check runs.
    #[test]
    fn readme_quotes_the_prerequisites() {
        let readme = fs::read_to_string(workspace_root().join("README.md")).unwrap();
        let paragraph = readme
            .split("\n\n")
            .find(|p| p.contains("minimal Debian 12"))
            .expect("README has an \"On a minimal Debian 12\" paragraph");
        assert!(
            readme.contains(PREREQUISITES),
            "README lacks `{PREREQUISITES}`; its paragraph: {paragraph}"
        );
    }

    #[test]
    fn mount_points_from_mountinfo() {
        // The root folder is a mount point in every mount namespace.
        assert!(mounts_under(Path::new("/")).iter().any(|m| m == "/"));
        assert!(mounts_under(Path::new("/nonexistent/dnstrace-minroot")).is_empty());
    }
}

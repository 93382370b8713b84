//! `cargo xtask setup`: installs what building and testing dnstrace needs,
//! idempotently, one line per step. See shared TOOLCHAIN.md for why this route
//! (Debian rustc-web + its precompiled BPF `core` + bpf-linker on LLVM 22).

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::{fmt_duration, require_root, run_visible};

/// The eBPF toolchain, from bookworm-security.
const TOOLCHAIN_PACKAGES: &[&str] = &["rustc-web", "cargo-web", "libstd-rust-web-dev-bpf"];
/// Real servers, clients and capture tools for the lab, tests and demo.
const TOOL_PACKAGES: &[&str] = &[
    "dnsmasq-base",
    "unbound",
    "bind9",
    "bind9-dnsutils",
    "knot-dnsutils",
    "tshark",
    "tcpdump",
    "iptables",
    "conntrack",
    "bpftool",
    "python3-dnspython",
    "dnsperf",
    "iproute2",
    "tmux",
];
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_MAJOR: &str = "22";
const BPF_CORE_DIR: &str = "/usr/lib/rustlib/bpfel-unknown-none/lib";
/// Keeps package scripts from starting bind9/unbound on the host during install.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";
const POLICY_MARK: &str = "# dnstrace xtask setup: temporary";

/// Runs every step; returns true if anything was installed.
pub fn run() -> Result<bool> {
    let started = Instant::now();
    require_root().context("[setup] root")?;
    step("root", "ok");
    let mut changed = apt_packages()?;
    changed |= bpf_linker()?;
    summary();
    step(
        "done",
        &format!(
            "{} ({})",
            if changed {
                "installed what was missing"
            } else {
                "nothing to do"
            },
            fmt_duration(started.elapsed())
        ),
    );
    Ok(changed)
}

fn step(what: &str, result: &str) {
    eprintln!("[setup] {what}: {result}");
}

// ---- Debian packages ----

fn apt_packages() -> Result<bool> {
    if Command::new("dpkg-query")
        .arg("--version")
        .output()
        .is_err()
    {
        bail!(
            "[setup] apt packages: dpkg-query not found; setup supports Debian 12 (bookworm) only. \
             Install by hand: {} {} and bpf-linker {BPF_LINKER_VERSION}",
            TOOLCHAIN_PACKAGES.join(" "),
            TOOL_PACKAGES.join(" ")
        );
    }
    let wanted: Vec<&str> = TOOLCHAIN_PACKAGES
        .iter()
        .chain(TOOL_PACKAGES)
        .copied()
        .collect();
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\\n"])
        .args(&wanted)
        .output()
        .context("running dpkg-query")?;
    // Exit status 1 just means some package is unknown to dpkg; stdout lists the rest.
    let missing = missing_packages(&wanted, &String::from_utf8_lossy(&out.stdout));
    if missing.is_empty() {
        step(
            "apt packages",
            &format!("ok (already installed: {})", wanted.len()),
        );
        return Ok(false);
    }
    step("apt packages", &format!("installing {}", missing.join(" ")));
    remove_leftover_policy();
    run_visible("apt-get update", Command::new("apt-get").arg("update"))?;
    let _no_services = NoServiceStarts::install();
    let installed = run_visible(
        "apt-get install",
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing),
    );
    if let Err(e) = installed {
        let hint = if missing.iter().any(|p| TOOLCHAIN_PACKAGES.contains(p)) {
            "; rustc-web, cargo-web and libstd-rust-web-dev-bpf come from bookworm-security: \
             check that `bookworm-security` is in your apt sources"
        } else {
            ""
        };
        return Err(e).context(format!("[setup] apt packages{hint}"));
    }
    step("apt packages", &format!("ok (installed {})", missing.len()));
    Ok(true)
}

/// Packages of `wanted` that `dpkg-query -W -f='${Package} ${Status}\n'` does
/// not report as "install ok installed".
fn missing_packages<'a>(wanted: &[&'a str], dpkg_output: &str) -> Vec<&'a str> {
    let installed: Vec<&str> = dpkg_output
        .lines()
        .filter(|line| line.ends_with(" install ok installed"))
        .filter_map(|line| line.split_whitespace().next())
        .map(|pkg| pkg.split(':').next().unwrap_or(pkg))
        .collect();
    wanted
        .iter()
        .copied()
        .filter(|p| !installed.contains(p))
        .collect()
}

/// While alive, a policy-rc.d that forbids starting services, so installing
/// bind9 and unbound does not leave DNS servers running on the host. Only
/// created if the machine has none; removed on drop.
struct NoServiceStarts(bool);

impl NoServiceStarts {
    fn install() -> NoServiceStarts {
        if Path::new(POLICY_RC_D).exists() {
            return NoServiceStarts(false);
        }
        let script = format!(
            "#!/bin/sh\n{POLICY_MARK}, keeps bind9/unbound from starting during install\nexit 101\n"
        );
        let created = fs::write(POLICY_RC_D, script).and_then(|()| {
            fs::set_permissions(
                POLICY_RC_D,
                std::os::unix::fs::PermissionsExt::from_mode(0o755),
            )
        });
        NoServiceStarts(created.is_ok())
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if self.0 {
            let _ = fs::remove_file(POLICY_RC_D);
        }
    }
}

/// A policy-rc.d we left behind when killed mid-install.
fn remove_leftover_policy() {
    if fs::read_to_string(POLICY_RC_D).is_ok_and(|s| s.contains(POLICY_MARK)) {
        let _ = fs::remove_file(POLICY_RC_D);
    }
}

// ---- bpf-linker ----

fn bpf_linker() -> Result<bool> {
    let root = install_root();
    let installed = root.join("bin/bpf-linker");
    let on_path = bpf_linker_version(Path::new("bpf-linker"));
    if on_path.as_deref() == Some(BPF_LINKER_VERSION) {
        step(
            &format!("bpf-linker {BPF_LINKER_VERSION}"),
            "ok (already installed)",
        );
        return Ok(false);
    }
    if bpf_linker_version(&installed).as_deref() == Some(BPF_LINKER_VERSION) {
        step(
            &format!("bpf-linker {BPF_LINKER_VERSION}"),
            &format!(
                "ok (already installed at {}; not on PATH, so xtask adds {} for its builds)",
                installed.display(),
                root.join("bin").display()
            ),
        );
        return Ok(false);
    }
    let llvm_prefix = llvm_prefix()?;
    step(
        &format!("bpf-linker {BPF_LINKER_VERSION}"),
        &format!(
            "installing with cargo (found {}; LLVM_PREFIX={}, ~1 min)",
            on_path.unwrap_or_else(|| "none".to_owned()),
            llvm_prefix.display()
        ),
    );
    let started = Instant::now();
    run_visible(
        "cargo install bpf-linker",
        crate::cargo()
            // Not the workspace: its config must not leak into this install.
            .current_dir(std::env::temp_dir())
            .env("LLVM_PREFIX", &llvm_prefix)
            .args([
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--locked",
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{LLVM_MAJOR}"),
            ]),
    )
    .context("[setup] bpf-linker")?;
    match bpf_linker_version(&installed) {
        Some(v) if v == BPF_LINKER_VERSION => {}
        other => bail!(
            "[setup] bpf-linker: {} reports {} after install",
            installed.display(),
            other.unwrap_or_else(|| "nothing".to_owned())
        ),
    }
    let note = if bpf_linker_version(Path::new("bpf-linker")).as_deref() == Some(BPF_LINKER_VERSION)
    {
        String::new()
    } else {
        format!(
            "; add {} to PATH to build without xtask",
            root.join("bin").display()
        )
    };
    step(
        &format!("bpf-linker {BPF_LINKER_VERSION}"),
        &format!(
            "ok (installed to {} in {}{note})",
            installed.display(),
            fmt_duration(started.elapsed())
        ),
    );
    Ok(true)
}

/// "0.13.0" from `<bin> --version` ("bpf-linker 0.13.0"), or None.
fn bpf_linker_version(bin: &Path) -> Option<String> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    parse_bpf_linker_version(&String::from_utf8_lossy(&out.stdout))
}

fn parse_bpf_linker_version(text: &str) -> Option<String> {
    let mut words = text.split_whitespace();
    (words.next()? == "bpf-linker").then(|| words.next().map(str::to_owned))?
}

/// PATH with `<cargo install root>/bin` appended if missing, so the builds
/// xtask starts find a bpf-linker that setup installed off PATH.
pub fn path_with_install_root() -> std::ffi::OsString {
    let bin = install_root().join("bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    if !dirs.contains(&bin) {
        dirs.push(bin);
    }
    std::env::join_paths(dirs).unwrap_or(path)
}

/// Where `cargo install` puts binaries: CARGO_INSTALL_ROOT, CARGO_HOME or ~/.cargo.
fn install_root() -> PathBuf {
    if let Some(root) = std::env::var_os("CARGO_INSTALL_ROOT") {
        return PathBuf::from(root);
    }
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        return PathBuf::from(home);
    }
    home().join(".cargo")
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

/// A folder whose lib/libLLVM.so is Debian's LLVM 22 (llvm-sys would otherwise
/// find /usr/bin/llvm-config, which is LLVM 14). Uses llvm-22-dev if present,
/// else a symlink to the versioned libLLVM.so.22.* in the cache dir.
fn llvm_prefix() -> Result<PathBuf> {
    let dev = PathBuf::from(format!("/usr/lib/llvm-{LLVM_MAJOR}"));
    if dev.join("lib/libLLVM.so").exists() {
        return Ok(dev);
    }
    let lib = find_libllvm(&["/usr/lib", "/lib"]).with_context(|| {
        format!(
            "[setup] bpf-linker: no libLLVM.so.{LLVM_MAJOR}.* found under /usr/lib/<arch>; \
             it comes with rustc-web (package libllvm{LLVM_MAJOR})"
        )
    })?;
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cache"));
    let prefix = cache.join(format!("dnstrace/llvm{LLVM_MAJOR}"));
    let link = prefix.join("lib/libLLVM.so");
    fs::create_dir_all(prefix.join("lib"))
        .with_context(|| format!("creating {}", prefix.display()))?;
    if fs::read_link(&link).ok().as_deref() != Some(lib.as_path()) {
        let _ = fs::remove_file(&link);
        symlink(&lib, &link)
            .with_context(|| format!("linking {} → {}", link.display(), lib.display()))?;
    }
    Ok(prefix)
}

/// `<dir>/<multiarch>/libLLVM.so.22.*` (the real, versioned file).
fn find_libllvm(dirs: &[&str]) -> Option<PathBuf> {
    let mut found = Vec::new();
    for dir in dirs {
        let Ok(arches) = fs::read_dir(dir) else {
            continue;
        };
        for arch in arches.flatten() {
            let Ok(files) = fs::read_dir(arch.path()) else {
                continue;
            };
            for file in files.flatten() {
                if is_versioned_libllvm(&file.file_name().to_string_lossy()) {
                    found.push(file.path());
                }
            }
        }
    }
    found.sort();
    found.into_iter().next()
}

fn is_versioned_libllvm(name: &str) -> bool {
    name.strip_prefix(&format!("libLLVM.so.{LLVM_MAJOR}."))
        .is_some_and(|rest| {
            !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        })
}

// ---- summary ----

fn summary() {
    let first_line = |program: &str, args: &[&str]| -> String {
        Command::new(program)
            .args(args)
            .output()
            .ok()
            .map(|o| {
                let text = if o.stdout.is_empty() {
                    o.stderr
                } else {
                    o.stdout
                };
                String::from_utf8_lossy(&text)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_owned()
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "MISSING".to_owned())
    };
    let core = if Path::new(BPF_CORE_DIR).is_dir() {
        BPF_CORE_DIR
    } else {
        "MISSING"
    };
    eprintln!("[setup] summary:");
    eprintln!(
        "  eBPF rustc     {} (/usr/bin/rustc)",
        first_line("/usr/bin/rustc", &["--version"])
    );
    eprintln!("  BPF core lib   {core}");
    let linker = Command::new("bpf-linker")
        .env("PATH", path_with_install_root())
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| parse_bpf_linker_version(&String::from_utf8_lossy(&o.stdout)))
        .unwrap_or_else(|| "MISSING".to_owned());
    eprintln!("  bpf-linker     {linker}");
    eprintln!("  dig            {}", first_line("dig", &["-v"]));
    eprintln!("  kdig           {}", first_line("kdig", &["--version"]));
    eprintln!("  dnsmasq        {}", first_line("dnsmasq", &["--version"]));
    eprintln!("  unbound        {}", first_line("unbound", &["-V"]));
    eprintln!("  named          {}", first_line("named", &["-v"]));
    eprintln!(
        "  iptables       {}",
        first_line("iptables", &["--version"])
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_packages_from_dpkg_query() {
        let out = "rustc-web install ok installed\n\
                   libstd-rust-web-dev-bpf:amd64 install ok installed\n\
                   unbound deinstall ok config-files\n";
        let wanted = ["rustc-web", "libstd-rust-web-dev-bpf", "unbound", "tmux"];
        assert_eq!(missing_packages(&wanted, out), ["unbound", "tmux"]);
    }

    #[test]
    fn bpf_linker_version_parsing() {
        assert_eq!(
            parse_bpf_linker_version("bpf-linker 0.13.0\n").as_deref(),
            Some("0.13.0")
        );
        assert_eq!(
            parse_bpf_linker_version("bpf-linker 0.9.13").as_deref(),
            Some("0.9.13")
        );
        assert_eq!(parse_bpf_linker_version("something else"), None);
        assert_eq!(parse_bpf_linker_version(""), None);
    }

    #[test]
    fn libllvm_names() {
        assert!(is_versioned_libllvm("libLLVM.so.22.1"));
        assert!(is_versioned_libllvm("libLLVM.so.22.1.3"));
        assert!(!is_versioned_libllvm("libLLVM-22.so"));
        assert!(!is_versioned_libllvm("libLLVM.so.21.1"));
        assert!(!is_versioned_libllvm("libLLVM.so.22."));
    }
}

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
/// Every program that xtask, the tests, the demo and the bench run, with the
/// Debian package that provides it. Setup installs these packages, then checks
/// that each program is on PATH. When code starts to run a new program (grep
/// for `Command::new`, `Lab::cmd`, `Lab::run`, `Lab::exec`), add it here; a
/// test finds programs named by a string literal of their own, but not those
/// inside a shell command line (tmux's `nsenter …; stty …`, `sh -c`).
/// Essential packages are listed too: a minimal root has them, but the check
/// then covers every program.
pub const COMMANDS: &[(&str, &str)] = &[
    // namespaces, links, qdiscs, sockets, sysctls, firewall
    ("ip", "iproute2"),
    ("tc", "iproute2"),
    ("ss", "iproute2"),
    ("sysctl", "procps"),
    ("iptables", "iptables"),
    ("ip6tables", "iptables"),
    ("conntrack", "conntrack"),
    ("bpftool", "bpftool"),
    // DNS servers and clients
    ("dnsmasq", "dnsmasq-base"),
    ("unbound", "unbound"),
    ("named", "bind9"),
    ("kresd", "knot-resolver"),
    ("dig", "bind9-dnsutils"),
    ("kdig", "knot-dnsutils"),
    ("dnsperf", "dnsperf"),
    ("python3", "python3"),
    // capture
    ("tcpdump", "tcpdump"),
    ("tshark", "tshark"),
    ("capinfos", "wireshark-common"),
    // the TUI test (under tmux), the file and privilege-drop tests, the bench report
    ("tmux", "tmux"),
    ("setpriv", "util-linux"),
    ("git", "git"),
    ("sh", "dash"),
    ("cat", "coreutils"),
    ("date", "coreutils"),
    ("nproc", "coreutils"),
    ("uname", "coreutils"),
    ("head", "coreutils"),
    ("sleep", "coreutils"),
    ("stty", "coreutils"),
    ("nsenter", "util-linux"),
    ("printf", "coreutils"),
    ("script", "bsdutils"),
    ("mkfifo", "coreutils"),
    ("env", "coreutils"),
    // the default-log test gives the TUI a terminal
    ("script", "bsdutils"),
    ("grep", "grep"),
    // setup itself, and `cargo xtask minroot`
    ("dpkg-query", "dpkg"),
    ("apt-get", "apt"),
    ("unshare", "util-linux"),
    ("mount", "mount"),
    ("chroot", "coreutils"),
    // `--metrics` scraped by a real Prometheus, queried over its HTTP API
    ("prometheus", "prometheus"),
    ("curl", "curl"),
    // `cargo xtask image` and the test that runs it
    ("podman", "podman"),
    ("ldd", "libc-bin"),
    // `cargo xtask dist` and its checks
    ("objcopy", "binutils"),
    ("readelf", "binutils"),
    ("tar", "tar"),
    ("sha256sum", "coreutils"),
    ("man", "man-db"),
    ("bash", "bash"),
    // the CRI test: a real containerd running pods, its image built from busybox-static
    ("containerd", "containerd"),
    ("ctr", "containerd"),
    ("runc", "runc"),
    ("busybox", "busybox-static"),
    // building: the CRI client's protobuf definitions (k8s-cri's build script)
    ("protoc", "protobuf-compiler"),
    // building: jemalloc, the release binary's allocator (tikv-jemalloc-sys runs its make)
    ("make", "make"),
];
/// Packages that provide something other than a program on PATH.
const LIBRARY_PACKAGES: &[&str] = &[
    // the CNI plugins (bridge, host-local, loopback) in /usr/lib/cni, for the CRI test
    "containernetworking-plugins",
    // the `dns` module of the tests' Python DNS servers and clients
    "python3-dnspython",
];
/// Run by Debian's python3 after install: the tests import this module.
const PYTHON_CHECK: &str = "import dns.message, dns.rcode";
const DEBIAN_PYTHON: &str = "/usr/bin/python3";
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
    changed |= crate::fuzz::install_cargo_fuzz()?;
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

pub(crate) fn step(what: &str, result: &str) {
    eprintln!("[setup] {what}: {result}");
}

// ---- Debian packages ----

/// The Debian packages setup installs: the toolchain, each program's package
/// (once), and the library packages.
fn wanted_packages() -> Vec<&'static str> {
    let mut wanted: Vec<&str> = TOOLCHAIN_PACKAGES.to_vec();
    for &(_, package) in COMMANDS {
        if !wanted.contains(&package) {
            wanted.push(package);
        }
    }
    wanted.extend(LIBRARY_PACKAGES);
    wanted
}

fn apt_packages() -> Result<bool> {
    let wanted = wanted_packages();
    if Command::new("dpkg-query")
        .arg("--version")
        .output()
        .is_err()
    {
        bail!(
            "[setup] apt packages: dpkg-query not found; setup supports Debian 12 (bookworm) only. \
             Install by hand: {} and bpf-linker {BPF_LINKER_VERSION}",
            wanted.join(" ")
        );
    }
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\\n"])
        .args(&wanted)
        .output()
        .context("running dpkg-query")?;
    // Exit status 1 just means some package is unknown to dpkg; stdout lists the rest.
    let missing = missing_packages(&wanted, &String::from_utf8_lossy(&out.stdout));
    if missing.is_empty() {
        check_installed()?;
        step(
            "apt packages",
            &format!(
                "ok (already installed: {}; all {} programs on PATH)",
                wanted.len(),
                COMMANDS.len()
            ),
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
    check_installed()?;
    if missing.contains(&"containerd") {
        keep_containerd_off_at_boot();
    }
    step(
        "apt packages",
        &format!(
            "ok (installed {}; all {} programs on PATH)",
            missing.len(),
            COMMANDS.len()
        ),
    );
    Ok(true)
}

/// Fails, naming each program and its package, unless every program of
/// [`COMMANDS`] is on PATH and Debian's python3 imports the tests' module.
fn check_installed() -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    let mut problems = missing_programs(&dirs);
    let imports = Command::new(DEBIAN_PYTHON)
        .args(["-c", PYTHON_CHECK])
        .output()
        .is_ok_and(|o| o.status.success());
    if !imports {
        problems.push(format!(
            "the Python module `dns` for {DEBIAN_PYTHON} (package python3-dnspython)"
        ));
    }
    if !problems.is_empty() {
        bail!(
            "[setup] missing after install: {}; PATH is {}",
            problems.join(", "),
            path.to_string_lossy()
        );
    }
    Ok(())
}

/// "`sysctl` (package procps)" for each program of [`COMMANDS`] not in `dirs`.
fn missing_programs(dirs: &[PathBuf]) -> Vec<String> {
    COMMANDS
        .iter()
        .filter(|(program, _)| find_program(program, dirs).is_none())
        .map(|(program, package)| format!("`{program}` (package {package})"))
        .collect()
}

/// The first executable file named `program` in `dirs`, as a shell finds it.
fn find_program(program: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    dirs.iter().map(|dir| dir.join(program)).find(|candidate| {
        fs::metadata(candidate).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
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

/// The CRI test runs a containerd of its own. The package enables the system's at boot
/// (policy-rc.d only kept it from starting now): on a systemd host that setup just
/// installed it on, it stays off.
fn keep_containerd_off_at_boot() {
    if !Path::new("/run/systemd/system").exists() {
        return;
    }
    let disabled = Command::new("systemctl")
        .args(["disable", "containerd.service"])
        .output()
        .is_ok_and(|o| o.status.success());
    step(
        "containerd service",
        if disabled {
            "disabled at boot (setup installed it for the tests only)"
        } else {
            "could not disable it at boot (systemctl disable containerd.service failed)"
        },
    );
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

/// Folders a root shell normally has on PATH; a minimal root's PATH (a
/// `chroot`, `su` without `-`) may lack them, and most of [`COMMANDS`] live there.
const SBIN_DIRS: &[&str] = &["/usr/local/sbin", "/usr/sbin", "/sbin"];

/// PATH with the sbin folders and `<cargo install root>/bin` appended if
/// missing, so xtask and every program it starts find the lab's tools and a
/// bpf-linker that setup installed off PATH. `main` sets it for the process.
pub fn path_with_install_root() -> std::ffi::OsString {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    let extra = SBIN_DIRS
        .iter()
        .map(PathBuf::from)
        .chain([install_root().join("bin")]);
    for dir in extra {
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    std::env::join_paths(dirs).unwrap_or(path)
}

/// Where `cargo install` puts binaries: CARGO_INSTALL_ROOT, CARGO_HOME or ~/.cargo.
pub(crate) fn install_root() -> PathBuf {
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
    eprintln!("  kresd          {}", first_line("kresd", &["--version"]));
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

/// Checks [`COMMANDS`] against the sources: a program that the code starts to
/// run must not be left to chance on a minimal root.
#[cfg(test)]
mod commands_table {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    /// Strings in the sources that name a program on a Debian machine but are
    /// not run as one: link kinds, JSON fields, subcommands, flags, messages.
    /// And two that are run but not installed by setup: `cargo` runs xtask,
    /// `cargo xtask minroot` installs `debootstrap` itself.
    const NOT_RUN: &[&str] = &[
        "bridge",
        "cargo",
        "comm",
        "cut",
        "debootstrap",
        "dir",
        "echo",
        // `podman inspect`'s answer ("false") and `podman rm`, not programs run
        "false",
        "id",
        "init",
        "install",
        "last",
        "link",
        "nl",
        "node",
        // run inside the CRI test's containers (a busybox applet), not on the host
        "nslookup",
        // setup runs it only on a systemd host, which a minimal root is not
        "systemctl",
        "rm",
        "route",
        "rustc",
        "setcap",
        "test",
        "time",
        "watch",
        "yes",
    ];
    /// Where Debian's packages put programs (not /usr/local: whatever else
    /// this machine holds there is none of setup's business).
    const BIN_DIRS: &[&str] = &["/usr/sbin", "/usr/bin", "/sbin", "/bin"];
    const MEMBERS: &[&str] = &[
        "dnstrace",
        "dnstrace-common",
        "dnstrace-ebpf",
        "tests",
        "xtask",
    ];

    /// Every string literal in the workspace's Rust sources that names a
    /// program in this machine's bin folders is in COMMANDS or in NOT_RUN.
    /// Literals that cannot be a program are left out: an `expect` message,
    /// the side of a comparison, and in the dnstrace crates (which run no
    /// program today) anything but `Command::new("…")`. This table itself
    /// (this file) is not scanned.
    #[test]
    fn every_program_named_in_the_sources_is_in_commands() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask sits in the workspace");
        let this = root.join(file!());
        let mut files = Vec::new();
        for member in MEMBERS {
            rust_files(&root.join(member), &mut files);
        }
        assert!(files.len() > 20, "found only {} .rs files", files.len());
        let mut unlisted: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        let mut texts = Vec::new();
        for file in files.iter().filter(|f| **f != this) {
            texts.push((file, fs::read_to_string(file).expect("reading a source")));
        }
        for (file, text) in &texts {
            let rel = file.strip_prefix(root).unwrap_or(file);
            let product = rel.starts_with("dnstrace")
                || rel.starts_with("dnstrace-common")
                || rel.starts_with("dnstrace-ebpf");
            for (at, literal) in string_literals(text) {
                let before = text[..at].trim_end();
                let may_run = if product {
                    before.ends_with("Command::new(")
                } else {
                    !(before.ends_with("expect(")
                        || before.ends_with("==")
                        || before.ends_with("!="))
                };
                let named = may_run
                    && is_program_name(literal)
                    && !COMMANDS.iter().any(|(program, _)| *program == literal)
                    && !NOT_RUN.contains(&literal)
                    && BIN_DIRS
                        .iter()
                        .any(|d| Path::new(d).join(literal).is_file());
                if named {
                    unlisted
                        .entry(literal)
                        .or_default()
                        .insert(rel.display().to_string());
                }
            }
        }
        assert!(
            unlisted.is_empty(),
            "these strings name programs on this machine: if the code runs one, add it with \
             its Debian package to COMMANDS in xtask/src/setup.rs, else to NOT_RUN there: \
             {unlisted:?}"
        );
    }

    #[test]
    fn finds_literals_past_chars_lifetimes_comments_and_raw_strings() {
        let src = r###"fn f<'a>(x: &'a str) { let q = '"'; let e = '\''; // "nope"
            /* "no" */ run(&["sysctl", "-w"]); let s = r#"say "hi""#; g("a\"b", b"c") }"###;
        let found: Vec<&str> = string_literals(src).into_iter().map(|(_, s)| s).collect();
        assert_eq!(found, ["sysctl", "-w", r#"say "hi""#, r#"a\"b"#, "c"]);
        let (at, _) = string_literals(src)[0];
        assert!(src[..at].ends_with("run(&["));
    }

    #[test]
    fn path_gets_the_sbin_folders() {
        let path = path_with_install_root();
        let dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
        for dir in SBIN_DIRS {
            assert!(dirs.contains(&PathBuf::from(dir)), "{dir} not in {path:?}");
        }
    }

    #[test]
    fn finds_programs_like_a_shell() {
        let dirs = [PathBuf::from("/nonexistent"), PathBuf::from("/bin")];
        assert_eq!(find_program("sh", &dirs), Some(PathBuf::from("/bin/sh")));
        assert_eq!(find_program("no-such-program-here", &dirs), None);
        // A folder and a file without execute permission do not count.
        assert_eq!(find_program("etc", &[PathBuf::from("/")]), None);
        assert_eq!(find_program("passwd", &[PathBuf::from("/etc")]), None);
    }

    #[test]
    fn missing_programs_are_named_with_their_package() {
        let none = missing_programs(&[PathBuf::from("/nonexistent")]);
        assert_eq!(none.len(), COMMANDS.len());
        assert!(none.contains(&"`sysctl` (package procps)".to_owned()));
        let usr_sbin = missing_programs(&[PathBuf::from("/usr/bin"), PathBuf::from("/bin")]);
        assert!(
            usr_sbin.contains(&"`sysctl` (package procps)".to_owned()),
            "sysctl lives in /usr/sbin: {usr_sbin:?}"
        );
    }

    #[test]
    fn each_package_is_installed_once() {
        let wanted = wanted_packages();
        let unique: BTreeSet<&str> = wanted.iter().copied().collect();
        assert_eq!(unique.len(), wanted.len(), "{wanted:?}");
        assert!(wanted.contains(&"procps") && wanted.contains(&"python3-dnspython"));
    }

    fn is_program_name(s: &str) -> bool {
        s.len() <= 32
            && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.+-".contains(&b))
    }

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// The string literals in Rust source `src`: where each starts (its quote,
    /// or its `r`) and its contents (escapes left as written), skipping
    /// comments and char literals.
    fn string_literals(src: &str) -> Vec<(usize, &str)> {
        let b = src.as_bytes();
        let ident = |i: usize| b[i].is_ascii_alphanumeric() || b[i] == b'_';
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'/' if b.get(i + 1) == Some(&b'/') => {
                    i = src[i..].find('\n').map_or(b.len(), |n| i + n);
                }
                b'/' if b.get(i + 1) == Some(&b'*') => {
                    i = src[i + 2..].find("*/").map_or(b.len(), |n| i + 2 + n + 2);
                }
                b'\'' if b.get(i + 1) == Some(&b'\\') => {
                    // '\n', '\'', '\u{..}': the closing quote after the escaped char.
                    i = src[i + 3..].find('\'').map_or(b.len(), |n| i + 3 + n + 1);
                }
                b'\'' => {
                    let len = src[i + 1..].chars().next().map_or(1, char::len_utf8);
                    // 'x' is a char; 'a without a closing quote is a lifetime.
                    i += if b.get(i + 1 + len) == Some(&b'\'') {
                        len + 2
                    } else {
                        1
                    };
                }
                b'r' if (i == 0
                    || !ident(i - 1)
                    || (b[i - 1] == b'b' && (i < 2 || !ident(i - 2))))
                    && src[i + 1..].trim_start_matches('#').starts_with('"') =>
                {
                    let hashes = src[i + 1..].len() - src[i + 1..].trim_start_matches('#').len();
                    let start = i + 1 + hashes + 1;
                    let close = format!("\"{}", "#".repeat(hashes));
                    let end = src[start..].find(&close).map_or(b.len(), |n| start + n);
                    out.push((i, &src[start..end]));
                    i = end + close.len();
                }
                b'"' => {
                    let (quote, start) = (i, i + 1);
                    i = start;
                    while i < b.len() && b[i] != b'"' {
                        i += if b[i] == b'\\' { 2 } else { 1 };
                    }
                    out.push((quote, &src[start..i.min(b.len())]));
                    i += 1;
                }
                _ => i += 1,
            }
        }
        out
    }
}

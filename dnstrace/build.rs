//! Builds the kernel programs in `dnstrace-ebpf` for bpfel-unknown-none.
//!
//! Default route (see TOOLCHAIN in the README): Debian's `rustc-web` in /usr,
//! which ships a precompiled `core` for the BPF target, so neither nightly nor
//! rust-src is needed. `DNSTRACE_EBPF_TOOLCHAIN=nightly` (any rustup toolchain
//! name or a folder holding bin/rustc and bin/cargo) selects another one; with a
//! nightly that has rust-src, also set `RUSTC_BOOTSTRAP=1` to get build-std.
use aya_build::{Package, Toolchain};

const TOOLCHAIN_ENV: &str = "DNSTRACE_EBPF_TOOLCHAIN";

fn main() -> anyhow::Result<()> {
    commit();
    println!("cargo:rerun-if-env-changed={TOOLCHAIN_ENV}");
    println!("cargo:rerun-if-env-changed=RUSTC_BOOTSTRAP");
    let toolchain = std::env::var(TOOLCHAIN_ENV).unwrap_or_else(|_| "/usr".to_owned());
    if toolchain == "/usr" && !std::path::Path::new("/usr/lib/rustlib/bpfel-unknown-none").exists()
    {
        anyhow::bail!(
            "the BPF core library is missing: run `cargo xtask setup` (installs rustc-web, \
             cargo-web, libstd-rust-web-dev-bpf and bpf-linker), or set {TOOLCHAIN_ENV} to a \
             nightly toolchain with rust-src"
        );
    }
    if std::env::var_os("RUSTC_BOOTSTRAP").is_none() {
        // aya-ebpf needs one unstable feature; enabling it for that crate alone keeps
        // aya-build from asking for build-std, which this route cannot do.
        // SAFETY: build scripts are single-threaded at this point.
        unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "aya_ebpf") };
    }
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../dnstrace-ebpf");
    let package = Package {
        name: "dnstrace-ebpf",
        root_dir: root,
        ..Default::default()
    };
    let toolchain: &'static str = Box::leak(toolchain.into_boxed_str());
    aya_build::build_ebpf([package], Toolchain::Custom(toolchain))
}

/// `DNSTRACE_COMMIT` for `--version`: the commit checked out when the source was
/// built (uncommitted changes are not noted: the script does not rerun for every
/// edit), or "unknown commit" outside a git checkout (a source tarball) or without git. `DNSTRACE_COMMIT` in the
/// environment wins (for builds from an export).
fn commit() {
    println!("cargo:rerun-if-env-changed=DNSTRACE_COMMIT");
    let git = |args: &[&str]| -> Option<String> {
        let out = std::process::Command::new("git")
            .args(["-C", env!("CARGO_MANIFEST_DIR")])
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let commit = std::env::var("DNSTRACE_COMMIT").ok().or_else(|| {
        let head = git(&["rev-parse", "--short=12", "HEAD"])?;
        // Build again when HEAD moves or the branch it names gets a new commit.
        for path in ["HEAD", "packed-refs"] {
            if let Some(p) = git(&["rev-parse", "--path-format=absolute", "--git-path", path]) {
                println!("cargo:rerun-if-changed={p}");
            }
        }
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"])
            && let Some(p) = git(&["rev-parse", "--path-format=absolute", "--git-path", &branch])
        {
            println!("cargo:rerun-if-changed={p}");
        }
        Some(head)
    });
    println!(
        "cargo:rustc-env=DNSTRACE_COMMIT={}",
        commit.as_deref().unwrap_or("unknown commit")
    );
}

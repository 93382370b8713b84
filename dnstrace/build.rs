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

//! dnstrace kernel programs: see programs.rs. Only the BPF build has content;
//! a host build (e.g. `cargo clippy --workspace`) gets an empty binary.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
mod programs;

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!(
        "dnstrace-ebpf only holds kernel programs; dnstrace's build.rs builds them for bpfel-unknown-none"
    );
}

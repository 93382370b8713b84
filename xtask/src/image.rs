//! `cargo xtask image`: the container image, built with podman from a base made
//! here (no registry is reachable): `deploy/Containerfile` over a root holding
//! the stripped release binary of `cargo xtask dist`, the shared libraries it
//! links (found with ldd), and an empty /tmp.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{run_visible, workspace_root};

/// What was built.
pub struct Image {
    /// `localhost/dnstrace:VERSION`.
    pub tag: String,
    pub bytes: u64,
}

pub fn run() -> Result<()> {
    let dist = crate::dist::build_checked(&crate::target_dir().join("dist"))?;
    let image = build(&dist.tree.join("bin/dnstrace"))?;
    eprintln!(
        "[image] {} ({:.1} MiB); run it as deploy/daemonset.yaml does, e.g.\n  \
         podman run --rm --network host --pid host --cgroupns private \
         --cap-drop all --cap-add BPF,PERFMON,NET_ADMIN,SYS_PTRACE \
         --security-opt seccomp=unconfined -v /sys/fs/cgroup:/sys/fs/cgroup:ro {} watch --auto --output text",
        image.tag,
        image.bytes as f64 / (1024.0 * 1024.0),
        image.tag
    );
    Ok(())
}

/// The libraries `bin` loads, as absolute paths (`ldd`'s "=> /path" and the loader).
fn libraries(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .context("cannot run ldd (package libc-bin)")?;
    if !out.status.success() {
        bail!(
            "ldd {}: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// Builds `localhost/dnstrace:VERSION` from the stripped binary `bin`.
pub fn build(bin: &Path) -> Result<Image> {
    let version = crate::dist::version_number(bin)?;
    let context = crate::target_dir().join("image");
    if context.exists() {
        std::fs::remove_dir_all(&context)
            .with_context(|| format!("removing {}", context.display()))?;
    }
    let rootfs = context.join("rootfs");
    std::fs::create_dir_all(rootfs.join("usr/bin"))?;
    std::fs::copy(bin, rootfs.join("usr/bin/dnstrace"))
        .with_context(|| format!("copying {}", bin.display()))?;
    for lib in libraries(bin)? {
        let to = rootfs.join(lib.strip_prefix("/").unwrap_or(&lib));
        std::fs::create_dir_all(to.parent().context("library folder")?)?;
        // Follow symlinks: the image holds the files themselves.
        std::fs::copy(&lib, &to).with_context(|| format!("copying {}", lib.display()))?;
    }
    let tmp = rootfs.join("tmp");
    std::fs::create_dir_all(&tmp)?;
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o1777))?;
    let tag = format!("localhost/dnstrace:{version}");
    let containerfile = workspace_root().join("deploy/Containerfile");
    eprintln!("[image] podman build -t {tag}");
    run_visible(
        "podman build",
        Command::new("podman")
            .args(["build", "--pull=never", "--quiet", "-t", &tag, "-f"])
            .arg(&containerfile)
            .arg(&context),
    )?;
    let size = Command::new("podman")
        .args(["image", "inspect", "--format", "{{.Size}}", &tag])
        .output()
        .context("podman image inspect")?;
    let bytes = String::from_utf8_lossy(&size.stdout)
        .trim()
        .parse()
        .context("podman image inspect printed no size")?;
    Ok(Image { tag, bytes })
}

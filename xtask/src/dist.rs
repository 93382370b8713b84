//! `cargo xtask dist`: the release artifacts, built and then checked.
//!
//! In `target/dist/` (or `--out DIR`):
//! - `dnstrace-VERSION-ARCH-linux.tar.gz`: `bin/dnstrace` (release, stripped,
//!   with a `.gnu_debuglink` to the debug file), shell completions (bash, zsh,
//!   fish), man pages, README.md and both license texts;
//! - `dnstrace-VERSION-ARCH-linux.debug`: the debug info split off the binary
//!   (`gdb` and `perf` find it through the debug link when it sits beside the
//!   binary or in /usr/lib/debug);
//! - `SHA256SUMS` for both.
//!
//! Every run ends by checking what it made (`verify`): the binary carries no
//! DWARF, its debug link names the debug file and matches its CRC, `--version`
//! names the commit, the completions load in bash, the man pages are roff that
//! `man` renders, and the checksums hold. `cargo xtask test` runs it too.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail, ensure};

use crate::{cargo, fmt_duration, run_visible, workspace_root};

#[derive(clap::Args)]
pub struct Args {
    /// Where to write the artifacts (default: target/dist).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// What a dist run made.
pub struct Artifacts {
    pub archive: PathBuf,
    pub debug: PathBuf,
    pub sums: PathBuf,
    /// The unpacked tree the archive was made from.
    pub tree: PathBuf,
}

pub fn run(args: &Args) -> Result<()> {
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| crate::target_dir().join("dist"));
    let t = Instant::now();
    build_checked(&out)?;
    eprintln!("[dist] done in {}", fmt_duration(t.elapsed()));
    Ok(())
}

/// The whole dist into `out`, then its checks (`cargo xtask test` and `image` use it).
pub fn build_checked(out: &Path) -> Result<Artifacts> {
    let a = build(out)?;
    let report = verify(&a)?;
    eprintln!("{report}");
    Ok(a)
}

/// "0.1.0" from `BIN --version` ("dnstrace 0.1.0 (0123456789ab)").
pub fn version_number(bin: &Path) -> Result<String> {
    let version = tool(path_str(bin)?, &["--version"])?;
    Ok(version
        .split_whitespace()
        .nth(1)
        .context("dnstrace --version printed no version")?
        .to_owned())
}

fn tool(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program} (cargo xtask setup installs it)"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

fn build(out: &Path) -> Result<Artifacts> {
    eprintln!("[dist] building dnstrace (release)");
    run_visible(
        "cargo build --release -p dnstrace",
        cargo().args(["build", "--release", "-p", "dnstrace"]),
    )?;
    let built = crate::target_dir().join("release/dnstrace");
    let number = version_number(&built)?;
    let arch = std::env::consts::ARCH;
    let name = format!("dnstrace-{number}-{arch}-linux");
    let tree = out.join(&name);
    if tree.exists() {
        std::fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))?;
    }
    for dir in ["bin", "completions", "man/man1"] {
        std::fs::create_dir_all(tree.join(dir))
            .with_context(|| format!("creating {}", tree.join(dir).display()))?;
    }
    let bin = tree.join("bin/dnstrace");
    let debug = out.join(format!("{name}.debug"));
    // The debug info goes to its own file; the binary keeps a link to it.
    tool(
        "objcopy",
        &["--only-keep-debug", path_str(&built)?, path_str(&debug)?],
    )?;
    std::fs::copy(&built, &bin).with_context(|| format!("copying to {}", bin.display()))?;
    // The link must name the file as it will sit beside the binary.
    let link = tree
        .join("bin")
        .join(debug.file_name().context("the debug file has no name")?);
    std::fs::copy(&debug, &link)?;
    let linked = tool(
        "sh",
        &[
            "-c",
            "cd \"$1\" && objcopy --strip-all --add-gnu-debuglink=\"$2\" dnstrace",
            "sh",
            path_str(&tree.join("bin"))?,
            path_str(Path::new(link.file_name().context("no name")?))?,
        ],
    );
    std::fs::remove_file(&link)?;
    linked?;
    for (shell, file) in [
        ("bash", "dnstrace.bash"),
        ("zsh", "_dnstrace"),
        ("fish", "dnstrace.fish"),
    ] {
        let script = tool(path_str(&bin)?, &["completions", shell])?;
        std::fs::write(tree.join("completions").join(file), script)?;
    }
    tool(path_str(&bin)?, &["man", path_str(&tree.join("man/man1"))?])?;
    let root = workspace_root();
    for file in ["README.md", "LICENSE-MIT", "LICENSE-APACHE"] {
        std::fs::copy(root.join(file), tree.join(file))
            .with_context(|| format!("copying {file}"))?;
    }
    let archive = out.join(format!("{name}.tar.gz"));
    // Owner, group and times fixed: the same tree gives the same archive bytes.
    tool(
        "tar",
        &[
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--mtime=@0",
            "-czf",
            path_str(&archive)?,
            "-C",
            path_str(out)?,
            &name,
        ],
    )?;
    let sums = out.join("SHA256SUMS");
    let listed = tool(
        "sh",
        &[
            "-c",
            "cd \"$1\" && sha256sum \"$2\" \"$3\"",
            "sh",
            path_str(out)?,
            &format!("{name}.tar.gz"),
            &format!("{name}.debug"),
        ],
    )?;
    std::fs::write(&sums, listed)?;
    Ok(Artifacts {
        archive,
        debug,
        sums,
        tree,
    })
}

/// The section names of an ELF file (`readelf -S -W`).
fn sections(path: &Path) -> Result<Vec<String>> {
    let text = tool("readelf", &["-S", "-W", path_str(path)?])?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let rest = l.strip_prefix('[')?;
            let (_, after) = rest.split_once(']')?;
            after.split_whitespace().next().map(str::to_owned)
        })
        .collect())
}

/// Checks every artifact; returns a report of sizes and what was checked.
pub fn verify(a: &Artifacts) -> Result<String> {
    let bin = a.tree.join("bin/dnstrace");
    let names = sections(&bin)?;
    // `.debug_gdb_scripts` is loaded data (names of gdb pretty-printer scripts), not DWARF.
    let dwarf: Vec<&String> = names
        .iter()
        .filter(|s| s.starts_with(".debug_") && *s != ".debug_gdb_scripts")
        .collect();
    ensure!(
        dwarf.is_empty(),
        "{} still has debug sections: {dwarf:?}",
        bin.display()
    );
    ensure!(
        names.iter().any(|s| s == ".gnu_debuglink"),
        "{} has no .gnu_debuglink",
        bin.display()
    );
    let debug_sections = sections(&a.debug)?;
    ensure!(
        debug_sections.iter().any(|s| s == ".debug_info"),
        "{} holds no .debug_info: {debug_sections:?}",
        a.debug.display()
    );
    // The link names the debug file, and its CRC matches: gdb loads it.
    let link = tool(
        "readelf",
        &["--string-dump=.gnu_debuglink", path_str(&bin)?],
    )?;
    let debug_name = a
        .debug
        .file_name()
        .and_then(|n| n.to_str())
        .context("debug file name")?;
    ensure!(
        link.contains(debug_name),
        "the debug link does not name {debug_name}: {link}"
    );
    // The section: the file name, NUL-padded to 4 bytes, then the CRC-32 of the debug file.
    let dumped = a.tree.join("debuglink.section");
    let scratch = a.tree.join("debuglink.elf");
    let dump = tool(
        "objcopy",
        &[
            "--dump-section",
            &format!(".gnu_debuglink={}", path_str(&dumped)?),
            path_str(&bin)?,
            path_str(&scratch)?,
        ],
    );
    let section = std::fs::read(&dumped);
    let _ = std::fs::remove_file(&dumped);
    let _ = std::fs::remove_file(&scratch);
    dump?;
    let section = section.context("reading the dumped .gnu_debuglink")?;
    let crc = section
        .len()
        .checked_sub(4)
        .map(|at| u32::from_le_bytes(section[at..].try_into().expect("4 bytes")))
        .context("the .gnu_debuglink section is too short")?;
    let want = crc32fast::hash(&std::fs::read(&a.debug)?);
    ensure!(
        crc == want,
        "the debug link's CRC {crc:#010x} is not the debug file's {want:#010x}"
    );
    // `--version` names the commit this checkout is at.
    let version = tool(path_str(&bin)?, &["--version"])?;
    let head = tool(
        "git",
        &[
            "-C",
            path_str(&workspace_root())?,
            "rev-parse",
            "--short=12",
            "HEAD",
        ],
    )?;
    ensure!(
        version.contains(head.trim()),
        "--version says {version:?}, HEAD is {}",
        head.trim()
    );
    // The stripped binary still runs.
    tool(path_str(&bin)?, &["--help"])?;
    // Completions: bash loads the script and registers the function.
    let bash = a.tree.join("completions/dnstrace.bash");
    let registered = tool(
        "bash",
        &[
            "-c",
            "source \"$1\" && complete -p dnstrace",
            "bash",
            path_str(&bash)?,
        ],
    )?;
    ensure!(
        registered.contains("dnstrace"),
        "bash did not register a completion: {registered}"
    );
    for file in ["_dnstrace", "dnstrace.fish"] {
        let text = std::fs::read_to_string(a.tree.join("completions").join(file))?;
        ensure!(
            text.contains("watch") && text.contains("replay"),
            "{file} lacks the commands"
        );
    }
    // Man pages: roff that man renders, one per command.
    let mut pages = Vec::new();
    for page in [
        "dnstrace",
        "dnstrace-watch",
        "dnstrace-replay",
        "dnstrace-cleanup",
    ] {
        let path = a.tree.join(format!("man/man1/{page}.1"));
        let text = tool(
            "man",
            &["--local-file", "--no-hyphenation", path_str(&path)?],
        )?;
        ensure!(
            text.contains("SYNOPSIS") && text.contains("dnstrace"),
            "{page}.1 rendered as: {text}"
        );
        pages.push(page);
    }
    // The checksums hold, and the archive holds the tree.
    let out = a.sums.parent().context("SHA256SUMS folder")?;
    tool(
        "sh",
        &[
            "-c",
            "cd \"$1\" && sha256sum --check --strict SHA256SUMS",
            "sh",
            path_str(out)?,
        ],
    )?;
    let listing = tool("tar", &["-tzf", path_str(&a.archive)?])?;
    for want in [
        "bin/dnstrace",
        "completions/dnstrace.bash",
        "man/man1/dnstrace.1",
        "LICENSE-MIT",
        "LICENSE-APACHE",
        "README.md",
    ] {
        ensure!(
            listing.lines().any(|l| l.ends_with(want)),
            "{} lacks {want}",
            a.archive.display()
        );
    }
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mib = |n: u64| n as f64 / (1024.0 * 1024.0);
    let unstripped = size(&crate::target_dir().join("release/dnstrace"));
    Ok(format!(
        "[dist] {}\n\
         [dist]   binary {:.1} MiB stripped (release build {:.1} MiB), debug file {:.1} MiB, archive {:.1} MiB\n\
         [dist]   checked: no DWARF in the binary, debug link to {debug_name}, `{}`, \
         bash completion loads, man renders {}, SHA256SUMS holds",
        a.archive.display(),
        mib(size(&bin)),
        mib(unstripped),
        mib(size(&a.debug)),
        mib(size(&a.archive)),
        version.trim(),
        pages.join(", "),
    ))
}

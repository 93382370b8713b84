//! [`Tracer`]: the real `dnstrace watch --output json --packets` running in
//! one of a lab's namespaces, and the records it wrote ([`Trace`]).
//!
//! ```no_run
//! # use dnstrace_tests::{Node, Signal, Tracer};
//! # fn main() -> anyhow::Result<()> {
//! let node = Node::new("doc")?;
//! let tracer = Tracer::start(&node.lab, &node.node_ns, "trace", &["--auto"])?;
//! // … send queries …
//! let lookups = tracer.wait_lookups(|l| l["qname"] == "www.example.test.", 1, std::time::Duration::from_secs(10))?;
//! let trace = tracer.stop(Signal::Int)?;
//! # Ok(()) }
//! ```

use std::{
    collections::BTreeMap,
    ffi::OsStr,
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{
    dnstrace_bin,
    lab::{Lab, Proc, Signal},
};

const READY_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_GRACE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

/// A dnstrace process in one of the lab's namespaces, writing JSON lines to
/// `<lab dir>/<name>.jsonl` (stderr: `<name>.err`).
pub struct Tracer<'a> {
    lab: &'a Lab,
    /// The dnstrace process (a [`Lab`] process: it is killed with the lab at the latest).
    pub proc: Proc,
    /// Its JSON lines.
    pub out: PathBuf,
    /// Its stderr.
    pub err: PathBuf,
}

/// Everything a tracer wrote, by record type, in order.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    /// `{"type":"packet"}`: every captured packet (the tracer runs with `--packets`).
    pub packets: Vec<Value>,
    /// `{"type":"lookup"}`: one per finished client lookup, with its verdict.
    pub lookups: Vec<Value>,
    /// `{"type":"summary"}`: the end-of-run counters.
    pub summary: Value,
    /// What dnstrace printed on stderr.
    pub stderr: String,
}

impl<'a> Tracer<'a> {
    /// Starts `dnstrace watch --output json --packets --ready-file … <args>`
    /// (the binary named by `DNSTRACE_BIN`) in `ns`, entered with setns(2)
    /// only (see [`Lab::cmd_setns`]), and waits until it has attached.
    /// `name` names its files and must be unique within the lab.
    pub fn start(lab: &'a Lab, ns: &str, name: &str, args: &[&str]) -> Result<Tracer<'a>> {
        Tracer::launch(lab, ns, name, &[], true, args)
    }

    /// Like [`Tracer::start`], run through `wrapper` (a program and its
    /// arguments, e.g. `unshare --cgroup …`), which gets the tracer's command
    /// line as its last arguments.
    pub fn start_wrapped(
        lab: &'a Lab,
        ns: &str,
        name: &str,
        wrapper: &[&OsStr],
        args: &[&str],
    ) -> Result<Tracer<'a>> {
        Tracer::launch(lab, ns, name, wrapper, true, args)
    }

    /// Like [`Tracer::start`] without `--packets`: only lookups, upstream
    /// tables and the summary (under load, every packet would be several
    /// hundred MB of JSON).
    pub fn start_lookups(lab: &'a Lab, ns: &str, name: &str, args: &[&str]) -> Result<Tracer<'a>> {
        Tracer::launch(lab, ns, name, &[], false, args)
    }

    fn launch(
        lab: &'a Lab,
        ns: &str,
        name: &str,
        wrapper: &[&OsStr],
        packets: bool,
        args: &[&str],
    ) -> Result<Tracer<'a>> {
        let bin = dnstrace_bin().context("DNSTRACE_BIN names no dnstrace binary")?;
        let out = lab.dir().join(format!("{name}.jsonl"));
        let err = lab.dir().join(format!("{name}.err"));
        let ready = lab.dir().join(format!("{name}.ready"));
        let _ = fs::remove_file(&ready);
        let mut cmd = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut cmd = lab.cmd_setns(ns, program)?;
                cmd.args(wrapper_args).arg(&bin);
                cmd
            }
            None => lab.cmd_setns(ns, &bin)?,
        };
        cmd.args(["watch", "--output", "json"]);
        if packets {
            cmd.arg("--packets");
        }
        cmd.arg("--ready-file")
            .arg(&ready)
            .args(args)
            .stdout(File::create(&out).with_context(|| format!("creating {}", out.display()))?)
            .stderr(File::create(&err).with_context(|| format!("creating {}", err.display()))?)
            .stdin(Stdio::null());
        let proc = lab.spawn(name, cmd)?;
        let tracer = Tracer {
            lab,
            proc,
            out,
            err,
        };
        lab.wait_for_file(&tracer.proc, &ready, READY_TIMEOUT)
            .with_context(|| format!("dnstrace never became ready: {}", tracer.stderr()))?;
        Ok(tracer)
    }

    /// What it has printed on stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// The records written so far (the last line may be incomplete: it is skipped).
    pub fn records(&self) -> Vec<Value> {
        let text = fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// The finished lookups written so far.
    pub fn lookups(&self) -> Vec<Value> {
        self.records()
            .into_iter()
            .filter(|r| r["type"] == "lookup")
            .collect()
    }

    /// Waits up to `timeout` until at least `n` finished lookups satisfy `want`, and
    /// returns those. A lookup ends when it is answered, or when the tracer's
    /// `--timeout` (default 5 s) has passed after the client's last try; before
    /// that, a stopped tracer reports it as `unknown`.
    pub fn wait_lookups(
        &self,
        want: impl Fn(&Value) -> bool,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<Value>> {
        self.wait_records("lookup", want, n, timeout)
    }

    /// Waits up to [`READY_TIMEOUT`] for a packet record that `want` accepts.
    pub fn wait_packet(&self, want: impl Fn(&Value) -> bool) -> Result<Value> {
        let mut found = self.wait_records("packet", want, 1, READY_TIMEOUT)?;
        Ok(found.swap_remove(0))
    }

    fn wait_records(
        &self,
        kind: &str,
        want: impl Fn(&Value) -> bool,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        let of_kind = || {
            self.records()
                .into_iter()
                .filter(|r| r["type"] == kind)
                .collect::<Vec<_>>()
        };
        loop {
            let found: Vec<Value> = of_kind().into_iter().filter(|r| want(r)).collect();
            if found.len() >= n.max(1) {
                return Ok(found);
            }
            if let Some(status) = self.lab.status(&self.proc)? {
                bail!("dnstrace exited ({status}) first: {}", self.stderr());
            }
            if Instant::now() >= deadline {
                let seen: Vec<String> = of_kind()
                    .iter()
                    .map(|r| {
                        if kind == "lookup" {
                            one_line(r)
                        } else {
                            r.to_string()
                        }
                    })
                    .collect();
                bail!(
                    "{} of {n} matching {kind}s within {timeout:?}; {kind}s so far:\n{}",
                    found.len(),
                    seen.join("\n")
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Stops it with `signal`, checks that it exited 0 and returns what it wrote.
    pub fn stop(self, signal: Signal) -> Result<Trace> {
        let status = self.lab.stop(&self.proc, signal, STOP_GRACE)?;
        let stderr = self.stderr();
        if !status.success() {
            bail!("dnstrace exited with {status}: {stderr}");
        }
        let text = fs::read_to_string(&self.out)
            .with_context(|| format!("reading {}", self.out.display()))?;
        Trace::parse(&text, stderr)
    }
}

/// `dnstrace replay --output json <args> FILE` (no privileges needed): what it
/// wrote, once it has exited 0.
pub fn replay(file: &Path, args: &[&str]) -> Result<Trace> {
    let bin = dnstrace_bin().context("DNSTRACE_BIN names no dnstrace binary")?;
    let out = Command::new(bin)
        .args(["replay", "--output", "json"])
        .args(args)
        .arg(file)
        .output()
        .context("running dnstrace replay")?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!(
            "replay of {} exited with {}: {stderr}",
            file.display(),
            out.status
        );
    }
    Trace::parse(&String::from_utf8_lossy(&out.stdout), stderr)
}

impl Trace {
    /// Sorts dnstrace's JSON lines by record type; there must be a summary.
    pub fn parse(jsonl: &str, stderr: String) -> Result<Trace> {
        let mut trace = Trace {
            stderr,
            ..Trace::default()
        };
        let mut summary = None;
        for line in jsonl.lines() {
            let v: Value = serde_json::from_str(line)
                .with_context(|| format!("dnstrace wrote a line that is not JSON: {line}"))?;
            match v["type"].as_str() {
                Some("packet") => trace.packets.push(v),
                Some("lookup") => trace.lookups.push(v),
                Some("summary") => summary = Some(v),
                _ => {}
            }
        }
        trace.summary =
            summary.with_context(|| format!("no summary record; stderr: {}", trace.stderr))?;
        Ok(trace)
    }

    /// How many lookups got each verdict.
    pub fn verdicts(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for l in &self.lookups {
            *m.entry(l["verdict"].as_str().unwrap_or("?").to_owned())
                .or_default() += 1;
        }
        m
    }

    /// Lookups for `qname` (with or without its trailing dot).
    pub fn lookups_for(&self, qname: &str) -> Vec<&Value> {
        let want = fqdn(qname);
        self.lookups.iter().filter(|l| l["qname"] == want).collect()
    }

    /// Packets for `qname` (with or without its trailing dot), in capture order.
    pub fn packets_for(&self, qname: &str) -> Vec<&Value> {
        let want = fqdn(qname);
        self.packets.iter().filter(|p| p["qname"] == want).collect()
    }

    /// Kernel drop records (`"dir":"drop"`).
    pub fn drops(&self) -> Vec<&Value> {
        self.packets.iter().filter(|p| p["dir"] == "drop").collect()
    }
}

/// `name` with exactly one trailing dot, as dnstrace writes qnames.
pub fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

/// A lookup record in one line: client → server qtype qname rcode verdict (culprit, last hop).
pub fn one_line(l: &Value) -> String {
    format!(
        "{} → {} {} {} {} {} (culprit {}, last hop {})",
        l["client"].as_str().unwrap_or("?"),
        l["server"].as_str().unwrap_or("?"),
        l["qtype"].as_str().unwrap_or("?"),
        l["qname"].as_str().unwrap_or("?"),
        l["rcode"].as_str().unwrap_or("no answer"),
        l["verdict"].as_str().unwrap_or("?"),
        l["culprit"].as_str().unwrap_or("-"),
        l["last_hop"].as_str().unwrap_or("-"),
    )
}

/// Ids of the loaded BPF programs whose name starts with `prefix` (e.g. "dt_"
/// for dnstrace's, "dt_tc_" for its classifiers), sorted, as `bpftool` in
/// `ns` lists them (programs are global: the netns only decides where bpftool runs).
pub fn program_ids(lab: &Lab, ns: &str, prefix: &str) -> Result<Vec<u64>> {
    let out = lab.run(ns, &["bpftool", "-j", "prog", "show"])?;
    let progs: Value = serde_json::from_str(&out).context("bpftool printed no JSON")?;
    let mut ids: Vec<u64> = progs
        .as_array()
        .context("bpftool printed no array")?
        .iter()
        .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
        .filter_map(|p| p["id"].as_u64())
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

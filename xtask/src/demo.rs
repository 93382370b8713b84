//! `cargo xtask demo`: dnstrace watching a lab node while its pod sends real
//! queries through every path of FAILURE-MODES.md's "A node's DNS path".
//! `--scenario NAME` instead reproduces one failure mode of FAILURE-MODES.md
//! for real (see `dnstrace_tests::Scenario`) and runs the client that shows
//! it; `--scenario list` lists them.
//! On a terminal, dnstrace shows its full-screen view (`--output tui`) and the
//! queries run in the background, logged to a file, until the user quits with
//! `q`. Otherwise (or with `--output text`) dnstrace's stream goes to stdout
//! and the demo's own lines go to stderr, between them.

use std::{
    fs::File,
    io::{IsTerminal as _, Write as _},
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, ExitStatus},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use dnstrace_tests::{CmdOutput, DigReply, Node, Proc, Scenario, Signal};

use crate::{bail_if_stopped, fmt_duration, require_root, sleep_unless_stopped, stopped};

const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the stream stays open after the last round.
const LINGER: Duration = Duration::from_secs(3);
const BETWEEN_QUERIES: Duration = Duration::from_millis(300);
const BETWEEN_ROUNDS: Duration = Duration::from_secs(1);
const EXIT_GRACE: Duration = Duration::from_secs(10);
/// The pod's own stub resolver, as when a host's systemd-resolved resolv.conf is copied into pods.
const STUB_IP: &str = "127.0.0.53";
const STUB_NAME: &str = "host.local.test";
const STUB_ANSWER: &str = "10.0.0.53";

/// With `--scenario`: how long a lookup without an answer stays open in
/// dnstrace (`watch --timeout`), and so how long the stream stays open after
/// the client is done, plus [`SCENARIO_SLACK`].
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(3);
const SCENARIO_SLACK: Duration = Duration::from_millis(1500);

#[derive(clap::Args)]
pub struct Args {
    /// Reproduce one failure mode of FAILURE-MODES.md for real and show dnstrace's verdict (`list`: show them).
    #[arg(long, value_name = "NAME")]
    scenario: Option<String>,
    /// Keep sending rounds of queries for this many seconds (default: one round; not with --scenario).
    #[arg(long, value_name = "SECS", conflicts_with = "scenario")]
    duration: Option<u64>,
    /// Report a query that fails or answers unexpectedly, and go on (not with --scenario).
    #[arg(long, conflicts_with = "scenario")]
    keep_going: bool,
    /// Run this dnstrace binary instead of building one (`cargo build --release -p dnstrace`).
    #[arg(long, value_name = "PATH", env = "DNSTRACE_DEMO_BIN")]
    bin: Option<PathBuf>,
    /// dnstrace's full-screen view (queries in the background, `q` quits), or its text lines with the demo's banners [default: tui when stdout is a terminal, else text].
    #[arg(long, value_enum)]
    output: Option<Output>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Tui,
    Text,
}

/// dnstrace's log and the demo's query log in TUI mode (nothing may write to the screen).
const TUI_LOG: &str = "dnstrace-demo.log";
const QUERIES_LOG: &str = "dnstrace-demo-queries.log";
/// Pause between rounds of queries in TUI mode.
const TUI_ROUND_GAP: Duration = Duration::from_secs(2);

pub fn run(args: &Args) -> Result<()> {
    let scenario = match args.scenario.as_deref() {
        Some("list") => {
            list_scenarios();
            return Ok(());
        }
        Some(name) => Some(name.parse::<Scenario>()?),
        None => None,
    };
    let terminal = std::io::stdout().is_terminal();
    let tui = match args.output {
        Some(Output::Tui) if !terminal => {
            bail!("--output tui needs a terminal on stdout; use --output text")
        }
        Some(o) => o == Output::Tui,
        None => terminal,
    };
    require_root()?;
    let started = Instant::now();
    crate::setup::run()?;
    bail_if_stopped()?;

    let bin = crate::release_dnstrace("demo", args.bin.as_deref())?;

    let t = Instant::now();
    let node = match scenario {
        Some(scenario) => scenario
            .build("demo")
            .with_context(|| format!("building the lab node for scenario {scenario}"))?,
        None => {
            let node = Node::new("demo").context("building the lab node")?;
            start_pod_stub(&node)?;
            node
        }
    };
    eprintln!(
        "[demo] lab node {} up in {}: netns {} {} {} {}",
        node.lab.prefix(),
        fmt_duration(t.elapsed()),
        node.node_ns,
        node.pod_ns,
        node.cdns_ns,
        node.up_ns
    );
    bail_if_stopped()?;

    if tui {
        let outcome = tui_session(&node, &bin, scenario, args);
        tear_down(node, started);
        outcome?;
        if scenario.is_none() && !stopped() {
            tour();
        }
        return Ok(());
    }

    let ready = node.lab.dir().join("ready");
    // setns only (not `ip netns exec`): that would remount /sys and hide the
    // cgroup2 mount below it, which dnstrace needs for the socket hop.
    let mut cmd = node.lab.cmd_setns(&node.node_ns, &bin)?;
    let watch = watch_args("text", scenario);
    cmd.args(&watch).arg("--ready-file").arg(&ready);
    eprintln!(
        "[demo] starting: nsenter --net=/run/netns/{} {} {} --ready-file {}",
        node.node_ns,
        bin.display(),
        watch.join(" "),
        ready.display()
    );
    let tracer = node.lab.spawn("dnstrace", cmd)?;
    let outcome = wait_ready(&ready, || node.lab.status(&tracer))
        .map(|took| eprintln!("[demo] dnstrace ready after {}", fmt_duration(took)))
        .and_then(|()| match scenario {
            Some(scenario) => reproduce(&node, &tracer, scenario),
            None => traffic(&node, &tracer, args),
        });

    let status = if node.lab.status(&tracer)?.is_none() {
        eprintln!("[demo] stopping dnstrace (SIGINT)");
        Some(node.lab.stop(&tracer, Signal::Int, EXIT_GRACE)?)
    } else {
        None
    };
    tear_down(node, started);
    outcome?;
    if let Some(status) = status
        && !status.success()
    {
        bail!("dnstrace exited with {status}");
    }
    if scenario.is_none() && !stopped() {
        tour();
    }
    Ok(())
}

/// dnstrace's full-screen view owns the terminal (it runs in the foreground
/// process group, so it may read keys); the queries run on another thread and
/// write to [`QUERIES_LOG`], never to the screen. Returns when dnstrace exits.
fn tui_session(node: &Node, bin: &Path, scenario: Option<Scenario>, args: &Args) -> Result<()> {
    let tmp = std::env::temp_dir();
    let (log, queries_log) = (tmp.join(TUI_LOG), tmp.join(QUERIES_LOG));
    // dnstrace appends to its log: start afresh.
    let _ = std::fs::remove_file(&log);
    let ready = node.lab.dir().join("ready");
    let mut cmd = node.lab.cmd_setns(&node.node_ns, bin)?;
    cmd.args(watch_args("tui", scenario))
        .arg("--log-file")
        .arg(&log)
        .arg("--ready-file")
        .arg(&ready);
    if let Some(secs) = args.duration {
        cmd.arg("--duration").arg(format!("{secs}s"));
    }
    if let Some(scenario) = scenario {
        banner(node, scenario);
    }
    eprintln!(
        "[demo] starting dnstrace's full-screen view in netns {} (q quits; the queries and what dig got go to {})",
        node.node_ns,
        queries_log.display()
    );
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    // Nothing may print now: the screen is dnstrace's.
    let ready_or_exit = wait_ready(&ready, || Ok(child.try_wait()?)).map(drop);
    if ready_or_exit.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let stop = AtomicBool::new(false);
    let (status, sent) = thread::scope(|s| {
        let sender = s.spawn(|| {
            if ready_or_exit.is_ok() {
                background_queries(node, scenario, &queries_log, &stop)
            } else {
                Ok(Vec::new())
            }
        });
        let status = wait_child(&mut child);
        stop.store(true, Ordering::SeqCst);
        let sent = sender
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the query thread panicked")));
        (status, sent)
    });
    ready_or_exit?;
    let status = status?;
    eprintln!(
        "[demo] dnstrace exited ({status}); its log: {}; the demo's queries: {}",
        log.display(),
        queries_log.display()
    );
    let problems = sent?;
    for p in &problems {
        eprintln!("[demo] UNEXPECTED: {p}");
    }
    if !status.success() {
        bail!("dnstrace exited with {status}");
    }
    if !problems.is_empty() && !args.keep_going {
        bail!("{} queries did not get the expected answer", problems.len());
    }
    Ok(())
}

/// Waits for dnstrace to exit; a stop signal to the demo becomes a SIGTERM to it
/// (which restores the terminal and prints the summary), then a kill after the grace.
fn wait_child(child: &mut Child) -> Result<ExitStatus> {
    let mut signalled: Option<Instant> = None;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        match signalled {
            None if stopped() => {
                // SAFETY: plain syscall on our own child, not yet reaped.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
                signalled = Some(Instant::now());
            }
            Some(at) if at.elapsed() > EXIT_GRACE => {
                let _ = child.kill();
            }
            _ => {}
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// The queries of the demo (or the scenario's client) in rounds until `stop`,
/// logged to `path`; returns what did not get the expected answer.
fn background_queries(
    node: &Node,
    scenario: Option<Scenario>,
    path: &Path,
    stop: &AtomicBool,
) -> Result<Vec<String>> {
    let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let halted = || stop.load(Ordering::SeqCst) || stopped();
    let pause = |d: Duration| {
        let until = Instant::now() + d;
        while Instant::now() < until && !halted() {
            thread::sleep(Duration::from_millis(50));
        }
    };
    let mut problems = Vec::new();
    if let Some(scenario) = scenario {
        for argv in scenario.client_commands(node) {
            writeln!(f, "── pod$ {}", argv.join(" "))?;
        }
        for lookup in scenario.run_client(node)? {
            writeln!(f, "   ↳ {}", lookup.summary())?;
        }
        writeln!(f, "[demo] client done; q quits dnstrace")?;
        return Ok(problems);
    }
    let queries = queries(node);
    let mut round = 0;
    while !halted() {
        round += 1;
        writeln!(f, "[demo] round {round}")?;
        for query in &queries {
            if halted() {
                break;
            }
            writeln!(f, "── {}", query.banner)?;
            // One short try, so that quitting never waits long for dig.
            let mut extra = query.args.to_vec();
            extra.extend(["+time=1", "+tries=1"]);
            let out = node.query(
                &node.pod_ns,
                &query.server,
                &query.name,
                query.qtype,
                &extra,
            )?;
            match check(query, &out) {
                Ok(line) => writeln!(f, "   ↳ {line}")?,
                Err(problem) if halted() => writeln!(f, "   ↳ (stopping) {problem}")?,
                Err(problem) => {
                    writeln!(f, "   ↳ UNEXPECTED: {problem}")?;
                    problems.push(format!("{}: {problem}", query.banner));
                }
            }
            pause(BETWEEN_QUERIES);
        }
        pause(TUI_ROUND_GAP);
    }
    Ok(problems)
}

/// `--scenario list`.
fn list_scenarios() {
    let mut text =
        "Failure modes of FAILURE-MODES.md, each reproduced for real in a lab node:\n".to_owned();
    for s in Scenario::ALL {
        text.push_str(&format!(
            "  {} (dnstrace verdict: {})\n      {}\n",
            s.name(),
            s.verdict(),
            s.describe()
        ));
    }
    text.push_str("Run one: cargo xtask demo --scenario NAME\n");
    // A closed pipe (`| head`) is not an error here.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
}

/// The closing lines of the default demo.
fn tour() {
    let names: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
    eprintln!(
        "[demo] next, see dnstrace diagnose a real failure: {}",
        names.join(", ")
    );
    eprintln!(
        "[demo] run one with `cargo xtask demo --scenario NAME`; `--scenario list` says what each breaks"
    );
}

/// Removes the lab node and says how long that and the whole demo took.
fn tear_down(node: Node, started: Instant) {
    let t = Instant::now();
    drop(node);
    eprintln!(
        "[demo] lab torn down in {}; total {}",
        fmt_duration(t.elapsed()),
        fmt_duration(started.elapsed())
    );
}

/// What the scenario breaks, and what dnstrace should conclude.
fn banner(node: &Node, scenario: Scenario) {
    eprintln!("── scenario {scenario}: {}", scenario.describe());
    for expect in scenario.expect(node) {
        eprintln!(
            "   {} → {} {} {}: {}",
            expect.client,
            expect.server,
            expect.qtype,
            expect.qname.trim_end_matches('.'),
            expect.banner()
        );
    }
}

/// Runs the scenario's client in the pod, with banners saying what is broken
/// and what dnstrace should conclude, then keeps the stream open until
/// dnstrace has judged the lookups (its `--timeout` after the last try).
fn reproduce(node: &Node, tracer: &Proc, scenario: Scenario) -> Result<()> {
    banner(node, scenario);
    for argv in scenario.client_commands(node) {
        eprintln!("── pod$ {}", argv.join(" "));
    }
    let seen = scenario.run_client(node)?;
    if let Some(status) = node.lab.status(tracer)? {
        bail!("dnstrace exited early ({status})");
    }
    for lookup in &seen {
        eprintln!("   ↳ {}", lookup.summary());
    }
    let linger = SCENARIO_TIMEOUT + SCENARIO_SLACK;
    eprintln!(
        "[demo] client done; stream stays open {} for dnstrace's verdicts",
        fmt_duration(linger)
    );
    sleep_unless_stopped(linger);
    Ok(())
}

/// dnsmasq on 127.0.0.53 inside the pod, answering only `*.local.test`.
fn start_pod_stub(node: &Node) -> Result<()> {
    let lab = &node.lab;
    // --bind-interfaces binds only addresses configured on an interface.
    lab.add_addr(&node.pod_ns, "lo", &format!("{STUB_IP}/8"))?;
    let ip: IpAddr = STUB_IP.parse()?;
    lab.start_dnsmasq(
        &node.pod_ns,
        "pod-stub-dnsmasq",
        &[ip],
        &[&format!("--address=/local.test/{STUB_ANSWER}")],
    )?;
    Ok(())
}

/// `dnstrace watch --auto --output OUTPUT`, with the scenario's shorter `--timeout`.
fn watch_args(output: &str, scenario: Option<Scenario>) -> Vec<String> {
    let mut args = ["watch", "--auto", "--output", output]
        .map(str::to_owned)
        .to_vec();
    if scenario.is_some() {
        args.extend([
            "--timeout".to_owned(),
            format!("{}s", SCENARIO_TIMEOUT.as_secs()),
        ]);
    }
    args
}

/// Waits for dnstrace's ready file and says how long it took; fails if `exited` says it
/// exited first, on a stop signal, or after [`READY_TIMEOUT`].
fn wait_ready(
    ready: &Path,
    mut exited: impl FnMut() -> Result<Option<ExitStatus>>,
) -> Result<Duration> {
    let t = Instant::now();
    loop {
        bail_if_stopped()?;
        if ready.exists() {
            return Ok(t.elapsed());
        }
        if let Some(status) = exited()? {
            bail!("dnstrace exited ({status}) before writing its ready file; see its output above");
        }
        if t.elapsed() >= READY_TIMEOUT {
            bail!(
                "dnstrace did not write its ready file {} within {}s: attaching its programs failed or hangs",
                ready.display(),
                READY_TIMEOUT.as_secs()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

struct Query {
    banner: String,
    server: String,
    name: String,
    qtype: &'static str,
    args: &'static [&'static str],
    want_status: &'static str,
    want_answer: Option<String>,
}

fn queries(node: &Node) -> Vec<Query> {
    let (nl, cip, www, big, nx) = (
        node.nodelocal_ip.to_string(),
        node.cluster_ip.to_string(),
        &node.www_name,
        &node.big_name,
        &node.nx_name,
    );
    let q = |banner: String,
             server: &str,
             name: &str,
             qtype,
             args,
             want_status,
             want_answer: Option<String>| Query {
        banner,
        server: server.to_owned(),
        name: name.to_owned(),
        qtype,
        args,
        want_status,
        want_answer,
    };
    let www_a = Some(node.www_a.to_string());
    vec![
        q(
            format!("pod → node-local-dns {nl}: A {www}"),
            &nl,
            www,
            "A",
            &[],
            "NOERROR",
            www_a.clone(),
        ),
        q(
            format!("pod → kube-dns ClusterIP {cip} (DNAT → CoreDNS pod): A {www}"),
            &cip,
            www,
            "A",
            &[],
            "NOERROR",
            www_a.clone(),
        ),
        q(
            format!("pod → ClusterIP {cip} over TCP: A {www}"),
            &cip,
            www,
            "A",
            &["+tcp"],
            "NOERROR",
            www_a,
        ),
        q(
            format!("pod → node-local-dns {nl}: AAAA {www}"),
            &nl,
            www,
            "AAAA",
            &[],
            "NOERROR",
            Some(node.www_aaaa.to_string()),
        ),
        q(
            format!("pod → its own loopback stub {STUB_IP} (never leaves the pod): A {STUB_NAME}"),
            STUB_IP,
            STUB_NAME,
            "A",
            &[],
            "NOERROR",
            Some(STUB_ANSWER.to_owned()),
        ),
        q(
            format!("pod → node-local-dns {nl}: TXT {big} (> 1232 bytes: TC=1 over UDP, then TCP)"),
            &nl,
            big,
            "TXT",
            &[],
            "NOERROR",
            None,
        ),
        q(
            format!("pod → node-local-dns {nl}: A {nx} (NXDOMAIN)"),
            &nl,
            nx,
            "A",
            &[],
            "NXDOMAIN",
            None,
        ),
    ]
}

fn traffic(node: &Node, tracer: &Proc, args: &Args) -> Result<()> {
    let queries = queries(node);
    let until = args
        .duration
        .map(|secs| Instant::now() + Duration::from_secs(secs));
    let mut round = 0;
    loop {
        round += 1;
        if until.is_some() {
            eprintln!("[demo] round {round}");
        }
        for query in &queries {
            if stopped() {
                return Ok(());
            }
            if let Some(status) = node.lab.status(tracer)? {
                bail!("dnstrace exited early ({status})");
            }
            eprintln!("── {}", query.banner);
            let out = node.query(
                &node.pod_ns,
                &query.server,
                &query.name,
                query.qtype,
                query.args,
            )?;
            if stopped() {
                return Ok(());
            }
            match check(query, &out) {
                Ok(line) => eprintln!("   ↳ {line}"),
                Err(problem) if args.keep_going => {
                    eprintln!("   ↳ UNEXPECTED: {problem} (--keep-going)")
                }
                Err(problem) => bail!("{}: {problem}\n{}{}", query.banner, out.stdout, out.stderr),
            }
            if !sleep_unless_stopped(BETWEEN_QUERIES) {
                return Ok(());
            }
        }
        match until {
            Some(until) if Instant::now() < until => {
                if !sleep_unless_stopped(BETWEEN_ROUNDS) {
                    return Ok(());
                }
            }
            _ => break,
        }
    }
    eprintln!(
        "[demo] queries done; stream stays open {}s",
        LINGER.as_secs()
    );
    sleep_unless_stopped(LINGER);
    Ok(())
}

/// A one-line summary of dig's reply, or what was unexpected about it.
fn check(query: &Query, out: &CmdOutput) -> std::result::Result<String, String> {
    let reply = DigReply::parse(&out.stdout);
    let Some(status) = reply.status.as_deref() else {
        return Err(format!(
            "no reply (dig exit {:?}) {}",
            out.code(),
            out.stdout.lines().last().unwrap_or("")
        ));
    };
    let mut line = format!("{status}, {} answer(s)", reply.answers.len());
    if let Some(first) = reply.answers.first() {
        line.push_str(&format!(": {}", shorten(first, 60)));
    }
    if reply.truncated_then_tcp {
        line.push_str(" [UDP reply truncated, retried over TCP]");
    }
    if let Some(ms) = reply.query_ms {
        line.push_str(&format!(" ({ms} ms)"));
    }
    if status != query.want_status {
        return Err(format!("{line}; expected {}", query.want_status));
    }
    if let Some(want) = &query.want_answer
        && !reply.answers.iter().any(|a| a == want)
    {
        return Err(format!("{line}; expected answer {want}"));
    }
    Ok(line)
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(max).collect::<String>())
    }
}

//! `dnsload`: healthy DNS load from a few reused UDP sockets, with per-query
//! records (see `dnstrace_tests::load`). Run it inside a lab netns:
//!
//! ```text
//! dnsload --server 169.254.25.10:53 --qps 10000 --count 100000 --sockets 8 \
//!         --ids 64 --question www.example.test/A --question ns1.example.test/A \
//!         --out queries.jsonl
//! ```
//!
//! Writes one JSON line per query to `--out` (after a header line) and a
//! one-line JSON summary to stdout.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, Result, bail};
use dnstrace_tests::load::{LoadSpec, percentile, run_client};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dnsload: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let mut spec = LoadSpec {
        server: "169.254.25.10:53".parse()?,
        qps: 1000,
        count: 1000,
        sockets: 8,
        ids: 64,
        questions: Vec::new(),
        timeout: Duration::from_secs(2),
    };
    let mut out: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        let bad = || format!("bad value for {flag}: {value}");
        match flag.as_str() {
            "--server" => spec.server = value.parse().with_context(bad)?,
            "--qps" => spec.qps = value.parse().with_context(bad)?,
            "--count" => spec.count = value.parse().with_context(bad)?,
            "--sockets" => spec.sockets = value.parse().with_context(bad)?,
            "--ids" => spec.ids = value.parse().with_context(bad)?,
            "--timeout-ms" => {
                spec.timeout = Duration::from_millis(value.parse().with_context(bad)?);
            }
            "--question" => {
                let (name, qtype) = value.split_once('/').with_context(bad)?;
                spec.questions.push((name.to_owned(), qtype.to_owned()));
            }
            "--out" => out = Some(PathBuf::from(value)),
            _ => bail!("unknown option {flag}"),
        }
    }
    if spec.questions.is_empty() {
        spec.questions = vec![
            ("www.example.test".to_owned(), "A".to_owned()),
            ("www.example.test".to_owned(), "AAAA".to_owned()),
            ("ns1.example.test".to_owned(), "A".to_owned()),
        ];
    }
    let out = out.context("--out FILE is required")?;
    let run = run_client(&spec)?;
    run.write(&out)?;
    let lat = run.latencies();
    println!(
        "{}",
        serde_json::json!({
            "sent": run.queries.len(),
            "answered": run.answered(),
            "send_secs": run.send_secs,
            "netns_cookie": run.netns_cookie,
            "p50_ms": percentile(&lat, 50.0),
            "p99_ms": percentile(&lat, 99.0),
            "max_ms": lat.last(),
        })
    );
    Ok(())
}

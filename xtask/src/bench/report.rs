//! BENCHMARKS.md: the summary table, then one section per measurement with
//! its exact commands, the machine, the date and the conditions.

use std::{fmt::Write as _, process::Command, time::Duration};

use super::{Plan, Section};

pub struct Row {
    figure: String,
    target: String,
    result: String,
    met: Option<bool>,
}

pub struct Report {
    plan: Plan,
    sections_run: Vec<Section>,
    rows: Vec<Row>,
    /// For a target not met: why, from the run's own measurements, and what it would take.
    gaps: Vec<(String, String)>,
    sections: Vec<(String, String)>,
    failures: Vec<(String, String)>,
    started_at: String,
    machine: Vec<(String, String)>,
    load_before: String,
    note: Option<String>,
    pub elapsed: Duration,
}

fn sh(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn machine() -> Vec<(String, String)> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_owned()))
        .unwrap_or_default();
    let commit = sh(
        "git",
        &[
            "-C",
            &crate::workspace_root().display().to_string(),
            "rev-parse",
            "--short",
            "HEAD",
        ],
    );
    let dirty = !sh(
        "git",
        &[
            "-C",
            &crate::workspace_root().display().to_string(),
            "status",
            "--porcelain",
            "--untracked-files=no",
        ],
    )
    .is_empty();
    vec![
        ("nproc".to_owned(), sh("nproc", &[])),
        ("CPU".to_owned(), cpu),
        ("kernel".to_owned(), sh("uname", &["-sr"])),
        ("memory".to_owned(), mem),
        (
            "dnstrace".to_owned(),
            format!(
                "{commit}{}",
                if dirty {
                    " (with uncommitted changes)"
                } else {
                    ""
                }
            ),
        ),
        (
            "dnsperf".to_owned(),
            sh("sh", &["-c", "dnsperf -h 2>&1 | grep -i '^version'"]),
        ),
        (
            "tcpdump".to_owned(),
            sh("sh", &["-c", "tcpdump --version 2>&1 | head -1"]),
        ),
        (
            "tshark".to_owned(),
            sh("sh", &["-c", "tshark --version 2>/dev/null | head -1"]),
        ),
        (
            "dnsmasq".to_owned(),
            sh("sh", &["-c", "dnsmasq --version | head -1"]),
        ),
    ]
}

impl Report {
    pub fn new(plan: &Plan, sections: &[Section], note: Option<String>) -> Report {
        Report {
            plan: *plan,
            sections_run: sections.to_vec(),
            rows: Vec::new(),
            gaps: Vec::new(),
            sections: Vec::new(),
            failures: Vec::new(),
            started_at: sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            machine: machine(),
            load_before: loadavg(),
            note,
            elapsed: Duration::ZERO,
        }
    }

    /// One line of the summary table; `met` is None for figures without a target.
    pub fn row(&mut self, figure: &str, target: &str, result: String, met: Option<bool>) {
        self.rows.push(Row {
            figure: figure.to_owned(),
            target: target.to_owned(),
            result,
            met,
        });
    }

    /// One line of the summary table with a target, which holds only if `met`; when it
    /// does not, `why` (computed from the same measurements) says why and what it would
    /// take, under the table.
    pub fn goal(
        &mut self,
        figure: &str,
        target: &str,
        result: String,
        met: bool,
        why: impl FnOnce() -> String,
    ) {
        if !met {
            self.gaps.push((figure.to_owned(), why()));
        }
        self.row(figure, target, result, Some(met));
    }

    pub fn section(&mut self, title: &str, body: String) {
        self.sections.push((title.to_owned(), body));
    }

    pub fn failed(&mut self, section: &str, error: &str) {
        self.failures.push((section.to_owned(), error.to_owned()));
    }

    pub fn has_failures(&self) -> bool {
        !self.failures.is_empty()
    }

    pub fn table(&self) -> String {
        let mut t =
            "| Figure | Target | Result: median (min–max) | Met |\n|---|---|---|---|\n".to_owned();
        for r in &self.rows {
            let met = match r.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "—",
            };
            let _ = writeln!(t, "| {} | {} | {} | {met} |", r.figure, r.target, r.result);
        }
        t
    }

    pub fn render(&self) -> String {
        let mode = if self.plan.full { "--full" } else { "short" };
        let only = if self.sections_run.len() == Section::ALL.len() {
            String::new()
        } else {
            let names: Vec<String> = self
                .sections_run
                .iter()
                .map(|s| format!("{s:?}").to_lowercase())
                .collect();
            format!(" --only {}", names.join(","))
        };
        let mut out = format!(
            "# dnstrace benchmarks\n\n\
             Written by `sudo cargo xtask bench{}{only}` ({mode} mode, {repeats} repeats per figure, \
             {secs:.0} s in all) on {date}. Every comparison is made within this one run, with the \
             compared cases interleaved; figures are median (min–max) over the repeats.\n\n",
            if self.plan.full { " --full" } else { "" },
            repeats = self.plan.repeats,
            secs = self.elapsed.as_secs_f64(),
            date = self.started_at,
        );
        out.push_str("## Summary\n\n");
        out.push_str(&self.table());
        if !self.gaps.is_empty() {
            out.push_str(
                "\n### Targets not met: why, and what it would take\n\n\
                 Worked out from this run's own figures (the worst repeat, as a target holds \
                 only if it holds in every repeat).\n\n",
            );
            for (figure, why) in &self.gaps {
                let _ = writeln!(out, "- **{figure}.** {why}");
            }
        }
        if !self.failures.is_empty() {
            out.push_str("\n**Sections that failed:**\n\n");
            for (s, e) in &self.failures {
                let _ = writeln!(out, "- {s}: `{}`", e.replace('\n', " "));
            }
        }
        out.push_str("\n## Machine and conditions\n\n| | |\n|---|---|\n");
        for (k, v) in &self.machine {
            let _ = writeln!(out, "| {k} | {v} |");
        }
        let _ = writeln!(
            out,
            "| load average (1, 5, 15 min) | {} at the start, {} at the end |",
            self.load_before,
            loadavg()
        );
        out.push_str(
            "\nThe machine is a small VM shared with other work: the load average above shows \
             how busy it was. Everything runs in network namespaces of this one machine (veth \
             pairs, no real NIC), so the load generator, the server and the tracer share its \
             cores; absolute rates are this machine's, the ratios are the result.\n",
        );
        if let Some(note) = &self.note {
            let _ = writeln!(out, "\nConditions of this run: {note}");
        }
        for (title, body) in &self.sections {
            let _ = write!(out, "\n## {title}\n\n{body}");
        }
        out.push_str(OPTIMISATIONS);
        out.push_str(
            "\n## How to reproduce\n\n```\nsudo cargo xtask bench          # short mode, about 10 minutes\n\
             sudo cargo xtask bench --full   # longer runs, 5 repeats\n\
             sudo cargo xtask bench --only dns,collector   # a subset\n```\n\n\
             The bench builds dnstrace in release mode, builds its own namespaces with the \
             `dnstrace_tests` lab (removed afterwards), and needs root, dnsperf, dnsmasq, tcpdump, \
             tshark and bpftool (`cargo xtask setup` installs them). The flood generator is \
             `cargo xtask bench-flood`, run inside the sender's namespace.\n",
        );
        out
    }
}

/// Figures measured while optimising, on the same machine (same bench
/// sections, medians; the machine was busy with other builds, so each pair
/// was measured back to back).
const OPTIMISATIONS: &str = "
## Optimisations made for these targets (before → after)

Measured with the same bench sections on this machine during development
(2026-11-30), each pair back to back. The issue 11 rows (2026-12-07) are the
`collector_bench` example run over the bench's 510000-lookup capture (1014900
events), the old and the new binary alternating, 5 runs each, min–max; the
machine's 2 cores were shared with other builds (load average 4–5), so compare
within a row, not across rows:

| Change | Figure | Before | After |
|---|---|---|---|
| Ring buffer: wake the reader only once a quarter of the ring is waiting (`BPF_RB_NO_WAKEUP`, else `BPF_RB_FORCE_WAKEUP`); the reader also drains every 10 ms | kernel cost per DNS packet | 577 ns | 170 ns |
| Read the config global field by field instead of `CONFIG.load()` (which copied all 64 bytes to the stack per packet); IPv4 fast path with one bounds check | kernel cost per non-DNS packet | 13.7–18.6 ns | 7.6–8.0 ns |
| (same) | kernel cost per DNS packet | 170 ns | 142–157 ns |
| Write the event header as 7 whole words (LLVM had turned its zeroed tail into a byte-by-byte memset loop) | kernel cost per DNS packet | 142–157 ns | 127 ns |
| Hand-written parse of the common DNS message shape (one plain question, A/AAAA answers, optional OPT without options), hickory for everything else; tests assert both give the same result | collector events per CPU-second | 0.65–0.67 M | 0.78–0.86 M |
| Hand-written IPv4 address text for lookups and A answers | collector events per CPU-second | 0.78–0.86 M | 1.01–1.09 M |
| (all of the above) | dnstrace's own CPU per 10k qps (dns section) | 8.8 % of a core | 5.2 % of a core |
| Issue 11, 2026-12-07: decode for stitching only (header, question, OPT, addresses) unless packet lines are shown; answers are checked, not turned into text | collector events per CPU-second | 1.21–1.26 M | 1.26–1.29 M |
| Issue 11: record type, class and opcode names from static tables (no String per message); the interface interner on the fast hasher; a healthy lookup's detail and last hop written without the formatter | collector events per CPU-second | 1.17–1.19 M | 1.41–1.46 M |
| Issue 11: Ethernet/raw IPv4 + UDP frames read by hand, etherparse for everything else (a test asserts both give the same packet for every corpus frame); a question name copied whole rather than label by label; the last event's interface tried first; verdicts counted in an array | collector events per CPU-second | 1.46–1.60 M | 1.71–1.88 M |
| Issue 11, step 4: a live lookup boxed in its table (which grows past its load under churn), its rare TCP/leg-cap fields boxed apart, no copy of the first sighting in a leg, the question index without a deque per name | heap bytes per open lookup under a flood of one-sighting lookups (unit test, counting allocator) | 1210 | 492 |
| Issue 11, step 4: (same), measured by `collector_bench run-heap` on the 1M flood at a 100 000 cap, old and new alternating, 3 runs each (identical to 0.1 %) | RSS per open lookup | 1370 B | 630 B |
| Issue 11, step 3 (correlator): an output hop's interface name shared (Arc<str>), the lookup type static; a leg with room for its query and reply (so 596 heap bytes per open lookup, not 492) | collector events per CPU-second | 2.00–2.10 M | 2.14–2.18 M |
| Issue 11, step 3 (correlator): finished lookups appended to the caller's vector (`ingest_into`), not a new vector per event | collector events per CPU-second | 1.96–2.12 M | 2.13–2.26 M |
| Issue 11, step 4: lookups past their deadline (and those open at the end) ended and written 1024 at a time, so a mass expiry's records are never all in memory at once | peak RSS under the 1M flood, default `--memory-budget 64MiB` (flood section, 2–3 runs) | 51.0–56.2 MiB | 39.3–39.9 MiB |
| Issue 11, step 3: jemalloc (one arena, freed pages returned within a second) in place of glibc's malloc, which perf put at about a sixth of dnstrace's CPU on the node-local-dns path; mimalloc was tried too (faster than glibc, but 88.8 MiB under the 1M flood) | CPU-seconds to replay the cost section's 1.58M-event capture (`dnstrace replay FILE --output json`), old and new alternating, 3 runs each | 1.55–1.59 s | 1.35–1.39 s |
| Issue 11, step 1, tried and not kept: decode each DNS message once in userspace (a bounded table of recently decoded messages, served only on byte-for-byte equal payloads; the corpus decoded alike). The capture holds 5.4 sightings per distinct message, yet serving one (hash, compare, copy the decoded message) cost more than the hand-written parse | CPU-seconds, same replay, 3 runs each | 1.36–1.47 s | 1.45–1.59 s (4096 slots), 1.45–1.50 s (256) |
| Issue 11, third session (2026-12-07): the lookups' deadlines in a heap whose stale entries are skipped and swept, not a `BTreeSet` kept in step (2.09–2.20 → 2.27–2.36 M alone); the question hash eight bytes at a time; a plain name copied from the wire in one piece (2.16–2.27 → 2.39–2.46 M alone); an event's interface name shared from the name table (no two Strings per event) and the interfaces of the last events found by address; a forwarded query's detail, ports and octets written without the formatter | collector events per CPU-second, the original and the new binary alternating, 5 runs each | 1.87–2.09 M | 2.32–2.48 M |
| Issue 11, step 1 (kernel): a UDP DNS payload the same CPU copied within the last second, byte for byte, goes into the ring as a compact record (the sighting's own L2–L4 bytes and the name of the record that carried the payload); the reader rebuilds the exact packet | dnstrace's own CPU per 10k qps, node-local-dns path (cost section, old and new binary back to back, 3 repeats each), JSON / text | 12.20 (11.90–12.30) / 11.40 (11.30–11.60) % | 10.90 (10.80–11.10) / 10.30 (10.10–10.80) %; 71.3 % of events compact; ring ≈ 5.5 → ≈ 3.3 KB per lookup (from record sizes); kernel: a first sighting +≈ 10 ns, a sighting seen again −≈ 43 ns |
| Issue 11, step 1 (kernel, IPv6): plain IPv6 UDP DNS (no extension header, no VLAN tag, not tunnelled) goes through the payload cache too, its payload at 62 (Ethernet) or 48 (raw) | kernel time per packet, `bpftool prog run` of `dt_tc_eth_out` in a private netns, 5 × 20 000 runs per packet, old and new object (the test-run facility's own cost included; noisy on 2 shared cores) | the same IPv6 DNS query again and again: 256–2700 ns (a full copy each time); non-DNS 40–55 ns | 156–345 ns (IPv4 DNS for reference: 150–430 ns); non-DNS 40–55 ns; verifier: 88.5k → 90.7k instructions checked (tc), 55–56k → 57–59k (socket hop) |
| Issue 11, step 1 (collector): a compact record takes the message decoded for the record that carried its payload, reading only its own headers (IPv4 and IPv6 UDP); a question's name an `Arc<str>` built on the stack, shared by those sightings rather than copied | the decode stage, ns per sighting, each message at 4 points (`collector_bench decode`, 9 passes each way, alternating; full run of 2026-12-07 11:59) | 120.0 (117.8–127.9) | 86.6 (85.4–90.1); on the node-local-dns path 28 % of events have a DNS message parsed, not 100 %. dnstrace's own CPU on that path (cost section, old and new binary, two runs of 3 repeats each): 10.8–13.0 / 9.7–12.5 % against 9.4–13.5 / 10.0–12.1 % (JSON / text): within that day's noise |
| Issue 11, fifth session (2026-12-07): a plain label's bytes checked by one table load each (not three range checks); a finished lookup's qname the live state's `Arc<str>` rather than a String made through `Display` (which padded through the formatter) | `collector_bench run` over the 510000-lookup capture: instructions (callgrind, repeatable) and events per CPU-second (old and new binary alternating, 6 runs each) | 5.70 G instructions; 2.01–2.26 M, median 2.04 M | 5.32 G instructions (−6.7 %); 2.02–2.31 M, median 2.18 M |
| Issue 11, fifth session: an `ok` lookup that nothing shows with its hops (no TUI, `--hops problems` or `none`) is built with only their count and path (each place's earliest sighting, on the stack), not a `Hop` per sighting; `collector_bench` now builds lookups as `watch` does by default | `collector_bench run`, instructions (callgrind); dnstrace's own CPU per 10k qps writing text on the node-local-dns path (cost section, old and new binary back to back, 3 repeats each); `dnstrace replay` of that section's 100,000-lookup capture | 5.32 G; 12.20 (12.10–12.80) %; 1.42–1.52 user-s | 5.15 G (−3.1 %); 11.00 (10.00–12.70) %; 1.39–1.55 user-s, the 100,000 lookup records byte for byte the same |
| Issue 11, fifth session: (same setting) such a lookup's detail line (answered … in … ms) and last hop are not written either: nothing reads them (the compact record and the text line leave them out for `ok`) | `collector_bench run`, instructions (callgrind); events per CPU-second, old and new binary alternating, 5 runs each (a busy host) | 5.15 G; 1.41–2.03 M | 4.83 G (−6.2 %; 5.70 → 4.83 G, −15 %, over the session); 1.62–2.25 M |
| Issue 11, sixth session (2026-12-07): a finished lookup's client and server kept as addresses, written by serde (`Display` into a stack buffer) only when a record is written, not as two Strings built and freed per lookup; a plain name's text taken as ASCII without a second UTF-8 check (its bytes passed the label table); a packet's rare overlay tunnel boxed (`Packet` 408 → 344 bytes) | `collector_bench run` over the 510000-lookup capture: instructions (callgrind, repeatable); events per CPU-second, old (64654a9) and new binary alternating, 5 runs each | 4.89 G; 1.87 (1.65–1.99) M | 4.26 G (−12.9 %: 4.41 after the addresses, 4.28 after the names); 2.08 (1.86–2.29) M |
| Issue 11, seventh session (2026-12-07): a leg that outgrows its query and reply grows once, to the longest recent leg (the node's path, forgotten by an eighth of a sighting per leg), not by doubling from two (a size tuned to `collector_bench`, whose lookups have two sightings; the node-local-dns path has 9 to 11) | `dnstrace replay --output json` of the cost section's capture (100,000 lookups, 940,852 sightings through node-local-dns): instructions in `Leg::push` and its reallocations (callgrind); `collector_bench run`, whole | 192 M; 4.26 G | 124 M; 4.28 G (+0.5 %: two sightings never grow) |
| Issue 11, seventh session: the compact JSON record written key by key (values still by serde_json; a test holds it byte for byte to the derived `Serialize` over all 2^14 combinations of its optional fields), IPv4 addresses written without the formatter (serde formats them through `Display`); a text lookup's first line pushed piece by piece (a test holds it to the `format!` it replaced) | same replay: instructions per healthy lookup written (callgrind), JSON / text; the whole replay, JSON / text (output byte for byte the same) | 9,620 / 10,900; 12.15 G / 12.27 G | 4,570 / 1,970; 11.61 G / 11.34 G |
| Issue 11, seventh session: `printable` (every string read from a packet or a file, before a terminal sees it) checks printable ASCII 32 bytes at a time, and decodes characters only when there is something else (a test holds the premise: no printable ASCII character is hidden, every other ASCII one is) | same replay, JSON: instructions in `printable` (it reads every packet's comment); the whole replay (output byte for byte the same) | 2,164 M; 11.61 G | 166 M; 9.61 G (−17 %) |
| Issue 11, seventh session: (both of the above) | dnstrace's own CPU per 10k qps on the node-local-dns path (`cargo xtask bench --only cost --bin B`, old (598e22b) and new binary alternating, 2 runs of 3 repeats each; this host ran slower than the full run's), JSON / text | 17.00 (16.90–17.20), 17.50 (15.10–18.40) / 17.30 (17.20–17.50), 17.70 (15.40–17.70) % | 16.00 (15.80–16.70), 15.80 (15.80–16.20) / 15.00 (14.80–15.60), 16.10 (15.90–16.20) % |
| Issue 11, eighth session (2026-12-08, another VM, its no-op classifier at 68–73 ns): the kernel's IPv4 fast path reads words (ethertype with version and header length, the fragment field, each port), not bytes; the port table ends at its first repeated port, so one traced port costs two loads and three compares, not a count and a loop (`tests/ports.rs` holds several ports to it through the real programs) | kernel cost per non-DNS packet above the no-op (`cargo xtask bench --only kernel --full`, 9 repeats, old (e001e75) and new binary alternating, 2 runs each); object instructions from the program's entry to the tunnel-port test | 13.3 (11.9–15.4), 13.6 (12.5–16.2) ns; 61 | 11.2 (8.7–11.9), 10.3 (9.2–13.0) ns; 39 |
| Issue 11, eighth session: replay splits a packet comment's words at ASCII whitespace and at the first `=` byte (Unicode whitespace and `split_once` went through it character by character) | `dnstrace replay --output json` of the cost section's capture (100,000 lookups, 1,621,958 sightings), instructions (callgrind), output byte for byte the same | 15.57 G | 14.07 G |
| Issue 11, eighth session: a packet's DNS message is shared (`Arc`): a compact record takes the one decode of its payload without cloning it, and a packet moves through the pipeline without its message | `collector_bench decode`, ns per sighting when each message is parsed once (2 runs, 9 passes each); the same replay; `collector_bench run` (every sighting a full decode: one allocation more each) | 111–120 ns; 14.07 G; 4.29 G | 69–104 ns; 13.92 G; 4.39 G (+2.1 %) |
| Issue 11, eighth session: `collector_bench` runs on dnstrace's own allocator (jemalloc with the binary's options) rather than glibc's, so that the collector figure is dnstrace's | `collector_bench run` over the 510000-lookup capture, instructions (callgrind) | 4.39 G | 4.07 G |
| Issue 11, eighth session: (the kernel and the shared message) | dnstrace's own CPU per 10k qps on the node-local-dns path (`cargo xtask bench --only cost --bin B`, old (e001e75) and new binary alternating, 2 runs of 3 repeats each), JSON / text | 11.10 (10.70–12.10), 11.20 (10.00–11.70) / 9.80 (9.80–10.50), 10.40 (8.80–10.90) % | 10.00 (8.70–10.80), 10.80 (9.80–10.90) / 8.90 (7.60–10.40), 10.40 (8.70–10.50) % |
";

#[cfg(test)]
mod tests {
    use super::*;

    /// A target not met says why under the table; one that is met adds nothing there.
    #[test]
    fn an_unmet_goal_says_why_under_the_table() {
        let mut r = Report::new(&Plan::new(false), &[Section::Kernel], None);
        r.goal("Met figure", "≤ 1", "0.5".into(), true, || {
            panic!("asked why a met target was not met")
        });
        let text = r.render();
        assert!(!text.contains("Targets not met"), "{text}");
        r.goal("Missed figure", "≤ 1", "2.0".into(), false, || {
            "because it measured 2.0".to_owned()
        });
        let text = r.render();
        let table = text
            .find("| Missed figure | ≤ 1 | 2.0 | **no** |")
            .expect("its row");
        let why = text
            .find("- **Missed figure.** because it measured 2.0")
            .expect("its reason");
        assert!(table < why, "the reason follows the table");
    }
}

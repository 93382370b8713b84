//! Errors that teach (issue 8, finding 9), with the real binary (DNSTRACE_BIN):
//! - a missing capability is one line naming it, not the kernel verifier's log;
//! - a cut capture file is replayed as far as it reads, says `complete: false`, and
//!   fails only with `--strict`;
//! - names and data read from a file (interface names, qnames, TXT) never reach the
//!   terminal as raw escape sequences or bidi controls.
//!
//! The capability test needs root (it drops capabilities from root's set in a lab
//! netns); the others need only the binary.
use std::{fs, path::PathBuf, process::Command, time::Duration};

use dnstrace_tests::{
    Lab, Trace,
    scratch::{Scratch, dns_message, ipv4_udp, pcap_one_lookup, pcap_raw_ip, run_bounded},
};

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn missing_perfmon_is_one_line_naming_it() {
    if dnstrace_tests::skip_without_root() {
        return;
    }
    let Some(bin) = dnstrace_tests::dnstrace_bin() else {
        return;
    };
    let lab = Lab::new("err").unwrap();
    let ns = lab.add_netns("a").unwrap();
    // What a DaemonSet with BPF and NET_ADMIN but neither PERFMON nor SYS_ADMIN has
    // (SYS_ADMIN grants what PERFMON does).
    let mut cmd = lab.cmd_setns(&ns, "setpriv").unwrap();
    cmd.args([
        "--inh-caps=-perfmon,-sys_admin",
        "--bounding-set=-perfmon,-sys_admin",
    ])
    .arg(&bin)
    .args([
        "watch",
        "-i",
        "lo",
        "--no-socket-hop",
        "--no-drops",
        "--duration",
        "2s",
        "--output",
        "json",
    ]);
    let run = run_bounded(&mut cmd, LIMIT).unwrap();
    let code = run.status.and_then(|s| s.code());
    assert!(code.is_some_and(|c| c != 0), "{}", run.describe());
    let err: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(err.len(), 1, "{}", run.stderr);
    assert!(
        err[0].contains("lacks CAP_PERFMON") && err[0].contains("DNSTRACE_LOG=debug"),
        "{}",
        err[0]
    );

    // The verifier's log is still there for whoever asks.
    let mut cmd = lab.cmd_setns(&ns, "setpriv").unwrap();
    cmd.args([
        "--inh-caps=-perfmon,-sys_admin",
        "--bounding-set=-perfmon,-sys_admin",
        "env",
        "DNSTRACE_LOG=debug",
    ])
    .arg(&bin)
    .args(["watch", "-i", "lo", "--no-socket-hop", "--no-drops"]);
    let run = run_bounded(&mut cmd, LIMIT).unwrap();
    assert!(run.stderr.contains("verifier's log"), "{}", run.describe());
    assert!(run.stderr.contains("processed "), "{}", run.describe());
}

fn replay(args: &[&str], file: &std::path::Path) -> Option<dnstrace_tests::scratch::Bounded> {
    let bin = dnstrace_tests::dnstrace_bin()?;
    let mut cmd = Command::new(bin);
    cmd.args(["replay"]).args(args).arg(file);
    Some(run_bounded(&mut cmd, LIMIT).unwrap())
}

/// The same lookup three times over, then cut in the middle of the last packet.
fn cut_pcap(dir: &Scratch) -> (PathBuf, usize) {
    let whole = pcap_one_lookup();
    let one = &whole[24..];
    let mut f = whole.clone();
    f.extend_from_slice(one);
    f.extend_from_slice(one);
    f.truncate(f.len() - 10);
    let path = dir.join("cut.pcap");
    fs::write(&path, &f).unwrap();
    (path, 5)
}

#[test]
fn cut_file_is_incomplete_and_fails_only_with_strict() {
    let dir = Scratch::new("err", 0o700).unwrap();
    let (path, whole_packets) = cut_pcap(&dir);
    let Some(run) = replay(&["--output", "json"], &path) else {
        return;
    };
    assert_eq!(
        run.status.and_then(|s| s.code()),
        Some(0),
        "{}",
        run.describe()
    );
    let trace = Trace::parse(&run.stdout, run.stderr.clone()).unwrap();
    let r = &trace.summary["replay"];
    assert_eq!(r["complete"], false, "{r}");
    assert_eq!(r["frames"], whole_packets as u64, "{r}");
    assert!(r["error"].as_str().unwrap().contains("cut short"), "{r}");
    assert!(
        run.stderr.contains("warning") && run.stderr.contains("--strict"),
        "{}",
        run.stderr
    );

    let run = replay(&["--output", "json", "--strict"], &path).unwrap();
    assert_eq!(
        run.status.and_then(|s| s.code()),
        Some(1),
        "{}",
        run.describe()
    );
    // The summary still comes first, then the error.
    let trace = Trace::parse(&run.stdout, run.stderr.clone()).unwrap();
    assert_eq!(trace.summary["replay"]["complete"], false);
    assert!(
        run.stderr.contains("error") && run.stderr.contains("incomplete"),
        "{}",
        run.stderr
    );

    // A whole file is complete, with or without --strict.
    let whole = dir.join("whole.pcap");
    fs::write(&whole, pcap_one_lookup()).unwrap();
    let run = replay(&["--output", "json", "--strict"], &whole).unwrap();
    assert_eq!(
        run.status.and_then(|s| s.code()),
        Some(0),
        "{}",
        run.describe()
    );
    let trace = Trace::parse(&run.stdout, run.stderr.clone()).unwrap();
    assert_eq!(trace.summary["replay"]["complete"], true);
}

/// A pcapng option: code, length, value, padding to 4 bytes.
fn option(code: u16, value: &[u8]) -> Vec<u8> {
    let mut o = code.to_le_bytes().to_vec();
    o.extend_from_slice(&(value.len() as u16).to_le_bytes());
    o.extend_from_slice(value);
    o.resize(o.len().next_multiple_of(4), 0);
    o
}

fn block(kind: u32, body: &[u8]) -> Vec<u8> {
    let len = (12 + body.len()) as u32;
    let mut b = kind.to_le_bytes().to_vec();
    b.extend_from_slice(&len.to_le_bytes());
    b.extend_from_slice(body);
    b.extend_from_slice(&len.to_le_bytes());
    b
}

/// A pcapng whose interface is named and described with escape sequences and a bidi
/// override, holding a TXT lookup whose qname and answer carry them too.
fn hostile_pcapng() -> Vec<u8> {
    let mut shb = 0x1a2b_3c4du32.to_le_bytes().to_vec();
    shb.extend_from_slice(&[1, 0, 0, 0]);
    shb.extend_from_slice(&(-1i64).to_le_bytes());
    shb.extend(option(0, b""));
    let mut idb = vec![101, 0, 0, 0];
    idb.extend_from_slice(&65535u32.to_le_bytes());
    idb.extend(option(2, "\x1b[31meth\u{202e}0".as_bytes()));
    idb.extend(option(3, b"desc \x1b]0;pwned\x07"));
    idb.extend(option(0, b""));
    let labels: &[&[u8]] = &[b"\x1b[2J", "evil\u{202e}".as_bytes(), b"example"];
    let query = dns_message(0x1234, 0x0100, labels, 16, &[], 0);
    let txt = b"\x1b[2Jhello\x1b]0;x\x07\x9b31m";
    let mut answer = vec![0xc0, 0x0c, 0, 16, 0, 1, 0, 0, 0, 60];
    answer.extend_from_slice(&(txt.len() as u16 + 1).to_be_bytes());
    answer.push(txt.len() as u8);
    answer.extend_from_slice(txt);
    let response = dns_message(0x1234, 0x8180, labels, 16, &answer, 1);
    let mut f = block(0x0a0d_0d0a, &shb);
    f.extend(block(1, &idb));
    for (i, p) in [
        ipv4_udp([10, 0, 0, 1], [10, 0, 0, 2], 40000, 53, &query),
        ipv4_udp([10, 0, 0, 2], [10, 0, 0, 1], 53, 40000, &response),
    ]
    .iter()
    .enumerate()
    {
        let ts = 1_700_000_000_000_000u64 + i as u64 * 1000;
        let mut epb = 0u32.to_le_bytes().to_vec();
        epb.extend_from_slice(&((ts >> 32) as u32).to_le_bytes());
        epb.extend_from_slice(&(ts as u32).to_le_bytes());
        epb.extend_from_slice(&(p.len() as u32).to_le_bytes());
        epb.extend_from_slice(&(p.len() as u32).to_le_bytes());
        epb.extend_from_slice(p);
        epb.resize(epb.len().next_multiple_of(4), 0);
        f.extend(block(6, &epb));
    }
    f
}

/// Raw ESC, CSI (U+009B), BEL, or a bidi override anywhere in `out`.
fn raw_controls(out: &str) -> Vec<char> {
    out.chars()
        .filter(|&c| matches!(c, '\x1b' | '\x07' | '\u{9b}' | '\u{202e}'))
        .collect()
}

#[test]
fn names_and_data_from_a_file_are_escaped() {
    let dir = Scratch::new("err", 0o700).unwrap();
    let path = dir.join("hostile.pcapng");
    fs::write(&path, hostile_pcapng()).unwrap();
    for output in ["text", "json"] {
        let Some(run) = replay(&["--packets", "--output", output], &path) else {
            return;
        };
        assert!(
            run.status.is_some_and(|s| s.success()),
            "{}",
            run.describe()
        );
        let all = format!("{}{}", run.stdout, run.stderr);
        assert_eq!(
            raw_controls(&all),
            Vec::<char>::new(),
            "--output {output}:\n{all}"
        );
        // Escaped, not dropped: the reader still sees what was there. JSON also holds
        // them escaped once decoded, for `jq -r` and other tools that print values.
        let (iface, data) = (r"\x1b[31meth\u{202e}0", r"\x1b[2Jhello\x1b]0;x\x07");
        if output == "json" {
            let trace = Trace::parse(&run.stdout, run.stderr.clone()).unwrap();
            let p = &trace.packets[1];
            assert_eq!(p["iface"], iface, "{p}");
            assert!(
                p["answers"][0]["data"].as_str().unwrap().starts_with(data),
                "{p}"
            );
            assert_eq!(trace.summary["replay"]["interfaces"][0], iface);
        } else {
            assert!(all.contains(iface) && all.contains(data), "{all}");
        }
    }
}

/// An empty capture is whole, not cut.
#[test]
fn empty_file_is_complete() {
    let dir = Scratch::new("err", 0o700).unwrap();
    let path = dir.join("one.pcap");
    fs::write(&path, pcap_raw_ip(&[])).unwrap();
    let Some(run) = replay(&["--output", "json", "--strict"], &path) else {
        return;
    };
    assert_eq!(
        run.status.and_then(|s| s.code()),
        Some(0),
        "{}",
        run.describe()
    );
}

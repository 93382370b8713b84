//! `--client`, `--qname` and `--verdict` (issue 10, part 3, in the collector): which
//! lookups are written out, and which packets go to the pcapng, checked with the real
//! binary on a capture made here and with tshark reading the pcapng. Every lookup is still
//! stitched and counted. Needs no privileges, only the binary named by DNSTRACE_BIN
//! (`cargo xtask test` sets it).
use std::path::{Path, PathBuf};
use std::process::Command;

use dnstrace_tests::scratch::{dns_message, ipv4_udp, pcap_raw_ip_at};
use dnstrace_tests::{Trace, dnstrace_bin, replay};

const A: [u8; 4] = [10, 0, 0, 1];
const B: [u8; 4] = [10, 1, 0, 1];
const SERVER: [u8; 4] = [10, 0, 0, 53];
/// Seconds, in µs.
const S: u64 = 1_000_000;

fn q(id: u16, labels: &[&[u8]]) -> Vec<u8> {
    dns_message(id, 0x0100, labels, 1, &[], 0)
}

fn r(id: u16, labels: &[&[u8]], rcode: u16) -> Vec<u8> {
    dns_message(id, 0x8180 | rcode, labels, 1, &[], 0)
}

/// Four lookups: A asks www.example.test (NOERROR), B asks api.corp (NXDOMAIN, still
/// `ok`), A asks x.example.test (never answered: the file goes on for 20 s), B asks
/// late.corp at 20 s (NOERROR). Seven packets.
fn capture(dir: &Path) -> PathBuf {
    let www: &[&[u8]] = &[b"www", b"example", b"test"];
    let api: &[&[u8]] = &[b"api", b"corp"];
    let x: &[&[u8]] = &[b"x", b"example", b"test"];
    let late: &[&[u8]] = &[b"late", b"corp"];
    let packets = vec![
        (0, ipv4_udp(A, SERVER, 40001, 53, &q(1, www))),
        (1_000, ipv4_udp(SERVER, A, 53, 40001, &r(1, www, 0))),
        (10_000, ipv4_udp(B, SERVER, 40002, 53, &q(2, api))),
        (11_000, ipv4_udp(SERVER, B, 53, 40002, &r(2, api, 3))),
        (20_000, ipv4_udp(A, SERVER, 40003, 53, &q(3, x))),
        (20 * S, ipv4_udp(B, SERVER, 40004, 53, &q(4, late))),
        (
            20 * S + 1_000,
            ipv4_udp(SERVER, B, 53, 40004, &r(4, late, 0)),
        ),
    ];
    let path = dir.join("four-lookups.pcap");
    std::fs::write(&path, pcap_raw_ip_at(&packets)).unwrap();
    path
}

fn names(t: &Trace) -> Vec<String> {
    let mut v: Vec<String> = t
        .lookups
        .iter()
        .map(|l| format!("{} {}", l["qname"].as_str().unwrap(), l["verdict"]))
        .collect();
    v.sort();
    v
}

fn not_shown(t: &Trace) -> u64 {
    t.summary["lookups"]["not_shown"].as_u64().unwrap_or(0)
}

#[test]
fn each_filter_selects_its_lookups_and_the_rest_are_counted() {
    if dnstrace_bin().is_none() {
        eprintln!("SKIP: DNSTRACE_BIN is not set (run with cargo xtask test)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let file = capture(tmp.path());
    let all = replay(&file, &[]).unwrap();
    assert_eq!(
        names(&all),
        [
            "api.corp. \"ok\"",
            "late.corp. \"ok\"",
            "www.example.test. \"ok\"",
            "x.example.test. \"unanswered\""
        ]
    );
    assert_eq!(not_shown(&all), 0);
    for (args, want) in [
        (
            vec!["--verdict", "problems"],
            vec!["x.example.test. \"unanswered\""],
        ),
        (
            vec!["--client", "10.1.0.0/16"],
            vec!["api.corp. \"ok\"", "late.corp. \"ok\""],
        ),
        (
            vec!["--qname", "*.example.test"],
            vec!["www.example.test. \"ok\"", "x.example.test. \"unanswered\""],
        ),
        (
            vec!["--qname", "WWW.Example.Test."],
            vec!["www.example.test. \"ok\""],
        ),
        (
            vec!["--client", "10.0.0.1", "--verdict", "ok"],
            vec!["www.example.test. \"ok\""],
        ),
        (
            vec!["--client", "10.9.0.0/16,10.1.0.1", "--qname", "late.*"],
            vec!["late.corp. \"ok\""],
        ),
    ] {
        let t = replay(&file, &args).unwrap();
        assert_eq!(names(&t), want, "{args:?}");
        assert_eq!(not_shown(&t), (4 - want.len()) as u64, "{args:?}");
        // Still stitched and counted: the summary has every verdict.
        assert_eq!(
            t.summary["lookups"]["finished"].as_u64(),
            Some(4),
            "{args:?}"
        );
    }
}

#[test]
fn the_pcapng_holds_only_the_packets_of_the_lookups_shown() {
    if dnstrace_bin().is_none() {
        eprintln!("SKIP: DNSTRACE_BIN is not set (run with cargo xtask test)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let file = capture(tmp.path());
    let frames = |pcap: &Path| -> Vec<String> {
        let out = Command::new("tshark")
            .args(["-r"])
            .arg(pcap)
            .args(["-T", "fields", "-e", "dns.qry.name"])
            .output()
            .expect("tshark runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let every = tmp.path().join("every.pcapng");
    replay(&file, &["--pcap", every.to_str().unwrap()]).unwrap();
    assert_eq!(frames(&every).len(), 7);
    let problems = tmp.path().join("problems.pcapng");
    let t = replay(
        &file,
        &[
            "--verdict",
            "problems",
            "--pcap",
            problems.to_str().unwrap(),
        ],
    )
    .unwrap();
    assert_eq!(frames(&problems), ["x.example.test"]);
    assert_eq!(
        t.summary["pcap"]["not_shown"].as_u64(),
        Some(6),
        "{}",
        t.summary
    );
}

#[test]
fn a_bad_filter_is_exit_2_naming_the_flag() {
    let Some(bin) = dnstrace_bin() else {
        eprintln!("SKIP: DNSTRACE_BIN is not set (run with cargo xtask test)");
        return;
    };
    for (flag, value, says) in [
        ("--verdict", "okay", "unknown verdict"),
        ("--client", "10.0.0.0/33", "CIDR"),
        ("--qname", "[a", "--qname"),
    ] {
        let out = Command::new(&bin)
            .args(["replay", flag, value, "/nonexistent.pcap"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {err}");
        assert!(
            err.contains(says) && err.contains(flag),
            "{flag} {value}: {err}"
        );
    }
}

/// `--packets` with a filter: a packet line is written once its lookup has ended and was
/// shown, in the capture's order; the others are counted.
#[test]
fn packet_lines_follow_their_lookups() {
    let Some(bin) = dnstrace_bin() else {
        eprintln!("SKIP: DNSTRACE_BIN is not set (run with cargo xtask test)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let file = capture(tmp.path());
    let qnames = |t: &Trace| -> Vec<String> {
        t.packets
            .iter()
            .map(|p| p["qname"].as_str().unwrap_or("?").to_owned())
            .collect()
    };
    let all = replay(&file, &["--packets"]).unwrap();
    assert_eq!(all.packets.len(), 7);
    let corp = replay(&file, &["--packets", "--qname", "*.corp"]).unwrap();
    assert_eq!(
        qnames(&corp),
        ["api.corp.", "api.corp.", "late.corp.", "late.corp."]
    );
    assert_eq!(
        corp.summary["lookups"]["packets_not_shown"].as_u64(),
        Some(3)
    );
    let problems = replay(&file, &["--packets", "--verdict", "problems"]).unwrap();
    assert_eq!(qnames(&problems), ["x.example.test."]);
    // Text: the column header once, then the lines shown.
    let out = Command::new(bin)
        .args(["replay", "--packets", "--qname", "*.corp"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("QUESTION / RESULT").count(), 1, "{text}");
    assert!(!text.contains("example.test"), "{text}");
    assert_eq!(text.matches("late.corp").count(), 3, "{text}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("3 packet lines not shown"), "{stderr}");
}

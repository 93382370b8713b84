//! `--port` with several ports, through the real programs: the kernel's port table ends
//! at its first repeated port (`RawConfig::set_ports`), so each listed port must be traced
//! and a port next to them must not. A client queries an echo server on four ports, the
//! tracer on the client's veth lists three of them (out of order, one twice).
//! Needs root and DNSTRACE_BIN (run with `cargo xtask test`).
use std::time::Duration;

use dnstrace_tests::{ECHO_PY, Lab, Signal, Tracer, VethEnd, dnstrace_bin, skip_without_root};

const PYTHON: &str = "/usr/bin/python3";
/// Ports no other test uses: the first three are traced, the last is not.
const TRACED: [u16; 3] = [10153, 10253, 10353];
const UNTRACED: u16 = 10453;

/// One A query for p<PORT>.ports.test to SERVER on each of the PORTS, each answered.
const CLIENT: &str = r#"
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
for i, port in enumerate(sys.argv[2:]):
    q = struct.pack(">HHHHHH", 0x5000 + i, 0x0100, 1, 0, 0, 0)
    for label in ("p" + port, "ports", "test"):
        q += bytes([len(label)]) + label.encode()
    q += b"\x00\x00\x01\x00\x01"
    s.sendto(q, (sys.argv[1], int(port)))
    r, _ = s.recvfrom(4096)
    assert r[:2] == q[:2] and r[2] & 0x80, r
print("answered", len(sys.argv) - 2)
"#;

#[test]
fn each_listed_port_is_traced_and_no_other() {
    if skip_without_root() || dnstrace_bin().is_none() {
        return;
    }
    let lab = Lab::new("prt").expect("lab");
    let cli = lab.add_netns("cli").expect("netns");
    let srv = lab.add_netns("srv").expect("netns");
    let (c, s) = (format!("{}c", lab.prefix()), format!("{}s", lab.prefix()));
    lab.add_veth(
        &VethEnd {
            ns: &cli,
            name: &c,
            addrs: &["10.249.0.1/30"],
        },
        &VethEnd {
            ns: &srv,
            name: &s,
            addrs: &["10.249.0.2/30"],
        },
    )
    .expect("veth");
    let all: Vec<String> = TRACED
        .iter()
        .chain([&UNTRACED])
        .map(u16::to_string)
        .collect();
    let mut echo_args = vec!["10.249.0.2"];
    echo_args.extend(all.iter().map(String::as_str));
    lab.start_python(&srv, "echo", ECHO_PY, &echo_args)
        .expect("echo server");

    // Out of order and one of them twice: the table holds each once.
    let listed = format!("{},{},{},{}", TRACED[2], TRACED[0], TRACED[1], TRACED[2]);
    let tracer = Tracer::start_lookups(&lab, &cli, "ports", &["-i", &c, "--port", &listed])
        .expect("start dnstrace");
    let client = lab.write_file("client.py", CLIENT).expect("script");
    let mut args = vec![PYTHON, client.to_str().unwrap(), "10.249.0.2"];
    args.extend(all.iter().map(String::as_str));
    let out = lab.run(&cli, &args).expect("client");
    assert!(out.contains("answered 4"), "{out}");
    std::thread::sleep(Duration::from_millis(500));
    let trace = tracer.stop(Signal::Int).expect("stop dnstrace");
    eprintln!("{}", trace.stderr);

    let mut servers: Vec<String> = trace
        .lookups
        .iter()
        .map(|l| {
            assert_eq!(l["verdict"], "ok", "{l}");
            l["server"].as_str().expect("a server").to_owned()
        })
        .collect();
    servers.sort();
    let want: Vec<String> = TRACED.iter().map(|p| format!("10.249.0.2:{p}")).collect();
    assert_eq!(
        servers, want,
        "one lookup per listed port, none on {UNTRACED}"
    );
    // Each traced query and its answer, once each way through the veth; the untraced
    // pair is not even counted as DNS.
    let seen = trace.summary["kernel"]["dns_seen"]
        .as_u64()
        .expect("a counter");
    assert_eq!(seen, 2 * TRACED.len() as u64, "{}", trace.summary["kernel"]);
}

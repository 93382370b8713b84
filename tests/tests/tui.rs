//! The real `dnstrace watch --output tui` on a lab node, in a tmux pane: real
//! queries from the pod, real keys sent to the pane, and assertions on what is
//! on screen; then `q`, a restored terminal, exit 0 and nothing left attached.
//!
//! Needs root, `DNSTRACE_BIN` (run it with `cargo xtask test`) and tmux.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, PoisonError},
    thread,
    time::{Duration, Instant},
};

use dnstrace_tests::{Lab, Node, dnstrace_bin, program_ids, skip_without_root};

const WAIT: Duration = Duration::from_secs(20);

/// The socket hop sees every netns, so two of these runs at once would see each
/// other's lookups: they take turns.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
const COLS: u16 = 120;
const ROWS: u16 = 40;

/// A tmux server of our own (`-L`), so nothing of a user's tmux is touched;
/// killed on drop, with whatever runs in it.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// A detached `cols`×`rows` session running `command` under `sh -c`.
    fn start(socket: &str, command: &str, cols: u16, rows: u16) -> Tmux {
        let t = Tmux {
            socket: socket.to_owned(),
        };
        let status = Command::new("tmux")
            .args(["-L", socket, "-f", "/dev/null", "new-session", "-d"])
            .args([
                "-s",
                "tui",
                "-x",
                &cols.to_string(),
                "-y",
                &rows.to_string(),
            ])
            .arg(command)
            .status()
            .expect("run tmux (installed by `cargo xtask setup`)");
        assert!(status.success(), "tmux new-session: {status}");
        t
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("run tmux");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The visible text of the pane.
    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", "tui"])
    }

    /// A tmux pane variable, e.g. `alternate_on`.
    fn var(&self, name: &str) -> String {
        self.tmux(&[
            "display-message",
            "-p",
            "-t",
            "tui",
            &format!("#{{{name}}}"),
        ])
        .trim()
        .to_owned()
    }

    /// Key names as `tmux send-keys` takes them: "Enter", "Escape", "BSpace", "q"…
    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "tui"];
        args.extend_from_slice(keys);
        self.tmux(&args);
    }

    /// Types `text` literally.
    fn type_text(&self, text: &str) {
        self.tmux(&["send-keys", "-t", "tui", "-l", text]);
    }

    /// Waits until the screen satisfies `ok`; returns it, or fails showing it.
    fn wait(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; the screen:\n{s}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

/// Ids of loaded programs whose name starts with `dt_`.
fn dt_programs(lab: &Lab, ns: &str) -> Vec<u64> {
    program_ids(lab, ns, "dt_").expect("bpftool prog show")
}

/// The number after `label` on the screen, e.g. "packets 57 (…)" → 57.
fn number_after(screen: &str, label: &str) -> u64 {
    let at = screen
        .find(label)
        .unwrap_or_else(|| panic!("{label:?} not on screen:\n{screen}"));
    screen[at + label.len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("no number after {label:?}:\n{screen}"))
}

/// The rows of the flow list (between its column header and the next panel).
fn list_rows(screen: &str) -> Vec<&str> {
    screen
        .lines()
        .skip_while(|l| !l.contains("TIME (UTC)"))
        .skip(1)
        .take_while(|l| !l.contains("─"))
        .filter(|l| !l.trim().is_empty())
        .collect()
}

fn dig(node: &Node, server: impl std::fmt::Display, name: &str) {
    let out = node
        .query(&node.pod_ns, server, name, "A", &[])
        .expect("dig");
    assert!(out.stdout.contains("status: "), "no reply: {}", out.stdout);
}

/// `dnstrace watch --auto --output tui` in a tmux pane, in the node netns.
struct Run {
    tmux: Tmux,
    /// dnstrace's ready file (holds its pid).
    ready: PathBuf,
    log: PathBuf,
    /// `stty -a` of the pane once dnstrace has exited.
    after: PathBuf,
    /// dt_* programs loaded before it started.
    before: Vec<u64>,
    /// dt_* programs that appeared once it was ready: its own.
    ours: Mutex<Vec<u64>>,
}

impl Run {
    fn start(node: &Node, bin: &Path) -> Run {
        let dir = node.lab.dir().to_owned();
        let (ready, log, after) = (dir.join("ready"), dir.join("tui.log"), dir.join("after"));
        let before = dt_programs(&node.lab, &node.node_ns);
        // nsenter --net: setns only, so dnstrace keeps this process's mounts (cgroup2).
        let command = format!(
            "nsenter --net=/run/netns/{ns} {bin} watch --auto --output tui --log-file {log} \
             --ready-file {ready}; echo \"dnstrace exit status $?\"; stty -a > {after}; sleep 600",
            ns = node.node_ns,
            bin = bin.display(),
            log = log.display(),
            ready = ready.display(),
            after = after.display(),
        );
        let socket = format!("dnstrace-test-{}", node.lab.prefix());
        Run {
            tmux: Tmux::start(&socket, &command, COLS, ROWS),
            ready,
            log,
            after,
            before,
            ours: Mutex::new(Vec::new()),
        }
    }

    /// Notes the programs dnstrace loaded (call once it is ready).
    fn note_programs(&self, node: &Node) {
        let ours: Vec<u64> = dt_programs(&node.lab, &node.node_ns)
            .into_iter()
            .filter(|id| !self.before.contains(id))
            .collect();
        assert!(
            ours.len() >= 3,
            "tc, socket and drop programs loaded: {ours:?}"
        );
        *self.ours.lock().unwrap_or_else(PoisonError::into_inner) = ours;
    }

    /// After dnstrace exited: the terminal is back to normal and nothing of it is loaded.
    fn check_restored(&self, node: &Node) {
        let tmux = &self.tmux;
        assert_eq!(tmux.var("alternate_on"), "0", "left the alternate screen");
        assert_eq!(tmux.var("cursor_flag"), "1", "cursor shown again");
        let deadline = Instant::now() + WAIT;
        while !self.after.exists() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        let stty = fs::read_to_string(&self.after).expect("stty -a after exit");
        let flags: Vec<&str> = stty.split_whitespace().collect();
        for f in ["icanon", "echo", "isig", "opost"] {
            assert!(
                flags.contains(&f),
                "terminal left in raw mode ({f}): {stty}"
            );
        }
        // Other tests on this machine may load their own dnstrace meanwhile: only the
        // programs seen while this one ran must be gone (tcx and bpf_link die with it).
        let ours = self
            .ours
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        assert!(!ours.is_empty(), "note_programs was called");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left: Vec<u64> = dt_programs(&node.lab, &node.node_ns)
                .into_iter()
                .filter(|id| ours.contains(id))
                .collect();
            if left.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "dnstrace programs still loaded: {left:?}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A name only this lab asks for (NXDOMAIN upstream): other labs running at the
/// same time are visible through the socket hop, so assertions look for these.
fn unique(node: &Node, what: &str) -> String {
    format!("{}-{what}.example.test", node.lab.prefix())
}

/// The rows of the list that mention `name`.
fn rows_with<'a>(screen: &'a str, name: &str) -> Vec<&'a str> {
    list_rows(screen)
        .into_iter()
        .filter(|r| r.contains(name))
        .collect()
}

#[test]
fn tui_in_tmux_shows_lookups_and_takes_keys() {
    if skip_without_root() {
        return;
    }
    let Some(bin) = dnstrace_bin() else { return };
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    let node = Node::new("tui").expect("lab node");
    let run = Run::start(&node, &bin);
    let (tmux, ready, log) = (&run.tmux, &run.ready, &run.log);

    // The header shows as soon as it is attached.
    let started = Instant::now();
    let s = tmux.wait("the header", |s| {
        s.contains("dnstrace watch · netns") && s.contains("LIVE")
    });
    let up_in = started.elapsed();
    assert!(ready.exists(), "drawn after the ready file");
    run.note_programs(&node);
    assert!(s.contains("socket hop (every netns)"), "{s}");
    assert!(s.contains("kernel drops"), "{s}");
    assert!(s.contains(&format!("uplink {}", node.uplink)), "{s}");
    assert!(s.contains("interfaces, all of this netns: lo"), "{s}");
    assert_eq!(tmux.var("alternate_on"), "1", "on the alternate screen");

    // Real lookups from the pod. Other labs on this machine show up too (the socket hop
    // sees every netns), so this lab's own lookups are found by names only it asks for.
    let p = node.lab.prefix().to_owned();
    let (nx, dnat) = (unique(&node, "nx"), unique(&node, "dnat"));
    dig(&node, node.nodelocal_ip, &node.www_name);
    dig(&node, node.nodelocal_ip, &nx);
    dig(&node, node.cluster_ip, &dnat);
    // The counters come a tick (0.1 s) after the lookups.
    let s = tmux.wait("the lookups and their counters", |s| {
        !rows_with(s, &nx).is_empty()
            && !rows_with(s, &dnat).is_empty()
            && number_after(s, "lookups ") >= 3
    });
    assert!(
        list_rows(&s)[0].starts_with('▶'),
        "the top row is selected:\n{s}"
    );
    assert!(number_after(&s, "packets ") >= 10, "{s}");
    assert!(number_after(&s, "lookups ") >= 3, "{s}");
    assert!(number_after(&s, "│ ok ") >= 3, "verdict totals: {s}");
    number_after(&s, "lost in kernel ");
    number_after(&s, "dropped ");
    let s = tmux.wait("the upstream panel", |s| {
        s.contains(&format!("{}:53", node.resolver_ip))
    });
    assert!(s.contains(" upstreams "), "{s}");

    // `/` + text + Enter: only the lookups whose qname or client contains it.
    tmux.keys(&["/"]);
    tmux.type_text(&p);
    tmux.wait("the filter being typed", |s| {
        s.contains(&format!("filter: {p}"))
    });
    tmux.keys(&["Enter"]);
    let s = tmux.wait("the filter applied", |s| {
        s.contains(&format!("filter \"{p}\""))
    });
    let rows = list_rows(&s);
    assert_eq!(rows.len(), 2, "{s}");
    assert!(
        rows[0].contains(&dnat) && rows[1].contains(&nx),
        "latest first:\n{s}"
    );
    for row in &rows {
        assert!(row.contains("10.244.0.10:"), "client: {row}");
        assert!(row.contains("NXDOMAIN") && row.contains(" ok "), "{row}");
    }
    // Esc while typing another one keeps the filter in force.
    tmux.keys(&["/", "x", "Escape"]);
    thread::sleep(Duration::from_millis(300));
    let s = tmux.wait("the filter kept", |s| {
        s.contains(&format!("filter \"{p}\""))
    });
    assert_eq!(list_rows(&s).len(), 2, "{s}");

    // `v`: problems only (none of ours), then each verdict seen, back to all.
    tmux.keys(&["v"]);
    let s = tmux.wait("the problems filter", |s| s.contains("verdicts problems"));
    assert!(s.contains("no lookup matches the filter"), "{s}");
    tmux.keys(&["v"]);
    let s = tmux.wait("verdict ok only", |s| {
        s.contains("verdicts ok") && list_rows(s).len() == 2
    });
    assert!(list_rows(&s).iter().all(|r| r.contains(" ok ")), "{s}");
    for _ in 0..14 {
        if tmux.screen().contains("verdicts all") {
            break;
        }
        tmux.keys(&["v"]);
        thread::sleep(Duration::from_millis(150));
    }
    tmux.wait("all verdicts", |s| s.contains("verdicts all"));

    // Enter on the ClusterIP lookup (the top row): its detail, with the DNAT visible.
    tmux.keys(&["Home", "Enter"]);
    let s = tmux.wait("the detail pane", |s| {
        s.contains("detail ([ ] scroll, Enter closes)")
    });
    assert!(s.contains(&format!("A {dnat}.  from 10.244.0.10:")), "{s}");
    assert!(s.contains("verdict  ok"), "{s}");
    assert!(s.contains(&format!("to {}:53", node.cluster_ip)), "{s}");
    assert!(s.contains("socket-out"), "the socket hop: {s}");
    assert!(
        s.contains(&format!("→ {}:53", node.cluster_ip))
            && s.contains(&format!("→ {}:53", node.cdns_ip)),
        "before and after the DNAT:\n{s}"
    );
    assert!(s.contains(" NAT"), "{s}");
    assert!(s.contains("EDNS     client"), "{s}");
    let detail = s;
    tmux.keys(&["Enter"]);
    tmux.wait("the detail closed", |s| !s.contains("detail ([ ]"));

    // `p`: new lookups are counted, not listed, until resumed.
    tmux.keys(&["p"]);
    let s = tmux.wait("paused", |s| s.contains("PAUSED, "));
    let held = list_rows(&s).join("\n");
    let pending = number_after(&s, "PAUSED, ");
    let late = unique(&node, "late");
    dig(&node, node.nodelocal_ip, &late);
    let s = tmux.wait("the pending lookup", |s| {
        number_after(s, "PAUSED, ") > pending
    });
    assert_eq!(list_rows(&s).join("\n"), held, "the list did not move");
    tmux.keys(&["p"]);
    let s = tmux.wait("resumed", |s| {
        s.contains("LIVE") && !rows_with(s, &late).is_empty()
    });
    assert_eq!(list_rows(&s).len(), 3, "{s}");

    // Clear the filter: everything again, ours and the www lookup among them.
    tmux.keys(&["/"]);
    for _ in 0..p.len() {
        tmux.keys(&["BSpace"]);
    }
    tmux.keys(&["Enter"]);
    let s = tmux.wait("no filter", |s| s.contains("filter none"));
    assert!(list_rows(&s).len() >= 4, "{s}");

    // `?`: help; any key closes it.
    tmux.keys(&["?"]);
    tmux.wait("help", |s| s.contains("dnstrace keys"));
    tmux.keys(&["Escape"]);
    tmux.wait("help closed", |s| !s.contains("dnstrace keys"));

    // Save a capture for the README / report: the ClusterIP lookup's detail.
    let saved = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tui-capture.txt");
    fs::write(&saved, &detail).expect("save the capture");
    eprintln!(
        "dnstrace drew its first screen {up_in:?} after start; capture saved to {}:\n{detail}",
        saved.display()
    );

    // `q`: clean exit, summary on the restored terminal, nothing left attached.
    tmux.keys(&["q"]);
    let s = tmux.wait("dnstrace to exit", |s| s.contains("dnstrace exit status"));
    assert!(s.contains("dnstrace exit status 0"), "{s}");
    assert!(s.contains("dnstrace: quit, detached"), "{s}");
    assert!(number_after(&s, "dnstrace: lookups: ") >= 4, "{s}");
    assert!(
        s.contains(&format!("dnstrace: log in {}", log.display())),
        "{s}"
    );
    assert!(
        !s.contains("TIME (UTC)"),
        "the TUI is gone from the screen:\n{s}"
    );
    assert!(log.exists(), "the log file was created");
    run.check_restored(&node);
}

#[test]
fn tui_gives_the_terminal_back_on_sigterm() {
    if skip_without_root() {
        return;
    }
    let Some(bin) = dnstrace_bin() else { return };
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    let node = Node::new("tuit").expect("lab node");
    let run = Run::start(&node, &bin);
    run.tmux.wait("the header", |s| s.contains("LIVE"));
    run.note_programs(&node);
    let name = unique(&node, "term");
    dig(&node, node.nodelocal_ip, &name);
    run.tmux
        .wait("the lookup", |s| !rows_with(s, &name).is_empty());
    let pid: i32 = fs::read_to_string(&run.ready)
        .expect("ready file")
        .trim()
        .parse()
        .expect("pid in the ready file");
    // SAFETY: plain syscall; the pid is dnstrace's, which is still running.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let s = run
        .tmux
        .wait("dnstrace to exit", |s| s.contains("dnstrace exit status"));
    assert!(s.contains("dnstrace exit status 0"), "{s}");
    assert!(s.contains("dnstrace: SIGTERM received, detached"), "{s}");
    assert!(number_after(&s, "dnstrace: lookups: ") >= 1, "{s}");
    run.check_restored(&node);
}

/// `dnstrace replay FILE --output tui` (no privileges): the file's lookups and
/// verdicts on screen, the view stays after the file ends, Enter shows the
/// verdict's detail, `q` quits with status 0 and the terminal restored.
#[test]
fn replay_in_the_tui_stays_until_q() {
    let Some(bin) = dnstrace_bin() else { return };
    let file =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/tcpdump-dns-badvers.pcap");
    if !file.is_file() {
        eprintln!("skipped: {} is absent", file.display());
        return;
    }
    let dir = std::env::temp_dir().join(format!("dnstrace-tui-replay-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("temp dir");
    let log = dir.join("replay.log");
    let command = format!(
        "{bin} replay {file} --output tui --log-file {log}; echo \"dnstrace exit status $?\"; sleep 600",
        bin = bin.display(),
        file = file.display(),
        log = log.display(),
    );
    let tmux = Tmux::start(
        &format!("dnstrace-test-replay-{}", std::process::id()),
        &command,
        COLS,
        ROWS,
    );
    let screen = tmux.wait("the file's lookups", |s| {
        s.contains("upstream_rejects_edns")
    });
    assert!(
        screen.contains("replay "),
        "the header names the source:\n{screen}"
    );
    assert!(screen.contains("TXT"), "{screen}");
    // The file has ended, and the view is still there.
    thread::sleep(Duration::from_millis(500));
    assert_eq!(
        tmux.var("alternate_on"),
        "1",
        "still on screen after the file ended"
    );
    // Select the problem row and open its detail.
    let rows = list_rows(&screen);
    let at = rows
        .iter()
        .position(|r| r.contains("rejects-edns"))
        .expect("a problem row");
    for _ in 0..at {
        tmux.keys(&["Down"]);
    }
    tmux.keys(&["Enter"]);
    let detail = tmux.wait("the detail", |s| {
        s.contains("BADVERS") && s.contains("hint")
    });
    assert!(detail.contains("192.5.5.241"), "{detail}");
    tmux.keys(&["q"]);
    let end = tmux.wait("the exit", |s| s.contains("dnstrace exit status"));
    assert!(end.contains("dnstrace exit status 0"), "{end}");
    assert_eq!(
        tmux.var("alternate_on"),
        "0",
        "the alternate screen is left"
    );
    assert!(end.contains("log in"), "{end}");
    let _ = fs::remove_dir_all(&dir);
}

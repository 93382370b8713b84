//! The files dnstrace writes, in folders other users can write to (issue 8, finding 8):
//! `--pcap` must not follow a symlink another user planted nor write into a file another
//! user created first, and the TUI's default log must not accept a FIFO or file someone
//! else put at its path (nor hang on the FIFO). Runs the real binary (DNSTRACE_BIN) as
//! root and as `nobody`, in scratch folders made like /tmp (mode 1777). Needs root.
use std::{
    fs,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use dnstrace_tests::scratch::{Bounded, NOBODY, Scratch, as_nobody, pcap_one_lookup, run_bounded};

/// Longer than a refused run takes, far shorter than a hang.
const LIMIT: Duration = Duration::from_secs(20);

fn setup() -> Option<PathBuf> {
    if dnstrace_tests::skip_without_root() {
        return None;
    }
    dnstrace_tests::dnstrace_bin()
}

/// Exited on its own with an error status (not killed at the limit, not a crash).
fn refused(run: &Bounded) -> bool {
    run.status.and_then(|s| s.code()).is_some_and(|c| c != 0)
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).unwrap();
}

fn mkfifo(path: &Path) {
    let st = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(st.success(), "mkfifo {}", path.display());
}

/// The input every run replays, readable by anyone.
fn input(dir: &Scratch) -> PathBuf {
    let p = dir.join("in.pcap");
    fs::write(&p, pcap_one_lookup()).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
    p
}

fn replay_pcap(bin: &Path, input: &Path, out: &Path) -> Bounded {
    let mut cmd = Command::new(bin);
    cmd.args(["replay", "--output", "json", "--pcap"])
        .arg(out)
        .arg(input);
    run_bounded(&mut cmd, LIMIT).unwrap()
}

/// A root-owned file elsewhere that a planted symlink points at.
fn precious(dir: &Scratch) -> PathBuf {
    let p = dir.join("precious");
    fs::write(&p, "root's data\n").unwrap();
    p
}

#[test]
fn pcap_refuses_a_symlink_planted_by_another_user() {
    let Some(bin) = setup() else { return };
    let private = Scratch::new("files", 0o700).unwrap();
    let shared = Scratch::new("files", 0o1777).unwrap();
    let target = precious(&private);
    let input = input(&shared);
    let planted = shared.join("capture.pcapng");
    std::os::unix::fs::symlink(&target, &planted).unwrap();
    chown(&planted, NOBODY);

    let run = replay_pcap(&bin, &input, &planted);
    assert!(refused(&run), "{}", run.describe());
    assert_eq!(fs::read_to_string(&target).unwrap(), "root's data\n");
    let err = run.stderr.trim_end();
    assert!(
        err.contains("refused") && err.contains("symbolic link owned by uid 65534"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn pcap_refuses_a_file_another_user_created_first() {
    let Some(bin) = setup() else { return };
    let shared = Scratch::new("files", 0o1777).unwrap();
    let input = input(&shared);
    // The other user wants to read what root captures.
    let planted = shared.join("capture.pcapng");
    fs::write(&planted, "mine\n").unwrap();
    fs::set_permissions(&planted, fs::Permissions::from_mode(0o666)).unwrap();
    chown(&planted, NOBODY);

    let run = replay_pcap(&bin, &input, &planted);
    assert!(refused(&run), "{}", run.describe());
    assert_eq!(fs::read_to_string(&planted).unwrap(), "mine\n");
    assert!(run.stderr.contains("of uid 65534"), "{}", run.stderr);
}

#[test]
fn pcap_in_a_shared_folder_is_written_0600_and_rewritten() {
    let Some(bin) = setup() else { return };
    let shared = Scratch::new("files", 0o1777).unwrap();
    let input = input(&shared);
    let out = shared.join("capture.pcapng");
    for _ in 0..2 {
        let run = replay_pcap(&bin, &input, &out);
        assert!(
            run.status.is_some_and(|s| s.success()),
            "{}",
            run.describe()
        );
    }
    let meta = fs::metadata(&out).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!(meta.uid(), 0);
    // Rewritten, not appended: one section header at the start, none later.
    let bytes = fs::read(&out).unwrap();
    let shb = [0x0a, 0x0d, 0x0d, 0x0a];
    assert_eq!(&bytes[..4], &shb);
    assert_eq!(bytes.windows(4).filter(|w| *w == shb).count(), 1);
}

#[test]
fn pcap_to_a_named_fifo_needs_its_reader_and_never_hangs() {
    let Some(bin) = setup() else { return };
    let private = Scratch::new("files", 0o700).unwrap();
    let input = input(&private);
    let fifo = private.join("live.pcapng");
    mkfifo(&fifo);
    let run = replay_pcap(&bin, &input, &fifo);
    assert!(refused(&run), "{}", run.describe());
    assert!(run.stderr.contains("no reader"), "{}", run.stderr);

    // With a reader, the FIFO is what the user asked for.
    let copy = private.join("copy.pcapng");
    let mut reader = Command::new("sh")
        .arg("-c")
        .arg(format!("cat {} > {}", fifo.display(), copy.display()))
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let run = replay_pcap(&bin, &input, &fifo);
    assert!(
        run.status.is_some_and(|s| s.success()),
        "{}",
        run.describe()
    );
    assert!(reader.wait().unwrap().success());
    assert_eq!(&fs::read(&copy).unwrap()[..4], &[0x0a, 0x0d, 0x0d, 0x0a]);
}

/// `dnstrace replay --output tui` as nobody with `env` set and no `--log-file`: the
/// default log is opened before the screen is, so a refusal needs no terminal.
fn tui_as_nobody(bin: &Path, input: &Path, env: &[(&str, &Path)]) -> Bounded {
    let mut cmd = as_nobody("env");
    cmd.args([
        "-u",
        "XDG_STATE_HOME",
        "-u",
        "DNSTRACE_LOG_FILE",
        "HOME=/nonexistent",
    ]);
    for (k, v) in env {
        cmd.arg(format!("{k}={}", v.display()));
    }
    cmd.arg(bin).args(["replay", "--output", "tui"]).arg(input);
    run_bounded(&mut cmd, LIMIT).unwrap()
}

#[test]
fn default_log_refuses_a_fifo_or_file_planted_in_a_shared_state_folder() {
    let Some(bin) = setup() else { return };
    let shared = Scratch::new("files", 0o1777).unwrap();
    let input = input(&shared);
    // XDG_STATE_HOME in a folder anyone can write to, where root made dnstrace/ first.
    let state = shared.join("state");
    let dir = state.join("dnstrace");
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&state, fs::Permissions::from_mode(0o1777)).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    let log = dir.join("dnstrace.log");

    mkfifo(&log);
    fs::set_permissions(&log, fs::Permissions::from_mode(0o666)).unwrap();
    let run = tui_as_nobody(&bin, &input, &[("XDG_STATE_HOME", &state)]);
    assert!(refused(&run), "{}", run.describe());
    assert!(
        run.stderr.contains("refused") && run.stderr.contains("--log-file"),
        "{}",
        run.stderr
    );

    fs::remove_file(&log).unwrap();
    fs::write(&log, "root's log\n").unwrap();
    fs::set_permissions(&log, fs::Permissions::from_mode(0o666)).unwrap();
    let run = tui_as_nobody(&bin, &input, &[("XDG_STATE_HOME", &state)]);
    assert!(refused(&run), "{}", run.describe());
    assert_eq!(fs::read_to_string(&log).unwrap(), "root's log\n");
}

#[test]
fn default_log_refuses_a_fifo_in_its_own_folder() {
    let Some(bin) = setup() else { return };
    let shared = Scratch::new("files", 0o1777).unwrap();
    let input = input(&shared);
    let state = shared.join("state");
    let dir = state.join("dnstrace");
    fs::create_dir_all(&dir).unwrap();
    chown(&state, NOBODY);
    chown(&dir, NOBODY);
    let log = dir.join("dnstrace.log");
    mkfifo(&log);
    chown(&log, NOBODY);
    let run = tui_as_nobody(&bin, &input, &[("XDG_STATE_HOME", &state)]);
    assert!(refused(&run), "{}", run.describe());
    assert!(run.stderr.contains("is a FIFO"), "{}", run.stderr);
}

#[test]
fn default_log_without_a_home_is_a_private_folder_in_tmp() {
    let Some(bin) = setup() else { return };
    let tmp = Scratch::new("files", 0o1777).unwrap();
    let input = input(&tmp);
    let dir = tmp.join(format!("dnstrace-{NOBODY}"));

    // Someone else made the folder first, open to all.
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    let run = tui_as_nobody(&bin, &input, &[("TMPDIR", tmp.path())]);
    assert!(refused(&run), "{}", run.describe());
    assert!(
        run.stderr.contains("default log folder") && run.stderr.contains("belongs to uid 0"),
        "{}",
        run.stderr
    );
    fs::remove_dir(&dir).unwrap();

    // Nothing there: dnstrace makes it, 0700, and the log in it 0600. The screen needs
    // a terminal: `script` gives it one, and `q` ends the replay's view.
    let mut cmd = as_nobody("sh");
    cmd.arg("-c").arg(format!(
        "(sleep 2; printf q) | env -u XDG_STATE_HOME -u DNSTRACE_LOG_FILE HOME=/nonexistent \
         TMPDIR={} script -qefc '{} replay --output tui {}' /dev/null",
        tmp.path().display(),
        bin.display(),
        input.display()
    ));
    let run = run_bounded(&mut cmd, LIMIT).unwrap();
    assert!(
        run.status.is_some_and(|s| s.success()),
        "{}",
        run.describe()
    );
    let d = fs::symlink_metadata(&dir).unwrap();
    assert!(d.is_dir());
    assert_eq!((d.uid(), d.mode() & 0o777), (NOBODY, 0o700));
    let f = fs::symlink_metadata(dir.join("dnstrace.log")).unwrap();
    assert!(f.is_file());
    assert_eq!((f.uid(), f.mode() & 0o777), (NOBODY, 0o600));
}

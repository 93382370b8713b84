//! [`Lab`]: network namespaces and processes that are removed when it drops.
//!
//! Every name starts with the lab's prefix `dt<tag><4 chars>`, claimed by a
//! marker file `/run/dnstrace-lab/<prefix>.pid` ("pid starttime tag"). A lab
//! whose creator died (SIGKILL, abort) is removed by the next `Lab::new` with
//! the same tag, or by [`Lab::clean_stale`].
//! Nothing is ever created in the root network namespace: veth pairs are created
//! inside a lab namespace with their peer placed directly in another one.

use std::{
    ffi::OsStr,
    fmt::Write as _,
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    net::IpAddr,
    os::unix::{
        fs::OpenOptionsExt,
        io::AsRawFd,
        process::{CommandExt, ExitStatusExt},
    },
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// Where labs keep their markers, configs and logs.
pub const RUN_DIR: &str = "/run/dnstrace-lab";
const NETNS_DIR: &str = "/run/netns";
/// Longest tag: the prefix `dt<tag><4>` must leave room for a 5-character
/// suffix (`cdns0`) within Linux's 15-character interface names.
pub const MAX_TAG_LEN: usize = 4;
const IFNAMSIZ_MAX: usize = 15;
const STOP_GRACE: Duration = Duration::from_secs(3);

static NEXT_CANDIDATE: AtomicU64 = AtomicU64::new(0);

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A signal to send to a spawned process (and its process group).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Int,
    Term,
    Kill,
    /// Freeze (SIGSTOP) and thaw (SIGCONT), e.g. to back up a consumer.
    Stop,
    Cont,
}

impl Signal {
    fn raw(self) -> libc::c_int {
        match self {
            Signal::Int => libc::SIGINT,
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
            Signal::Stop => libc::SIGSTOP,
            Signal::Cont => libc::SIGCONT,
        }
    }
}

/// A process spawned by a [`Lab`]; the lab kills it on drop at the latest.
#[derive(Clone, Debug)]
pub struct Proc {
    pub name: String,
    pub pid: u32,
    /// Where its stdout and stderr go, for processes started with [`Lab::spawn_logged`].
    pub log: Option<PathBuf>,
}

/// Captured result of a command.
#[derive(Clone, Debug)]
pub struct CmdOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Exit code, or `None` when a signal ended the process.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// One end of a veth pair: its namespace, name and addresses (CIDR notation).
#[derive(Clone, Copy, Debug)]
pub struct VethEnd<'a> {
    pub ns: &'a str,
    pub name: &'a str,
    pub addrs: &'a [&'a str],
}

struct Running {
    proc: Proc,
    child: Child,
    status: Option<ExitStatus>,
}

/// RAII guard over network namespaces and processes; see the module docs.
pub struct Lab {
    tag: String,
    prefix: String,
    dir: PathBuf,
    marker: PathBuf,
    netns: Mutex<Vec<String>>,
    procs: Mutex<Vec<Running>>,
}

impl Lab {
    /// Claims a fresh prefix `dt<tag><4 chars>` and removes leftovers of dead
    /// labs with the same tag. `tag`: 1 to 4 lowercase letters or digits.
    pub fn new(tag: &str) -> Result<Lab> {
        if tag.is_empty()
            || tag.len() > MAX_TAG_LEN
            || !tag
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            bail!("lab tag {tag:?} must be 1 to {MAX_TAG_LEN} lowercase letters or digits");
        }
        if !is_root() {
            bail!("needs root: creates network namespaces and loads eBPF; run with sudo");
        }
        fs::create_dir_all(RUN_DIR).with_context(|| format!("creating {RUN_DIR}"))?;
        for stale in Lab::clean_stale(Some(tag))? {
            eprintln!("dnstrace-lab: removed {stale}");
        }
        let pid = std::process::id();
        let start = process_start_time(pid).context("reading this process's start time")?;
        for _ in 0..64 {
            let n = NEXT_CANDIDATE.fetch_add(1, Ordering::Relaxed);
            let prefix = format!("dt{tag}{}", base36_4(u64::from(pid) + n * 104_729));
            if !netns_with_prefix(&prefix)?.is_empty() {
                continue;
            }
            let marker = Path::new(RUN_DIR).join(format!("{prefix}.pid"));
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&marker);
            let mut file = match file {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("creating {}", marker.display())),
            };
            writeln!(file, "{pid} {start} {tag}")
                .with_context(|| format!("writing {}", marker.display()))?;
            let dir = Path::new(RUN_DIR).join(&prefix);
            let _ = fs::remove_dir_all(&dir);
            let lab = Lab {
                tag: tag.to_owned(),
                prefix,
                dir,
                marker,
                netns: Mutex::new(Vec::new()),
                procs: Mutex::new(Vec::new()),
            };
            fs::create_dir_all(&lab.dir)
                .with_context(|| format!("creating {}", lab.dir.display()))?;
            return Ok(lab);
        }
        bail!("no free lab prefix for tag {tag:?} after 64 tries; see {RUN_DIR}")
    }

    /// Removes labs whose creator is dead: their namespaces (after killing every
    /// process inside), their files and their marker. `tag`: only that tag's
    /// labs; `None`: all. Returns a line per removed lab.
    pub fn clean_stale(tag: Option<&str>) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        let entries = match fs::read_dir(RUN_DIR) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
            Err(e) => return Err(e).with_context(|| format!("reading {RUN_DIR}")),
        };
        for entry in entries {
            let path = entry?.path();
            let Some(prefix) = path
                .file_name()
                .and_then(OsStr::to_str)
                .and_then(|n| n.strip_suffix(".pid"))
            else {
                continue;
            };
            let Some(owner) = fs::read_to_string(&path)
                .ok()
                .and_then(|s| Marker::parse(&s))
            else {
                continue;
            };
            if tag.is_some_and(|t| t != owner.tag) || owner.alive() {
                continue;
            }
            let namespaces = netns_with_prefix(prefix)?;
            for ns in &namespaces {
                kill_everything_in(ns);
                // Another process may be reclaiming the same lab right now.
                if let Err(e) = delete_netns(ns)
                    && Path::new(NETNS_DIR).join(ns).exists()
                {
                    return Err(e);
                }
            }
            let _ = fs::remove_dir_all(Path::new(RUN_DIR).join(prefix));
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {}", path.display()));
                }
                _ => {}
            }
            removed.push(format!(
                "stale lab {prefix} (pid {} is gone): netns [{}]",
                owner.pid,
                namespaces.join(", ")
            ));
        }
        Ok(removed)
    }

    /// The live labs' markers: (prefix, pid, tag).
    pub fn live_labs() -> Result<Vec<(String, u32, String)>> {
        let mut live = Vec::new();
        let Ok(entries) = fs::read_dir(RUN_DIR) else {
            return Ok(live);
        };
        for entry in entries {
            let path = entry?.path();
            let Some(prefix) = path
                .file_name()
                .and_then(OsStr::to_str)
                .and_then(|n| n.strip_suffix(".pid"))
            else {
                continue;
            };
            if let Some(owner) = fs::read_to_string(&path)
                .ok()
                .and_then(|s| Marker::parse(&s))
                && owner.alive()
            {
                live.push((prefix.to_owned(), owner.pid, owner.tag));
            }
        }
        Ok(live)
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// `dt<tag><4 chars>`: starts every namespace and interface name of this lab.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// This lab's private directory (configs, logs, pid files); removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Namespaces created so far, in creation order.
    pub fn namespaces(&self) -> Vec<String> {
        lock(&self.netns).clone()
    }

    // ---- topology ----

    /// Creates netns `<prefix>-<name>` with `lo` up and returns its full name.
    pub fn add_netns(&self, name: &str) -> Result<String> {
        let ns = format!("{}-{name}", self.prefix);
        run(Command::new("ip").args(["netns", "add", &ns]))?;
        lock(&self.netns).push(ns.clone());
        self.ip(&ns, &["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Deletes a namespace made by [`Lab::add_netns`] before the lab goes (a pod that
    /// stops), after killing whatever still runs in it.
    pub fn del_netns(&self, ns: &str) -> Result<()> {
        kill_everything_in(ns);
        delete_netns(ns)?;
        lock(&self.netns).retain(|n| n != ns);
        Ok(())
    }

    /// `ip -n <ns> <args…>`.
    pub fn ip(&self, ns: &str, args: &[&str]) -> Result<()> {
        run(Command::new("ip").args(["-n", ns]).args(args)).map(drop)
    }

    /// Creates a veth pair with `a` in `a.ns` and its peer `b` directly in
    /// `b.ns`, adds the addresses and sets both ends up.
    pub fn add_veth(&self, a: &VethEnd, b: &VethEnd) -> Result<()> {
        check_ifname(a.name)?;
        check_ifname(b.name)?;
        self.ip(
            a.ns,
            &[
                "link", "add", a.name, "type", "veth", "peer", "name", b.name, "netns", b.ns,
            ],
        )?;
        for end in [a, b] {
            for addr in end.addrs {
                self.add_addr(end.ns, end.name, addr)?;
            }
            self.ip(end.ns, &["link", "set", end.name, "up"])?;
        }
        Ok(())
    }

    /// Creates an `ifb` device (a stand-in for a dummy device: this kernel has no
    /// CONFIG_DUMMY) holding `addrs`, and sets it up.
    pub fn add_ifb(&self, ns: &str, name: &str, addrs: &[&str]) -> Result<()> {
        check_ifname(name)?;
        self.ip(ns, &["link", "add", name, "type", "ifb"])?;
        for addr in addrs {
            self.add_addr(ns, name, addr)?;
        }
        self.ip(ns, &["link", "set", name, "up"])
    }

    /// Adds an address (CIDR). IPv6 addresses skip duplicate address detection
    /// so they are usable at once.
    pub fn add_addr(&self, ns: &str, dev: &str, cidr: &str) -> Result<()> {
        let mut args = vec!["addr", "add", cidr, "dev", dev];
        if cidr.contains(':') {
            args.push("nodad");
        }
        self.ip(ns, &args)
    }

    /// Adds a route, e.g. `"default via 10.244.0.1"` or `"10.96.0.0/12 dev eth0"`.
    pub fn add_route(&self, ns: &str, route: &str) -> Result<()> {
        let mut args = vec!["route", "add"];
        args.extend(route.split_whitespace());
        self.ip(ns, &args)
    }

    /// Sets a sysctl inside `ns`, e.g. `("net.ipv4.ip_forward", "1")`.
    pub fn sysctl(&self, ns: &str, key: &str, value: &str) -> Result<()> {
        self.run(ns, &["sysctl", "-q", "-w", &format!("{key}={value}")])
            .map(drop)
    }

    /// Adds an iptables rule inside `ns`: `rule` is split on whitespace, e.g.
    /// `"-t nat -A POSTROUTING -o eth0 -j MASQUERADE"`.
    pub fn iptables(&self, ns: &str, rule: &str) -> Result<()> {
        let mut argv = vec!["iptables", "-w"];
        argv.extend(rule.split_whitespace());
        self.run(ns, &argv).map(drop)
    }

    /// Like [`Lab::iptables`] for IPv6.
    pub fn ip6tables(&self, ns: &str, rule: &str) -> Result<()> {
        let mut argv = vec!["ip6tables", "-w"];
        argv.extend(rule.split_whitespace());
        self.run(ns, &argv).map(drop)
    }

    // ---- commands ----

    /// `ip netns exec <ns> <program>`: a new mount namespace where /sys shows
    /// `ns`'s devices. Note that it also hides mounts below /sys, such as a
    /// cgroup2 hierarchy at /sys/fs/cgroup/unified; see [`Lab::cmd_setns`].
    pub fn cmd(&self, ns: &str, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(program);
        cmd
    }

    /// `program` in `ns` entered with setns(2) only: it keeps this process's
    /// mounts (cgroup2, bpffs), while /sys/class/net still shows the root
    /// namespace. Use this for the tracer; use netlink, not /sys, inside it.
    pub fn cmd_setns(&self, ns: &str, program: impl AsRef<OsStr>) -> Result<Command> {
        let path = Path::new(NETNS_DIR).join(ns);
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let mut cmd = Command::new(program);
        // SAFETY: only setns(2), which is async-signal-safe, runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(cmd)
    }

    /// Runs `argv` inside `ns` and captures its output, whatever its exit status.
    pub fn exec(&self, ns: &str, argv: &[&str]) -> Result<CmdOutput> {
        let (program, args) = argv.split_first().context("empty command")?;
        let mut cmd = self.cmd(ns, program);
        cmd.args(args);
        capture(&mut cmd)
    }

    /// Runs `argv` inside `ns`; fails with its stderr unless it exits 0.
    pub fn run(&self, ns: &str, argv: &[&str]) -> Result<String> {
        let (program, args) = argv.split_first().context("empty command")?;
        let mut cmd = self.cmd(ns, program);
        cmd.args(args);
        run(&mut cmd)
    }

    // ---- long-running processes ----

    /// Spawns `cmd` (build it with [`Lab::cmd`]) with stdio as configured by the
    /// caller. The process gets its own process group, so a terminal's Ctrl-C
    /// does not reach it, and is SIGKILLed if the spawning thread dies. The lab
    /// stops it on drop: SIGTERM, then SIGKILL after 3 s.
    pub fn spawn(&self, name: &str, cmd: Command) -> Result<Proc> {
        self.spawn_with(name, cmd, None)
    }

    /// Like [`Lab::spawn`], with stdin closed and stdout+stderr appended to
    /// `<lab dir>/<name>.log` (see [`Lab::log_tail`]).
    pub fn spawn_logged(&self, name: &str, mut cmd: Command) -> Result<Proc> {
        let log = self.dir.join(format!("{name}.log"));
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        self.spawn_with(name, cmd, Some(log))
    }

    /// Writes `script` to `<lab dir>/<name>.py`, runs it with python3 in `ns` (logged, see
    /// [`Lab::spawn_logged`]) with `args`, and waits until it prints `ready`.
    pub fn start_python(&self, ns: &str, name: &str, script: &str, args: &[&str]) -> Result<Proc> {
        let path = self.write_file(&format!("{name}.py"), script)?;
        let mut cmd = self.cmd(ns, "/usr/bin/python3");
        cmd.arg("-u").arg(&path).args(args);
        let proc = self.spawn_logged(name, cmd)?;
        self.wait_for_log(&proc, "ready", Duration::from_secs(10))
            .with_context(|| format!("{name} never said it was ready"))?;
        Ok(proc)
    }

    fn spawn_with(&self, name: &str, mut cmd: Command, log: Option<PathBuf>) -> Result<Proc> {
        cmd.process_group(0);
        // SAFETY: only prctl(2), which is async-signal-safe, runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {name}: {}", describe(&cmd)))?;
        let proc = Proc {
            name: name.to_owned(),
            pid: child.id(),
            log,
        };
        lock(&self.procs).push(Running {
            proc: proc.clone(),
            child,
            status: None,
        });
        Ok(proc)
    }

    /// Sends `signal` to the process group of `proc` (no-op if it already exited).
    pub fn signal(&self, proc: &Proc, signal: Signal) -> Result<()> {
        if self.status(proc)?.is_some() {
            return Ok(());
        }
        // SAFETY: plain syscall; the group exists while its unreaped leader does.
        if unsafe { libc::killpg(proc.pid as libc::pid_t, signal.raw()) } != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ESRCH) {
                return Err(err)
                    .with_context(|| format!("signalling {} (pid {})", proc.name, proc.pid));
            }
        }
        Ok(())
    }

    /// The exit status of `proc` if it has exited, without blocking.
    pub fn status(&self, proc: &Proc) -> Result<Option<ExitStatus>> {
        let mut procs = lock(&self.procs);
        let running = procs
            .iter_mut()
            .find(|r| r.proc.pid == proc.pid)
            .with_context(|| {
                format!(
                    "{} (pid {}) was not spawned by this lab",
                    proc.name, proc.pid
                )
            })?;
        if running.status.is_none() {
            running.status = running.child.try_wait()?;
        }
        Ok(running.status)
    }

    /// Waits up to `timeout` for `proc` to exit.
    pub fn wait_exit(&self, proc: &Proc, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.status(proc)? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal`, waits up to `grace`, then SIGKILLs; returns the exit status.
    pub fn stop(&self, proc: &Proc, signal: Signal, grace: Duration) -> Result<ExitStatus> {
        self.signal(proc, signal)?;
        if let Some(status) = self.wait_exit(proc, grace)? {
            return Ok(status);
        }
        self.signal(proc, Signal::Kill)?;
        self.wait_exit(proc, Duration::from_secs(5))?
            .with_context(|| format!("{} (pid {}) survived SIGKILL", proc.name, proc.pid))
    }

    /// The last `lines` lines of a logged process's output ("" if none).
    pub fn log_tail(&self, proc: &Proc, lines: usize) -> String {
        proc.log
            .as_deref()
            .map(|log| tail(log, lines))
            .unwrap_or_default()
    }

    /// Waits until the log of `proc` (started with [`Lab::spawn_logged`]) contains
    /// `needle`, e.g. tcpdump's "listening on", failing early if `proc` exits first.
    pub fn wait_for_log(&self, proc: &Proc, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log_tail(proc, 50).contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.status(proc)? {
                bail!(
                    "{} exited ({}) before it was ready{}",
                    proc.name,
                    describe_status(status),
                    with_log(&self.log_tail(proc, 20))
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} not ready within {timeout:?}{}",
                    proc.name,
                    with_log(&self.log_tail(proc, 20))
                );
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits until `path` exists (e.g. a `--ready-file`), failing early with
    /// the exit status if `proc` exits first.
    pub fn wait_for_file(&self, proc: &Proc, path: &Path, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if path.exists() {
                return Ok(());
            }
            if let Some(status) = self.status(proc)? {
                bail!(
                    "{} exited ({}) before writing {}{}",
                    proc.name,
                    describe_status(status),
                    path.display(),
                    with_log(&self.log_tail(proc, 30))
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not write {} within {:?}{}",
                    proc.name,
                    path.display(),
                    timeout,
                    with_log(&self.log_tail(proc, 30))
                );
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// Writes `text` to `<lab dir>/<name>` and returns the path.
    pub fn write_file(&self, name: &str, text: &str) -> Result<PathBuf> {
        let path = self.dir.join(name);
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Probes `server` with `dig … version.bind CH TXT` (answered locally by
    /// dnsmasq, unbound and BIND) until any reply arrives. Fails early, with the
    /// server's log, if `proc` exits.
    pub fn wait_dns_ready(
        &self,
        ns: &str,
        server: IpAddr,
        proc: &Proc,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let at = format!("@{server}");
        loop {
            if let Some(status) = self.status(proc)? {
                bail!(
                    "{} exited ({}) before answering on {server}{}",
                    proc.name,
                    describe_status(status),
                    with_log(&self.log_tail(proc, 30))
                );
            }
            let probe = self.exec(
                ns,
                &[
                    "dig",
                    "+time=1",
                    "+tries=1",
                    &at,
                    "version.bind",
                    "CH",
                    "TXT",
                ],
            )?;
            if probe.success() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not answer on {server} within {timeout:?}; last probe: {}{}",
                    proc.name,
                    probe.stdout.trim(),
                    with_log(&self.log_tail(proc, 30))
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn teardown(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut procs = std::mem::take(&mut *lock(&self.procs));
        for running in procs.iter_mut().rev() {
            if running.status.is_none() && matches!(running.child.try_wait(), Ok(None)) {
                // SAFETY: plain syscall on our own unreaped child's group.
                unsafe { libc::killpg(running.proc.pid as libc::pid_t, libc::SIGTERM) };
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        for running in procs.iter_mut() {
            loop {
                match running.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() < deadline => {
                        thread::sleep(Duration::from_millis(10))
                    }
                    Ok(None) => {
                        // SAFETY: as above.
                        unsafe { libc::killpg(running.proc.pid as libc::pid_t, libc::SIGKILL) };
                        let _ = running.child.wait();
                        problems.push(format!("{} ignored SIGTERM; killed", running.proc.name));
                        break;
                    }
                }
            }
        }
        if thread::panicking() {
            for running in &procs {
                let log = self.log_tail(&running.proc, 20);
                if !log.is_empty() {
                    eprintln!(
                        "---- lab {}: last lines of {} ----\n{log}",
                        self.prefix, running.proc.name
                    );
                }
            }
        }
        let namespaces = std::mem::take(&mut *lock(&self.netns));
        for ns in namespaces.iter().rev() {
            kill_everything_in(ns);
            if let Err(e) = delete_netns(ns) {
                problems.push(format!("{e:#}"));
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
        if let Err(e) = fs::remove_file(&self.marker) {
            problems.push(format!("removing {}: {e}", self.marker.display()));
        }
        problems
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for problem in self.teardown() {
            eprintln!("dnstrace-lab {}: teardown: {problem}", self.prefix);
        }
    }
}

/// Contents of a lab marker file: "pid starttime tag".
struct Marker {
    pid: u32,
    start: u64,
    tag: String,
}

impl Marker {
    fn parse(text: &str) -> Option<Marker> {
        let mut fields = text.split_whitespace();
        let pid = fields.next()?.parse().ok()?;
        let start = fields.next()?.parse().ok()?;
        let tag = fields.next()?.to_owned();
        Some(Marker { pid, start, tag })
    }

    /// The creator still runs (same pid *and* start time, so pid reuse is not
    /// mistaken for it).
    fn alive(&self) -> bool {
        process_start_time(self.pid).is_some_and(|start| start == self.start)
    }
}

/// Field 22 of /proc/<pid>/stat (start time in clock ticks since boot), or
/// None if the process is gone or a zombie (a killed creator whose parent
/// never reaps it is dead all the same).
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after it don't.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    if matches!(fields.next()?, "Z" | "X") {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

fn base36_4(n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut n = n % 36u64.pow(4);
    let mut out = [0u8; 4];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n % 36) as usize];
        n /= 36;
    }
    String::from_utf8(out.to_vec()).expect("ascii")
}

fn check_ifname(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > IFNAMSIZ_MAX {
        bail!("interface name {name:?} must be 1 to {IFNAMSIZ_MAX} characters");
    }
    Ok(())
}

/// Namespaces named `<prefix>-…`.
fn netns_with_prefix(prefix: &str) -> Result<Vec<String>> {
    let entries = match fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {NETNS_DIR}")),
    };
    let dash = format!("{prefix}-");
    let mut found = Vec::new();
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with(&dash) {
            found.push(name);
        }
    }
    found.sort();
    Ok(found)
}

/// SIGKILLs every process left in `ns` (servers that outlived their parent,
/// daemons that forked), so the namespace really goes away with its name.
fn kill_everything_in(ns: &str) {
    for _ in 0..50 {
        let Ok(out) = capture(Command::new("ip").args(["netns", "pids", ns])) else {
            return;
        };
        let pids: Vec<libc::pid_t> = out
            .stdout
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            // SAFETY: plain syscall; these processes live in a namespace this lab owns.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn delete_netns(ns: &str) -> Result<()> {
    if !Path::new(NETNS_DIR).join(ns).exists() {
        return Ok(());
    }
    run(Command::new("ip").args(["netns", "del", ns])).map(drop)
}

fn capture(cmd: &mut Command) -> Result<CmdOutput> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", describe(cmd)))?;
    Ok(CmdOutput {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = capture(cmd)?;
    if !out.success() {
        bail!(
            "`{}` failed ({}): {}",
            describe(cmd),
            describe_status(out.status),
            out.stderr.trim()
        );
    }
    Ok(out.stdout)
}

fn describe(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        let _ = write!(line, " {}", arg.to_string_lossy());
    }
    line
}

fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn with_log(log: &str) -> String {
    if log.is_empty() {
        String::new()
    } else {
        format!("; its output:\n{log}")
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data; teardown must still run.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base36_is_four_chars() {
        assert_eq!(base36_4(0), "0000");
        assert_eq!(base36_4(35), "000z");
        assert_eq!(base36_4(36u64.pow(4) + 37), "0011");
    }

    #[test]
    fn marker_round_trip() {
        let m = Marker::parse("123 456 demo\n").unwrap();
        assert_eq!((m.pid, m.start, m.tag.as_str()), (123, 456, "demo"));
        assert!(Marker::parse("garbage").is_none());
    }

    #[test]
    fn this_process_is_alive_and_a_bogus_start_time_is_not() {
        let pid = std::process::id();
        let start = process_start_time(pid).unwrap();
        assert!(
            Marker {
                pid,
                start,
                tag: "t".into()
            }
            .alive()
        );
        assert!(
            !Marker {
                pid,
                start: start + 1,
                tag: "t".into()
            }
            .alive()
        );
    }
}

//! What the benchmark reads off the machine: CPU time (system-wide from
//! /proc/stat, per process from /proc/PID/stat), peak RSS, a netns's UDP
//! counters, BPF program run statistics, and the output of dnsperf and of
//! dnstrace's exit summary. Plus the median/min/max of repeated samples.

use std::{fs, time::Instant};

use anyhow::{Context, Result, bail};
use dnstrace_tests::Lab;

/// Repeated measurements of one figure.
#[derive(Clone, Debug, Default)]
pub struct Samples(pub Vec<f64>);

impl Samples {
    pub fn push(&mut self, v: f64) {
        self.0.push(v);
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    pub fn median(&self) -> f64 {
        let v = self.sorted();
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    pub fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }

    pub fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }

    /// "12.3 (11.0–13.1)" with `decimals` decimals; "—" when empty.
    pub fn show(&self, decimals: usize) -> String {
        if self.0.is_empty() {
            return "—".to_owned();
        }
        if self.0.len() == 1 {
            return format!("{:.*}", decimals, self.0[0]);
        }
        format!(
            "{:.*} ({:.*}–{:.*})",
            decimals,
            self.median(),
            decimals,
            self.min(),
            decimals,
            self.max()
        )
    }
}

/// Clock ticks per second of /proc/stat and /proc/PID/stat.
pub fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// The aggregate `cpu` line of /proc/stat, in ticks.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTimes {
    pub busy: u64,
    pub softirq: u64,
}

pub fn cpu_times() -> Result<CpuTimes> {
    let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if f.len() < 7 {
        bail!("short cpu line in /proc/stat: {line}");
    }
    // user nice system idle iowait irq softirq steal (guest is inside user)
    let total: u64 = f.iter().take(8).sum();
    let idle = f[3] + f[4];
    Ok(CpuTimes {
        busy: total - idle,
        softirq: f[6],
    })
}

/// A window over which CPU use is measured.
pub struct Window {
    start: Instant,
    cpu: CpuTimes,
    procs: Vec<(u32, u64)>,
}

/// CPU used in a window, in cores (1.0 = one CPU busy the whole time).
#[derive(Clone, Debug, Default)]
pub struct CpuUse {
    pub seconds: f64,
    pub system: f64,
    pub softirq: f64,
    /// Per watched process, in the order given.
    pub procs: Vec<f64>,
}

impl Window {
    pub fn start(pids: &[u32]) -> Result<Window> {
        Ok(Window {
            start: Instant::now(),
            cpu: cpu_times()?,
            procs: pids.iter().map(|&p| (p, proc_ticks(p))).collect(),
        })
    }

    pub fn end(self) -> Result<CpuUse> {
        let seconds = self.start.elapsed().as_secs_f64();
        let cpu = cpu_times()?;
        let hz = clk_tck();
        let cores = |ticks: u64| ticks as f64 / hz / seconds;
        Ok(CpuUse {
            seconds,
            system: cores(cpu.busy - self.cpu.busy),
            softirq: cores(cpu.softirq - self.cpu.softirq),
            procs: self
                .procs
                .iter()
                .map(|&(pid, t0)| cores(proc_ticks(pid).saturating_sub(t0)))
                .collect(),
        })
    }
}

/// User + system CPU seconds of this process's reaped children so far.
pub fn children_cpu() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// utime + stime of a process (and its reaped children: none here), in ticks.
pub fn proc_ticks(pid: u32) -> u64 {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) … utime(11) stime(12).
    let get = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

/// VmHWM (peak resident set) of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// UDP counters of a netns (/proc/net/snmp as seen from inside it).
#[derive(Clone, Copy, Debug, Default)]
pub struct Udp {
    pub in_datagrams: u64,
    pub no_ports: u64,
    pub in_errors: u64,
    pub out_datagrams: u64,
}

impl Udp {
    pub fn read(lab: &Lab, ns: &str) -> Result<Udp> {
        let text = lab.run(ns, &["cat", "/proc/net/snmp"])?;
        let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
        let (names, values) = (lines.next(), lines.next());
        let (Some(names), Some(values)) = (names, values) else {
            bail!("no Udp lines in /proc/net/snmp of {ns}");
        };
        let pairs: Vec<(&str, u64)> = names
            .split_whitespace()
            .zip(values.split_whitespace())
            .filter_map(|(n, v)| Some((n, v.parse().ok()?)))
            .collect();
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| *v)
                .unwrap_or(0)
        };
        Ok(Udp {
            in_datagrams: get("InDatagrams"),
            no_ports: get("NoPorts"),
            in_errors: get("InErrors"),
            out_datagrams: get("OutDatagrams"),
        })
    }

    pub fn since(&self, before: &Udp) -> Udp {
        Udp {
            in_datagrams: self.in_datagrams - before.in_datagrams,
            no_ports: self.no_ports - before.no_ports,
            in_errors: self.in_errors - before.in_errors,
            out_datagrams: self.out_datagrams - before.out_datagrams,
        }
    }
}

/// run_time_ns and run_cnt of a BPF program (needs kernel.bpf_stats_enabled=1).
#[derive(Clone, Copy, Debug, Default)]
pub struct ProgStats {
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// `bpftool prog show id ID -j`.
fn bpftool_prog(id: u64) -> Result<serde_json::Value> {
    let out = std::process::Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string(), "-j"])
        .output()
        .context("running bpftool")?;
    if !out.status.success() {
        bail!(
            "bpftool prog show id {id}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

pub fn prog_stats(id: u64) -> Result<ProgStats> {
    let v = bpftool_prog(id)?;
    Ok(ProgStats {
        run_time_ns: v["run_time_ns"].as_u64().unwrap_or(0),
        run_cnt: v["run_cnt"].as_u64().unwrap_or(0),
    })
}

/// BPF programs a process holds open: (name, id), from /proc/PID/fdinfo
/// (`prog_id:`) and bpftool (the name).
pub fn process_progs(pid: u32) -> Result<Vec<(String, u64)>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut found = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let Ok(info) = fs::read_to_string(entry?.path()) else {
            continue;
        };
        let Some(id) = info
            .lines()
            .find_map(|l| l.strip_prefix("prog_id:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
        else {
            continue;
        };
        if found.iter().any(|(_, i)| *i == id) {
            continue;
        }
        // A program that went away meanwhile is simply not listed.
        let v = bpftool_prog(id).unwrap_or_default();
        if let Some(name) = v["name"].as_str() {
            found.push((name.to_owned(), id));
        }
    }
    Ok(found)
}

/// What dnsperf printed at the end of a run.
#[derive(Clone, Debug, Default)]
pub struct DnsperfResult {
    pub sent: u64,
    pub completed: u64,
    pub lost: u64,
    pub qps: f64,
    pub avg_latency_s: f64,
    /// Per-query latencies (only with `-v`).
    pub latencies_s: Vec<f64>,
    /// CPU seconds dnsperf used (filled in by the caller).
    pub cpu_s: f64,
}

impl DnsperfResult {
    pub fn parse(text: &str) -> Result<DnsperfResult> {
        let mut r = DnsperfResult::default();
        let first_num = |s: &str| -> Option<f64> {
            s.split_whitespace()
                .find_map(|w| w.trim_end_matches(',').parse::<f64>().ok())
        };
        for line in text.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("> ") {
                // "> NOERROR name A 0.000123": the last word is the latency.
                if !rest.starts_with('T')
                    && let Some(l) = rest
                        .split_whitespace()
                        .last()
                        .and_then(|w| w.parse::<f64>().ok())
                {
                    r.latencies_s.push(l);
                }
            } else if let Some(rest) = line.strip_prefix("Queries sent:") {
                r.sent = first_num(rest).unwrap_or(0.0) as u64;
            } else if let Some(rest) = line.strip_prefix("Queries completed:") {
                r.completed = first_num(rest).unwrap_or(0.0) as u64;
            } else if let Some(rest) = line.strip_prefix("Queries lost:") {
                r.lost = first_num(rest).unwrap_or(0.0) as u64;
            } else if let Some(rest) = line.strip_prefix("Queries per second:") {
                r.qps = first_num(rest).unwrap_or(0.0);
            } else if let Some(rest) = line.strip_prefix("Average Latency (s):") {
                r.avg_latency_s = first_num(rest).unwrap_or(0.0);
            }
        }
        if r.sent == 0 {
            bail!("dnsperf printed no result:\n{text}");
        }
        Ok(r)
    }

    /// The `p`-th percentile (0..=100) of the per-query latencies, in seconds.
    pub fn percentile(&self, p: f64) -> Option<f64> {
        if self.latencies_s.is_empty() {
            return None;
        }
        let mut v = self.latencies_s.clone();
        v.sort_by(f64::total_cmp);
        let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
        v.get(i).copied()
    }
}

/// The counters of dnstrace's exit summary (its stderr lines).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceSummary {
    pub packets: u64,
    pub dns_seen: u64,
    pub emitted: u64,
    pub lost: u64,
    pub ring_full: u64,
    /// Events sent as compact records (0 from a dnstrace that has none).
    pub compact: u64,
    pub received: u64,
    pub dropped: u64,
    pub decoded: u64,
    /// Of `decoded`, DNS messages taken from an earlier sighting's decode (0 from a
    /// dnstrace that parses every one).
    pub reused: u64,
    pub finished: u64,
    pub evicted: u64,
}

impl TraceSummary {
    /// Parses "dnstrace: kernel: …", "dnstrace: userspace: …" and "dnstrace: lookups: …".
    pub fn parse(stderr: &str) -> Result<TraceSummary> {
        let nums = |s: &str| -> Vec<u64> {
            s.split(|c: char| !c.is_ascii_digit())
                .filter_map(|w| w.parse().ok())
                .collect()
        };
        let line = |prefix: &str| {
            stderr
                .lines()
                .rev()
                .find_map(|l| l.strip_prefix(prefix))
                .with_context(|| format!("no {prefix:?} line in dnstrace's stderr:\n{stderr}"))
        };
        let k = nums(line("dnstrace: kernel: ")?);
        let userspace = line("dnstrace: userspace: ")?;
        let u = nums(userspace);
        let l = line("dnstrace: lookups: ")?;
        if k.len() < 6 || u.len() < 3 {
            bail!("unexpected dnstrace summary:\n{stderr}");
        }
        let finished = nums(l).first().copied().unwrap_or(0);
        let reused = userspace
            .split_once(" DNS messages taken from")
            .and_then(|(before, _)| nums(before).last().copied())
            .unwrap_or(0);
        let evicted = l
            .split(", ")
            .find_map(|part| part.strip_suffix(" evicted"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        Ok(TraceSummary {
            packets: k[0],
            dns_seen: k[1],
            emitted: k[2],
            lost: k[3],
            ring_full: k[4],
            compact: k.get(8).copied().unwrap_or(0),
            received: u[0],
            dropped: u[1],
            decoded: u[2],
            reused,
            finished,
            evicted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_median_and_range() {
        let s = Samples(vec![3.0, 1.0, 2.0]);
        assert_eq!((s.median(), s.min(), s.max()), (2.0, 1.0, 3.0));
        assert_eq!(s.show(1), "2.0 (1.0–3.0)");
        assert_eq!(Samples(vec![1.0, 2.0]).median(), 1.5);
        assert_eq!(Samples::default().show(1), "—");
    }

    #[test]
    fn dnsperf_output() {
        let text = "> NOERROR h1.bench.test A 0.000120\n> T h2.bench.test A\n\
                    Statistics:\n\n  Queries sent:         1000\n  Queries completed:    998 (99.80%)\n\
                    \x20 Queries lost:         2 (0.20%)\n\n  Queries per second:   9990.123\n\n\
                    \x20 Average Latency (s):  0.000150 (min 0.000040, max 0.002000)\n";
        let r = DnsperfResult::parse(text).unwrap();
        assert_eq!((r.sent, r.completed, r.lost), (1000, 998, 2));
        assert!((r.qps - 9990.123).abs() < 1e-6);
        assert!((r.avg_latency_s - 0.00015).abs() < 1e-9);
        assert_eq!(r.latencies_s, vec![0.00012]);
        assert!(DnsperfResult::parse("nothing").is_err());
    }

    #[test]
    fn dnstrace_summary_lines() {
        let text = "dnstrace: kernel: 400 packets seen, 300 on DNS ports, 290 events emitted, 10 lost in the kernel (ring buffer full: 10, copy failed: 0), 0 cut at snaplen\n\
                    dnstrace: userspace: 290 received, 0 dropped (output closed), 290 decoded, 0 malformed, 0 partial\n\
                    dnstrace: lookups: 70 finished (ok=70), 5 evicted, 3 affected by lost events\n";
        let s = TraceSummary::parse(text).unwrap();
        assert_eq!(
            (s.packets, s.dns_seen, s.emitted, s.lost, s.ring_full),
            (400, 300, 290, 10, 10)
        );
        assert_eq!(s.compact, 0);
        let text = text.replace(
            "copy failed: 0), 0 cut at snaplen",
            "copy failed: 0, compact record without its payload: 0), 0 cut at snaplen, 150 compact (payload sent once)",
        );
        let s = TraceSummary::parse(&text).unwrap();
        assert_eq!((s.lost, s.ring_full, s.compact), (10, 10, 150));
        assert_eq!((s.received, s.dropped, s.decoded), (290, 0, 290));
        assert_eq!((s.finished, s.evicted), (70, 5));
        assert_eq!(s.reused, 0);
        let text = text.replace(
            "290 decoded, 0 malformed",
            "290 decoded (140 DNS messages taken from an earlier sighting's decode), 0 malformed",
        );
        let s = TraceSummary::parse(&text).unwrap();
        assert_eq!(
            (s.received, s.dropped, s.decoded, s.reused),
            (290, 0, 290, 140)
        );
    }
}

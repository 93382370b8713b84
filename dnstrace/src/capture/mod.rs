//! The only module that talks to the kernel through aya: load the programs,
//! attach them (tcx, netlink tc, cgroup), drain the ring buffer and read the
//! per-CPU counters. `Raw*` ABI types never leave this module.
mod attach;
mod btf;
mod cgroup;
mod dedup;
mod follow;
pub mod links;
mod monitor;
mod noop;
mod ring;
pub mod stale;

use std::{
    os::fd::AsFd as _,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    util::KernelVersion,
};
use dnstrace_common::{
    Counter, GLOBAL_CONFIG, HEADER_LEN, MAP_COUNTERS, MAP_EVENTS, MAX_SNAPLEN, RawConfig,
    RawEventHeader, link, point,
};

pub use attach::{AttachMode, AttachPoint, TcMode};
pub use cgroup::open_cgroup2_root;
pub use follow::{CoverageChange, CoverageEvent, CoverageTotals};
pub use monitor::{LinkNote, Monitor};
pub use noop::NoopClassifier;
pub use ring::{Batch, Drain, DrainStats, QUEUE_BYTES};

use crate::decode::{LinkType, Meta, Point};

/// The kernel programs' object, built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dnstrace-ebpf"));

/// Smallest and largest accepted `--snaplen`.
pub const SNAPLEN_MIN: u32 = 64;
pub const SNAPLEN_MAX: u32 = MAX_SNAPLEN;

/// What to capture and where.
#[derive(Clone, Debug)]
pub struct CaptureConfig {
    /// Interfaces of the current netns to hook with tc.
    pub ifaces: Vec<String>,
    /// Hook the socket hop (cgroup_skb on the cgroup v2 root).
    pub socket_hop: bool,
    pub ports: Vec<u16>,
    pub snaplen: u32,
    /// Ring buffer size in bytes (a power of two, at least one page).
    pub ring_bytes: u32,
    pub tc_mode: TcMode,
    /// Priority of netlink tc filters (never 1).
    pub tc_priority: u16,
    /// Trace kernel drops of DNS packets (tp_btf skb:kfree_skb).
    pub drops: bool,
    /// `--auto`: the interfaces follow the netns, so one that went away since it was
    /// listed is left out rather than an error.
    pub follow: bool,
    /// Send a UDP payload seen again on the same CPU as a compact record.
    pub dedup: bool,
}

/// A packet as delivered by the kernel, ready for `decode`.
#[derive(Clone, Debug)]
pub struct Captured {
    pub meta: Meta,
    pub link: LinkType,
    pub data: bytes::Bytes,
    /// For `Point::Drop` events: the kernel's `enum skb_drop_reason` value.
    pub drop_reason: Option<u32>,
    /// What the kernel said about the UDP payload (the bytes after the UDP header):
    /// events whose message has the same name carry the same payload, byte for byte.
    pub message: Message,
}

/// Names a UDP payload the kernel kept for later sightings on the same CPU: its slot
/// (CPU × [`dnstrace_common::dedup::SLOTS`] + index) and the low 32 bits of the clock of
/// the record that carried it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageName {
    pub slot: u16,
    pub seq: u32,
}

/// What the kernel said about an event's UDP payload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Message {
    /// Nothing: the event carries its packet, and nothing names the payload.
    #[default]
    Unnamed,
    /// The event carries its packet, and the kernel kept its payload under this name for
    /// the compact records that follow.
    Kept(MessageName),
    /// A compact record: the payload came in the earlier event of this name and was put
    /// back here.
    Named(MessageName),
}

impl Message {
    /// The name of the payload, kept or named; None when unnamed.
    pub fn name(self) -> Option<MessageName> {
        match self {
            Message::Unnamed => None,
            Message::Kept(n) | Message::Named(n) => Some(n),
        }
    }
}

/// Sums of the per-CPU kernel counters, and the compact records the reader could not
/// rebuild.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelCounters {
    /// Packets the programs ran on (DNS or not).
    pub packets: u64,
    /// Packets on a DNS port.
    pub dns_seen: u64,
    /// Events handed to userspace.
    pub emitted: u64,
    /// Events lost because the ring buffer was full.
    pub ring_full: u64,
    /// Events whose copy was cut at the snaplen.
    pub truncated: u64,
    /// Events lost because the packet copy failed.
    pub copy_failed: u64,
    /// DNS packets the kernel dropped.
    pub drops: u64,
    /// Events sent as compact records: their UDP payload came once, in an earlier event.
    pub compact: u64,
    /// Compact records whose payload the reader no longer held: lost.
    pub orphaned: u64,
}

impl KernelCounters {
    /// Events the kernel saw but userspace never got.
    pub fn lost(&self) -> u64 {
        self.ring_full + self.copy_failed + self.orphaned
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(
        "permission denied while {action}: dnstrace needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON \
         (run as root, or `setcap cap_bpf,cap_net_admin,cap_perfmon,cap_sys_resource+ep $(command -v dnstrace)`; \
         in Kubernetes use a privileged pod or add those capabilities)"
    )]
    Permission { action: String },
    /// The verifier refused a program for want of a capability it checks itself.
    #[error(
        "{action}: the kernel refused it because this process lacks {missing} \
         ({why}); grant it (run as root, or `setcap cap_bpf,cap_net_admin,cap_perfmon,cap_sys_resource+ep $(command -v dnstrace)`; \
         in Kubernetes add {k8s} to the container's capabilities); DNSTRACE_LOG=debug shows the verifier's log"
    )]
    MissingCapability {
        action: String,
        missing: &'static str,
        why: &'static str,
        k8s: &'static str,
    },
    /// The verifier refused a program: its last words, the whole log in the debug log.
    #[error(
        "{action}: the kernel's verifier refused it ({errno}): {last}; DNSTRACE_LOG=debug shows the verifier's log"
    )]
    Verifier {
        action: String,
        errno: std::io::Error,
        last: String,
    },
    #[error(
        "kernel {version} is too old: the BPF ring buffer needs Linux 5.8 or later (tcx needs 6.6; older kernels use netlink tc)"
    )]
    OldKernel { version: String },
    #[error("interface {name:?} not found in this network namespace (see `ip -br link`)")]
    NoSuchInterface { name: String },
    #[error("no DNS port to trace: give one or more with --port (port 0 is not one)")]
    NoPorts,
    /// Attached below the root, the socket hop would trace only that subtree.
    #[error(
        "the socket hop needs the root of the cgroup v2 tree, and dnstrace cannot reach it (attached below, it would see only that subtree): \
         {namespaces}; tried {tried}. Give it the host's cgroup root (hostPID and CAP_SYS_PTRACE, or the host's /sys/fs/cgroup \
         mounted in the container, or the host's cgroup namespace), or go without the socket hop (--no-socket-hop with --auto)"
    )]
    NoCgroupRoot { namespaces: String, tried: String },
    #[error("{action}: {source}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{action}: {detail}")]
    Bpf { action: String, detail: String },
}

impl CaptureError {
    /// Turns an aya error into a message that names the fix where one is known.
    fn from_aya(action: impl Into<String>, err: &(dyn std::error::Error + 'static)) -> Self {
        let action = action.into();
        let mut chain = Some(err);
        while let Some(e) = chain {
            if let Some(aya::programs::ProgramError::LoadError {
                io_error,
                verifier_log,
            }) = e.downcast_ref()
            {
                return Self::verifier(action, io_error, &verifier_log.to_string());
            }
            chain = e.source();
        }
        let mut detail = err.to_string();
        let mut src = err.source();
        let mut eperm = false;
        while let Some(e) = src {
            detail.push_str(": ");
            detail.push_str(&e.to_string());
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                eperm |= io.raw_os_error() == Some(libc::EPERM);
            }
            src = e.source();
        }
        if eperm || detail.contains("Operation not permitted") {
            Self::Permission { action }
        } else {
            Self::Bpf { action, detail }
        }
    }
}

impl CaptureError {
    /// A program the verifier refused. Its log (tens of lines) goes to the debug log only:
    /// the error names the missing capability when that is why, else the log's last words.
    fn verifier(action: String, errno: &std::io::Error, log: &str) -> Self {
        log::debug!("{action}: the verifier's log:\n{log}");
        let refused = matches!(errno.raw_os_error(), Some(libc::EACCES | libc::EPERM));
        let caps = Caps::effective();
        if refused && !caps.has(Caps::PERFMON) && !caps.has(Caps::SYS_ADMIN) {
            return Self::MissingCapability {
                action,
                missing: "CAP_PERFMON",
                why: "the verifier allows direct packet access and kernel reads only with \
                      CAP_PERFMON or CAP_SYS_ADMIN",
                k8s: "PERFMON",
            };
        }
        if refused && !caps.has(Caps::BPF) && !caps.has(Caps::SYS_ADMIN) {
            return Self::MissingCapability {
                action,
                missing: "CAP_BPF",
                why: "loading BPF programs needs CAP_BPF or CAP_SYS_ADMIN",
                k8s: "BPF",
            };
        }
        let last = log
            .lines()
            .map(str::trim)
            .rfind(|l| {
                !l.is_empty()
                    && !l.starts_with("verification time")
                    && !l.starts_with("stack depth")
                    && !l.starts_with("processed ")
            })
            .unwrap_or("no verifier log")
            .to_owned();
        Self::Verifier {
            action,
            errno: std::io::Error::from_raw_os_error(errno.raw_os_error().unwrap_or(0)),
            last,
        }
    }
}

/// The effective capability set of this process (`CapEff` in /proc/self/status).
#[derive(Clone, Copy, Debug)]
struct Caps(u64);

impl Caps {
    const SYS_ADMIN: u32 = 21;
    const PERFMON: u32 = 38;
    const BPF: u32 = 39;

    fn effective() -> Self {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        Self::from_status(&status)
    }

    /// All set when unknown: then nothing is blamed on a capability.
    fn from_status(status: &str) -> Self {
        Self(
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                .unwrap_or(u64::MAX),
        )
    }

    fn has(self, cap: u32) -> bool {
        self.0 & (1 << cap) != 0
    }
}

/// Loaded and attached kernel programs plus their maps.
pub struct Capture {
    /// Owns the programs and, through them, every link; dropping it detaches all.
    ebpf: Option<Ebpf>,
    attached: Vec<AttachPoint>,
    ring: Option<RingBuf<MapData>>,
    counters: PerCpuArray<MapData, u64>,
    own_netns: u64,
    /// Compact records the drain could not rebuild.
    orphaned: Arc<AtomicU64>,
    /// The interfaces of the netns, as listed at start and followed since.
    names: Vec<links::Link>,
    /// How tc programs are attached, the clsact qdiscs this process added and the
    /// markers that say our classifiers are in use (see `stale`).
    attacher: attach::Attacher,
    /// What is held on each interface, by index.
    followed: follow::Followed<attach::TcLink>,
    totals: CoverageTotals,
    drop_reasons: std::collections::HashMap<u32, String>,
}

impl Capture {
    /// Loads the programs and attaches them everywhere `cfg` asks. Either every
    /// attach succeeds or the error is returned and everything is detached.
    pub async fn open(cfg: &CaptureConfig) -> Result<Self, CaptureError> {
        check_kernel()?;
        raise_memlock();
        let names = links::list().await.map_err(|source| CaptureError::Io {
            action: "listing interfaces over rtnetlink".into(),
            source,
        })?;
        let mut config = RawConfig::empty();
        if config.set_ports(&cfg.ports) == 0 {
            return Err(CaptureError::NoPorts);
        }
        config.snaplen = cfg.snaplen.clamp(SNAPLEN_MIN, SNAPLEN_MAX);
        config.dedup = u32::from(cfg.dedup);
        let mut drop_reasons = Default::default();
        if cfg.drops {
            match btf::resolve() {
                Ok(info) => {
                    config.skb = info.offsets;
                    drop_reasons = info.reasons;
                }
                Err(e) => log::warn!("not tracing kernel drops: {e}"),
            }
        }

        let mut ebpf = load_object(&config, cfg.ring_bytes)?;
        let ring = ebpf
            .take_map(MAP_EVENTS)
            .expect("EVENTS map is in the object");
        let ring = RingBuf::try_from(ring)
            .map_err(|e| CaptureError::from_aya("opening the ring buffer", &e))?;
        let counters = ebpf
            .take_map(MAP_COUNTERS)
            .expect("COUNTERS map is in the object");
        let counters = PerCpuArray::try_from(counters)
            .map_err(|e| CaptureError::from_aya("opening the counters", &e))?;

        // Every interface must exist before anything is attached.
        let mut links = Vec::with_capacity(cfg.ifaces.len());
        for name in &cfg.ifaces {
            let Some(link) = names.iter().find(|l| &l.name == name) else {
                if cfg.follow {
                    log::debug!("{name} went away before it could be attached");
                    continue;
                }
                return Err(CaptureError::NoSuchInterface { name: name.clone() });
            };
            if !links.iter().any(|l: &links::Link| l.index == link.index) {
                links.push(link.clone());
            }
        }
        if cfg.follow {
            // One that appeared since the caller listed them is attached now: its
            // notification, already read, would say nothing new.
            for link in names.iter().filter(|l| links::auto_selects(l)) {
                if !links.iter().any(|l| l.index == link.index) {
                    links.push(link.clone());
                }
            }
        }
        let attacher = attach::Attacher::new(cfg.tc_mode, cfg.tc_priority, links.len())?;
        let mut capture = Self {
            ebpf: None,
            attached: Vec::new(),
            ring: Some(ring),
            counters,
            own_netns: own_netns_cookie(),
            orphaned: Arc::default(),
            names,
            attacher,
            followed: follow::Followed::default(),
            totals: CoverageTotals::default(),
            drop_reasons,
        };
        let attacher = &mut capture.attacher;
        // A killed run's netlink filters go first, whatever this run attaches.
        let (conn, nl, _) = rtnetlink::new_connection().map_err(|source| CaptureError::Io {
            action: "opening rtnetlink".into(),
            source,
        })?;
        let task = tokio::spawn(conn);
        let filters = async {
            let filters =
                stale::dump(&nl, &capture.names)
                    .await
                    .map_err(|source| CaptureError::Io {
                        action: "listing tc filters".into(),
                        source,
                    })?;
            stale::remove_at_start(&nl, &mut ebpf, attacher, filters).await
        }
        .await;
        task.abort();
        attacher.set_used(&filters?);
        let attached = attach_all(
            &mut ebpf,
            attacher,
            &links,
            cfg.socket_hop,
            config.skb.enabled != 0,
            cfg.follow,
        );
        match attached {
            Ok((points, held)) => {
                capture.attached = points;
                if cfg.follow {
                    // Those that went away before they could be attached are no more.
                    capture.names.retain(|l| {
                        !links::auto_selects(l) || held.iter().any(|(h, _)| h.index == l.index)
                    });
                }
                for (link, tc) in held {
                    capture.followed.insert(&link, follow::Held::Attached(tc));
                }
                for link in &capture.names {
                    if capture.followed.get(link.index).is_none() {
                        capture.followed.insert(link, follow::Held::Skipped);
                    }
                }
                capture.ebpf = Some(ebpf);
                Ok(capture)
            }
            Err(e) => {
                // Dropping the programs removes their links and filters; then the
                // clsact qdiscs this run added go too.
                let (created_clsact, markers) = capture.attacher.finish();
                drop(ebpf);
                drop(markers);
                for own in created_clsact {
                    attach::remove_own_clsact(&own).await;
                }
                Err(e)
            }
        }
    }

    /// Interfaces with tc programs attached now.
    pub fn tc_interfaces(&self) -> usize {
        self.followed.attached()
    }

    /// A link notification (or a fresh listing's entry): a new interface gets the tc
    /// programs, as `--auto` chose at start; a renamed one keeps them under its new
    /// name. Returns the change of coverage, if any. An interface that goes away before
    /// it is attached is one debug line, no change.
    pub async fn link_seen(&mut self, link: links::Link) -> Option<CoverageChange> {
        self.ebpf.as_ref()?;
        match self.followed.seen(&link) {
            follow::Seen::Known => None,
            follow::Seen::Renamed { old } => {
                log::info!("{old} (ifindex {}) is now called {}", link.index, link.name);
                self.followed.rename(link.index, &link.name);
                for l in self.names.iter_mut().filter(|l| l.index == link.index) {
                    l.name.clone_from(&link.name);
                }
                for p in self.attached.iter_mut().filter(|p| {
                    p.ifindex == link.index
                        && matches!(p.mode, AttachMode::Tcx | AttachMode::Netlink { .. })
                }) {
                    p.target.clone_from(&link.name);
                }
                let mut c = self.change(CoverageEvent::Renamed, &link);
                c.old_name = Some(old);
                Some(c)
            }
            follow::Seen::New => self.attach_new(link).await,
        }
    }

    async fn attach_new(&mut self, link: links::Link) -> Option<CoverageChange> {
        if !links::auto_selects(&link) {
            log::info!(
                "not attaching to {} (ifindex {}): link-layer type dnstrace cannot parse",
                link.name,
                link.index
            );
            self.followed.insert(&link, follow::Held::Skipped);
            return None;
        }
        if self.attacher.netlink() {
            // Never into a priority that someone (a CNI) already uses on it.
            match self.filters_of(&link).await {
                Ok(filters) => self.attacher.add_used(&filters),
                Err(e) => log::debug!("listing the tc filters of {}: {e}", link.name),
            }
        }
        let ebpf = self.ebpf.as_mut()?;
        // aya attaches by name: the name must still be this device's.
        let vanished = |link: &links::Link| links::index_of(&link.name) != Some(link.index);
        if vanished(&link) {
            log::debug!(
                "{} (ifindex {}) went away before it could be attached",
                link.name,
                link.index
            );
            return None;
        }
        match self.attacher.attach_tc(ebpf, &link) {
            Ok(points) if vanished(&link) => {
                // The name moved on meanwhile: whatever was hooked is let go.
                for (_, tc) in points {
                    attach::detach_tc(ebpf, tc);
                }
                self.attacher.forget(link.index);
                log::debug!(
                    "{} (ifindex {}) went away while it was being attached",
                    link.name,
                    link.index
                );
                None
            }
            Ok(points) => {
                let mode = points.first().map(|(p, _)| p.mode.to_string());
                let (points, tc): (Vec<_>, Vec<_>) = points.into_iter().unzip();
                self.attached.extend(points);
                self.followed.insert(&link, follow::Held::Attached(tc));
                self.names.retain(|l| l.index != link.index);
                self.names.push(link.clone());
                self.totals.attached += 1;
                let mut c = self.change(CoverageEvent::Attached, &link);
                c.mode = mode;
                Some(c)
            }
            Err(_) if vanished(&link) => {
                log::debug!(
                    "{} (ifindex {}) went away before it could be attached",
                    link.name,
                    link.index
                );
                self.attacher.forget(link.index);
                None
            }
            Err(e) => {
                log::warn!("could not attach to the new interface {}: {e}", link.name);
                self.followed.insert(&link, follow::Held::Failed);
                self.totals.attach_failed += 1;
                let mut c = self.change(CoverageEvent::AttachFailed, &link);
                c.error = Some(e.to_string());
                Some(c)
            }
        }
    }

    async fn filters_of(&self, link: &links::Link) -> std::io::Result<Vec<stale::TcFilter>> {
        let (conn, nl, _) = rtnetlink::new_connection()?;
        let task = tokio::spawn(conn);
        let filters = stale::dump(&nl, std::slice::from_ref(link)).await;
        task.abort();
        filters
    }

    /// Interface `index` went away: its hooks are let go (the kernel removed them with
    /// the device) and forgotten. Returns the change of coverage, if it was hooked.
    pub fn link_gone(&mut self, index: u32) -> Option<CoverageChange> {
        let entry = self.followed.remove(index)?;
        self.attacher.forget(index);
        let link = self
            .names
            .iter()
            .position(|l| l.index == index)
            .map(|i| self.names.swap_remove(i))
            .unwrap_or_else(|| links::Link {
                index,
                name: entry.name.clone(),
                kind: String::new(),
                framing: links::Framing::Ethernet,
                up: false,
            });
        let follow::Held::Attached(tc) = entry.held else {
            return None;
        };
        if let Some(ebpf) = self.ebpf.as_mut() {
            for l in tc {
                attach::detach_tc(ebpf, l);
            }
        }
        self.attached.retain(|p| {
            p.ifindex != index || !matches!(p.mode, AttachMode::Tcx | AttachMode::Netlink { .. })
        });
        self.totals.detached += 1;
        Some(self.change(CoverageEvent::Detached, &link))
    }

    /// Lists the links again after notifications were lost: lets go of the ones that
    /// are gone, attaches to the new ones.
    pub async fn resync(&mut self) -> std::io::Result<Vec<CoverageChange>> {
        let links = links::list().await?;
        let mut changes = Vec::new();
        for index in self.followed.missing_from(&links) {
            changes.extend(self.link_gone(index));
        }
        for link in links {
            changes.extend(self.link_seen(link).await);
        }
        Ok(changes)
    }

    fn change(&self, event: CoverageEvent, link: &links::Link) -> CoverageChange {
        CoverageChange {
            event,
            iface: link.name.clone(),
            ifindex: link.index,
            netns: self.own_netns,
            mode: None,
            old_name: None,
            error: None,
            totals: CoverageTotals {
                interfaces: self.followed.attached(),
                ..self.totals
            },
        }
    }

    /// Every attach point, in attach order.
    pub fn attached(&self) -> &[AttachPoint] {
        &self.attached
    }

    /// Interfaces of our network namespace, as listed at start.
    pub fn links(&self) -> &[links::Link] {
        &self.names
    }

    /// Name of a kernel drop reason, e.g. "NETFILTER_DROP".
    pub fn drop_reason_name(&self, reason: u32) -> String {
        self.drop_reasons
            .get(&reason)
            .cloned()
            .unwrap_or_else(|| format!("REASON_{reason}"))
    }

    /// All drop reason names known from BTF (value → name).
    pub fn drop_reasons(&self) -> &std::collections::HashMap<u32, String> {
        &self.drop_reasons
    }

    /// Cookie of the netns dnstrace runs in (tc events belong to it).
    pub fn netns(&self) -> u64 {
        self.own_netns
    }

    /// Takes the ring buffer for draining; call once.
    pub fn take_drain(&mut self) -> Option<Drain> {
        let ring = self.ring.take()?;
        Drain::new(ring, self.own_netns, self.orphaned.clone()).ok()
    }

    /// Detaches every program (links go with the programs) and removes the
    /// clsact qdiscs this process created, if nothing else uses them. The maps
    /// stay readable so that the last events and counters can be collected.
    pub async fn detach(&mut self) {
        self.ebpf = None;
        self.followed.take_all();
        let (created_clsact, markers) = self.attacher.finish();
        for own in created_clsact {
            attach::remove_own_clsact(&own).await;
        }
        drop(markers);
    }

    pub fn counters(&self) -> KernelCounters {
        let sum = |c: Counter| -> u64 {
            self.counters
                .get(&(c as u32), 0)
                .map(|v| v.iter().sum())
                .unwrap_or(0)
        };
        KernelCounters {
            packets: sum(Counter::Packets),
            dns_seen: sum(Counter::DnsSeen),
            emitted: sum(Counter::Emitted),
            ring_full: sum(Counter::RingFull),
            truncated: sum(Counter::Truncated),
            copy_failed: sum(Counter::CopyFailed),
            drops: sum(Counter::Drops),
            compact: sum(Counter::Compact),
            orphaned: self.orphaned.load(Ordering::Relaxed),
        }
    }
}

/// Attaches everywhere asked, in order; stops at the first failure (the caller
/// detaches what was attached).
/// What [`attach_all`] attached: every point, and the tc handles of each interface.
type AttachedAll = (Vec<AttachPoint>, Vec<(links::Link, Vec<attach::TcLink>)>);

fn attach_all(
    ebpf: &mut Ebpf,
    attacher: &mut attach::Attacher,
    links: &[links::Link],
    socket_hop: bool,
    drops: bool,
    follow: bool,
) -> Result<AttachedAll, CaptureError> {
    let mut attached = Vec::new();
    let mut held = Vec::with_capacity(links.len());
    for link in links {
        let points = match attacher.attach_tc(ebpf, link) {
            Ok(points) => points,
            // Following the netns, an interface that went away meanwhile is no failure.
            Err(_) if follow && links::index_of(&link.name) != Some(link.index) => {
                log::debug!(
                    "{} (ifindex {}) went away before it could be attached",
                    link.name,
                    link.index
                );
                attacher.forget(link.index);
                continue;
            }
            Err(e) => return Err(e),
        };
        let (points, tc): (Vec<_>, Vec<_>) = points.into_iter().unzip();
        attached.extend(points);
        held.push((link.clone(), tc));
    }
    if socket_hop {
        let (dir, label) = open_cgroup2_root()?;
        attached.extend(attacher.attach_cgroup(ebpf, &dir, &label)?);
    }
    if drops {
        attached.extend(attacher.attach_drops(ebpf)?);
    }
    Ok((attached, held))
}

/// Converts one ring buffer record, copying the packet (a compact one is left as its headers).
#[cfg(test)]
pub(crate) fn from_bytes(record: &[u8], own_netns: u64) -> Option<Captured> {
    let (mut captured, packet, _) = from_record(record, own_netns)?;
    captured.data = bytes::Bytes::copy_from_slice(packet);
    Some(captured)
}

/// Runs ring buffer records through the reader as the drain does, from a fresh start
/// (for the fuzz target): the events, and the compact records it could not rebuild.
#[doc(hidden)]
pub fn read_records<'a>(records: impl IntoIterator<Item = &'a [u8]>) -> (Vec<Captured>, u64) {
    let mut stats = DrainStats::default();
    let mut mirror = dedup::Mirror::new(4);
    let orphaned = AtomicU64::new(0);
    let mut reader = ring::Reader {
        own_netns: 1,
        stats: &mut stats,
        mirror: &mut mirror,
        orphaned: &orphaned,
    };
    let mut events = Vec::new();
    let mut batch = ring::Building::new();
    for r in records {
        reader.push(r, &mut batch);
        if batch.len() == ring::BATCH {
            events.extend(
                std::mem::replace(&mut batch, ring::Building::new())
                    .finish()
                    .0,
            );
        }
    }
    events.extend(batch.finish().0);
    (events, orphaned.into_inner())
}

/// What a record says about its UDP payload (see [`dedup`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Payload {
    /// The packet as copied; nothing kept.
    Own,
    /// The packet as copied; the kernel kept its payload (from `off` on) as (`slot`, `seq`).
    Kept { slot: u16, seq: u32, off: usize },
    /// Only the packet's headers: its payload is that of (`slot`, `seq`).
    Named { slot: u16, seq: u32 },
}

/// Converts one ring buffer record: the only place that reads the kernel ABI.
/// Leaves `data` empty and returns the packet bytes as a slice of `record`,
/// for the caller to copy (the drain copies a whole batch into one buffer),
/// and what the record says about its payload.
pub(crate) fn from_record(record: &[u8], own_netns: u64) -> Option<(Captured, &[u8], Payload)> {
    if record.len() < HEADER_LEN {
        return None;
    }
    // SAFETY: RawEventHeader is repr(C) plain data with no invalid bit patterns,
    // the length was checked above, and read_unaligned copes with any alignment.
    let h: RawEventHeader = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
    let data = &record[HEADER_LEN..];
    let cap = (h.cap_len as usize).min(data.len());
    let point = match h.point {
        point::TC_INGRESS => Point::TcIngress,
        point::TC_EGRESS => Point::TcEgress,
        point::SOCKET_IN => Point::SocketIn,
        point::SOCKET_OUT => Point::SocketOut,
        point::DROP => Point::Drop,
        _ => return None,
    };
    let link = if h.link == link::ETHERNET {
        LinkType::Ethernet
    } else {
        LinkType::RawIp
    };
    let comm_len = h.comm.iter().position(|&b| b == 0).unwrap_or(h.comm.len());
    // Any process can name itself with escape sequences (prctl PR_SET_NAME).
    let comm = (comm_len > 0).then(|| {
        crate::decode::text::printable_string(
            String::from_utf8_lossy(&h.comm[..comm_len]).into_owned(),
        )
    });
    let captured = Captured {
        meta: Meta {
            ts_ns: h.ts_ns,
            ifindex: h.ifindex,
            netns: if h.netns_cookie != 0 {
                h.netns_cookie
            } else {
                own_netns
            },
            point,
            wire_len: h.wire_len,
            cap_len: cap as u32,
            pid: h.pid,
            comm,
        },
        link,
        data: bytes::Bytes::new(),
        drop_reason: (h.point == point::DROP).then_some(h.drop_reason),
        message: Message::Unnamed,
    };
    let payload = match h.dedup {
        dnstrace_common::dedup::FULL => Payload::Kept {
            slot: h.msg_slot,
            seq: h.msg_seq,
            off: usize::from(h.payload_off),
        },
        dnstrace_common::dedup::COMPACT => Payload::Named {
            slot: h.msg_slot,
            seq: h.msg_seq,
        },
        _ => Payload::Own,
    };
    Some((captured, &data[..cap], payload))
}

/// Loads the eBPF object (maps created, programs not yet loaded).
fn load_object(config: &RawConfig, ring_bytes: u32) -> Result<Ebpf, CaptureError> {
    EbpfLoader::new()
        .override_global(GLOBAL_CONFIG, config, true)
        .map_max_entries(MAP_EVENTS, ring_bytes)
        .load(OBJECT)
        .map_err(|e| CaptureError::from_aya("loading the eBPF object", &e))
}

fn check_kernel() -> Result<(), CaptureError> {
    if let Ok(v) = KernelVersion::current()
        && v < KernelVersion::new(5, 8, 0)
    {
        return Err(CaptureError::OldKernel {
            version: format!("{v:?}"),
        });
    }
    Ok(())
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; lift it, best effort.
fn raise_memlock() {
    let rl = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rl) };
}

/// SO_NETNS_COOKIE of the calling thread's netns (Linux 5.14+), 0 if unknown.
pub fn own_netns_cookie() -> u64 {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let Ok(sock) = std::net::UdpSocket::bind("127.0.0.1:0") else {
        return 0;
    };
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    use std::os::fd::AsRawFd as _;
    // SAFETY: valid fd, valid out pointer and length.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc == 0 { cookie } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(h: RawEventHeader, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; HEADER_LEN];
        // SAFETY: writing a POD into a buffer of exactly its size.
        unsafe { std::ptr::write_unaligned(v.as_mut_ptr().cast(), h) };
        v.extend_from_slice(payload);
        v
    }

    fn header() -> RawEventHeader {
        RawEventHeader {
            ts_ns: 42,
            netns_cookie: 0,
            ifindex: 7,
            wire_len: 100,
            cap_len: 3,
            pid: 0,
            point: point::TC_EGRESS,
            link: link::ETHERNET,
            dedup: dnstrace_common::dedup::NONE,
            _pad: 0,
            drop_reason: 0,
            comm: [0; 16],
            msg_seq: 0,
            msg_slot: 0,
            payload_off: 0,
        }
    }

    #[test]
    fn abi_round_trip() {
        let mut h = header();
        h.comm[..3].copy_from_slice(b"dig");
        h.pid = 99;
        h.point = point::SOCKET_OUT;
        h.link = link::RAW_IP;
        h.netns_cookie = 5;
        let c = from_bytes(&record(h, &[1, 2, 3, 0xff, 0xff]), 1).unwrap();
        assert_eq!(c.meta.ts_ns, 42);
        assert_eq!(c.meta.ifindex, 7);
        assert_eq!(c.meta.netns, 5);
        assert_eq!(c.meta.point, Point::SocketOut);
        assert_eq!(c.meta.wire_len, 100);
        assert_eq!(c.meta.cap_len, 3);
        assert_eq!(c.meta.pid, 99);
        assert_eq!(c.meta.comm.as_deref(), Some("dig"));
        assert_eq!(c.link, LinkType::RawIp);
        // The size class pads the record; only cap_len bytes are packet data.
        assert_eq!(&c.data[..], &[1, 2, 3]);
    }

    #[test]
    fn process_name_is_escaped() {
        // prctl(PR_SET_NAME) lets any process call itself this.
        let mut h = header();
        h.comm[..6].copy_from_slice(b"\x1b[2Jsh");
        let c = from_bytes(&record(h, &[]), 1).unwrap();
        assert_eq!(c.meta.comm.as_deref(), Some("\\x1b[2Jsh"));
    }

    #[test]
    fn abi_fills_own_netns_and_rejects_garbage() {
        let c = from_bytes(&record(header(), &[9; 3]), 77).unwrap();
        assert_eq!(c.meta.netns, 77);
        assert_eq!(c.meta.comm, None);
        // cap_len larger than the record is clamped, never read past the end.
        let mut h = header();
        h.cap_len = 4000;
        assert_eq!(from_bytes(&record(h, &[1, 2]), 1).unwrap().data.len(), 2);
        let mut h = header();
        h.point = 9;
        assert!(from_bytes(&record(h, &[]), 1).is_none());
        assert!(from_bytes(&[0u8; HEADER_LEN - 1], 1).is_none());
    }

    #[test]
    fn capabilities_from_proc_status() {
        let full = Caps::from_status("Name:\tx\nCapEff:\t000001ffffffffff\n");
        assert!(full.has(Caps::PERFMON) && full.has(Caps::BPF) && full.has(Caps::SYS_ADMIN));
        let no_perfmon = Caps::from_status("CapEff:\t000000bfffdfffff\n");
        assert!(!no_perfmon.has(Caps::PERFMON) && !no_perfmon.has(Caps::SYS_ADMIN));
        assert!(no_perfmon.has(Caps::BPF));
        assert!(Caps::from_status("").has(Caps::PERFMON));
    }

    #[test]
    fn verifier_log_stays_out_of_the_message() {
        let log = "0: R1=ctx() R10=fp0\n1: (bf) r6 = r1\n\
                   R3 has pointer with unsupported alu operation, pointer arithmetic with it prohibited for !root\n\
                   verification time 3356 usec\nstack depth 24\nprocessed 914 insns (limit 1000000)\n";
        let err = CaptureError::verifier(
            "loading dt_tc_eth_in".into(),
            &std::io::Error::from_raw_os_error(libc::EINVAL),
            log,
        );
        let msg = err.to_string();
        assert!(!msg.contains('\n'), "{msg}");
        assert!(
            msg.contains("prohibited for !root") && !msg.contains("R1=ctx"),
            "{msg}"
        );
    }

    /// An IPv4 UDP packet as the socket hop sees it: 28 bytes of headers, then `dns`.
    fn udp_packet(ttl: u8, dns: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, ttl, 17, 0, 0];
        p.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2, 0x12, 0x34, 0, 53, 0, 0, 0, 0]);
        p.extend_from_slice(dns);
        p
    }

    /// A plain IPv6 UDP packet (no extension header): 48 bytes of headers, then `dns`;
    /// behind an Ethernet header (payload at 62) when `ethernet`.
    fn udp6_packet(ethernet: bool, hop_limit: u8, dns: &[u8]) -> Vec<u8> {
        let mut p = Vec::new();
        if ethernet {
            p.extend_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x86, 0xdd]);
        }
        let udp_len = 8 + dns.len() as u16;
        p.extend_from_slice(&[0x60, 0, 0, 0]);
        p.extend_from_slice(&udp_len.to_be_bytes());
        p.extend_from_slice(&[17, hop_limit]);
        for host in [1, 2] {
            p.extend_from_slice(&[0xfd, 0, 2, 0x47, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, host]);
        }
        p.extend_from_slice(&[0x12, 0x34, 0, 53]);
        p.extend_from_slice(&udp_len.to_be_bytes());
        p.extend_from_slice(&[0xab, 0xcd]);
        p.extend_from_slice(dns);
        p
    }

    /// A record of `kind` for `packet` (its payload at 28), kept as (slot, seq).
    fn dedup_record(kind: u8, packet: &[u8], slot: u16, seq: u32) -> Vec<u8> {
        dedup_record_at(kind, link::RAW_IP, 28, packet, slot, seq)
    }

    /// A record of `kind` for `packet` on `link`, its payload at `off`, kept as (slot, seq).
    fn dedup_record_at(
        kind: u8,
        link: u8,
        off: usize,
        packet: &[u8],
        slot: u16,
        seq: u32,
    ) -> Vec<u8> {
        let mut h = header();
        h.point = point::SOCKET_IN;
        h.link = link;
        h.wire_len = packet.len() as u32;
        h.dedup = kind;
        h.msg_slot = slot;
        h.msg_seq = seq;
        h.payload_off = off as u16;
        let copied = if kind == dnstrace_common::dedup::COMPACT {
            &packet[..off]
        } else {
            packet
        };
        h.cap_len = copied.len() as u32;
        record(h, copied)
    }

    struct Read {
        stats: ring::DrainStats,
        mirror: dedup::Mirror,
        orphaned: AtomicU64,
    }

    impl Read {
        fn new() -> Self {
            Self {
                stats: Default::default(),
                mirror: dedup::Mirror::new(2),
                orphaned: AtomicU64::new(0),
            }
        }

        fn events(&mut self, records: &[Vec<u8>]) -> Vec<Captured> {
            let mut reader = ring::Reader {
                own_netns: 1,
                stats: &mut self.stats,
                mirror: &mut self.mirror,
                orphaned: &self.orphaned,
            };
            let mut batch = ring::Building::new();
            for r in records {
                reader.push(r, &mut batch);
            }
            batch.finish().0.into_iter().collect()
        }
    }

    #[test]
    fn a_compact_record_is_rebuilt_with_its_own_headers() {
        use dnstrace_common::dedup::{COMPACT, FULL};
        let dns = b"\x40\x07\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03www\x00\x00\x01\x00\x01";
        let first = udp_packet(64, dns);
        // The next hop: another TTL, the same payload.
        let again = udp_packet(63, dns);
        let mut read = Read::new();
        let events = read.events(&[
            dedup_record(FULL, &first, 70, 9),
            dedup_record(COMPACT, &again, 70, 9),
            dedup_record(COMPACT, &first, 70, 9),
        ]);
        assert_eq!(events.len(), 3);
        assert_eq!(&events[0].data[..], &first[..]);
        assert_eq!(&events[1].data[..], &again[..]);
        assert_eq!(&events[2].data[..], &first[..]);
        assert_eq!(events[1].meta.cap_len, again.len() as u32);
        assert!(events[0].message.name().is_some());
        assert!(
            events
                .iter()
                .all(|e| e.message.name() == events[0].message.name())
        );
        assert_eq!(read.orphaned.load(Ordering::Relaxed), 0);
        // A record without dedup names no message.
        let mut plain = header();
        plain.cap_len = first.len() as u32;
        assert_eq!(
            read.events(&[record(plain, &first)])[0].message,
            Message::Unnamed
        );
    }

    #[test]
    fn an_ipv6_compact_record_is_rebuilt_with_its_own_headers() {
        use dnstrace_common::dedup::{COMPACT, FULL};
        let dns = b"\x40\x07\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03www\x00\x00\x1c\x00\x01";
        // Sent at the socket hop (raw IPv6, payload at 48), then seen on a veth (Ethernet,
        // at 62) and at the next hop's socket (another hop limit): one payload.
        let sent = udp6_packet(false, 64, dns);
        let veth = udp6_packet(true, 64, dns);
        let forwarded = udp6_packet(false, 63, dns);
        assert_eq!((sent.len() - dns.len(), veth.len() - dns.len()), (48, 62));
        let mut read = Read::new();
        let events = read.events(&[
            dedup_record_at(FULL, link::RAW_IP, 48, &sent, 5, 11),
            dedup_record_at(COMPACT, link::ETHERNET, 62, &veth, 5, 11),
            dedup_record_at(COMPACT, link::RAW_IP, 48, &forwarded, 5, 11),
        ]);
        assert_eq!(read.orphaned.load(Ordering::Relaxed), 0);
        assert_eq!(events.len(), 3);
        for (e, p) in events.iter().zip([&sent, &veth, &forwarded]) {
            assert_eq!(&e.data[..], &p[..]);
            assert_eq!(e.meta.cap_len, p.len() as u32);
            assert_eq!(e.message.name(), events[0].message.name());
        }
        assert_eq!(events[1].link, LinkType::Ethernet);
        assert!(events[0].message.name().is_some());
    }

    #[test]
    fn a_compact_record_without_its_payload_is_counted_not_guessed() {
        use dnstrace_common::dedup::{COMPACT, FULL};
        let dns = [7u8; 20];
        let p = udp_packet(64, &dns);
        let mut read = Read::new();
        let events = read.events(&[
            // Never kept.
            dedup_record(COMPACT, &p, 3, 1),
            dedup_record(FULL, &p, 3, 2),
            // An older payload of that slot.
            dedup_record(COMPACT, &p, 3, 1),
            // Another slot.
            dedup_record(COMPACT, &p, 4, 2),
        ]);
        assert_eq!(events.len(), 1);
        assert_eq!(read.orphaned.load(Ordering::Relaxed), 3);
        // A compact record whose length does not add up is not rebuilt.
        let mut short = dedup_record(COMPACT, &p, 3, 2);
        short[20..24].copy_from_slice(&(p.len() as u32 + 1).to_ne_bytes());
        assert!(read.events(&[short]).is_empty());
        assert_eq!(read.orphaned.load(Ordering::Relaxed), 4);
        assert_eq!(read.stats.received, 5);
        // Orphans are losses.
        let k = KernelCounters {
            orphaned: 4,
            ring_full: 1,
            ..Default::default()
        };
        assert_eq!(k.lost(), 5);
    }

    #[test]
    fn garbled_dedup_records_never_panic() {
        use dnstrace_common::dedup::{COMPACT, FULL};
        let p = udp_packet(64, &[9u8; 40]);
        let mut read = Read::new();
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for i in 1..20_000u32 {
            let full = dedup_record(FULL, &p, 1, i);
            let mut r = dedup_record(if i % 2 == 0 { FULL } else { COMPACT }, &p, 1, i);
            for _ in 0..(next() % 6) {
                let at = (next() as usize) % r.len();
                r[at] = next() as u8;
            }
            if next() % 4 == 0 {
                r.truncate((next() as usize) % (r.len() + 1));
            }
            for e in read.events(&[full, r]) {
                assert!(
                    e.data.len()
                        <= MAX_SNAPLEN as usize + dnstrace_common::dedup::MAX_PAYLOAD as usize
                );
            }
        }
        assert!(read.orphaned.load(Ordering::Relaxed) > 0);
    }
}

//! Netlink tc filters that a killed dnstrace left behind (SIGKILL, the OOM
//! killer): found beyond doubt and removed, at start and by `dnstrace cleanup`.
//!
//! tcx links and cgroup links vanish with the process; a netlink filter keeps
//! its program, and the program its maps (the 8 MiB ring), until someone
//! deletes the filter. A filter is a stale one of ours only when all hold:
//! - it is a `bpf` filter with dnstrace's own handle for its direction
//!   ([`TcDir::handle`]: a value no other tool picks, and never 1);
//! - its program has the name of one of dnstrace's classifiers for that
//!   direction and the tag (the kernel's hash of its instructions) of this
//!   build's program;
//! - no process holds that program: a running dnstrace binds the abstract unix
//!   socket `@dnstrace-tc-prog-<id>` before it attaches the program (abstract
//!   sockets belong to the network namespace, like the filter, so this holds
//!   across pid namespaces and containers), and no file descriptor in
//!   /proc/*/fdinfo refers to it.
//!
//! Everything else is left alone: other tools' filters, a running dnstrace's
//! filters, and filters of another dnstrace build (they are reported, with the
//! `tc` command that removes them).
use std::{
    collections::{BTreeSet, HashMap, HashSet},
    io,
    os::{linux::net::SocketAddrExt as _, unix::net},
};

use dnstrace_common::{PROG_TC_ETH_IN, PROG_TC_ETH_OUT, PROG_TC_RAW_IN, PROG_TC_RAW_OUT};
use futures::{StreamExt as _, TryStreamExt as _};
use rtnetlink::{
    Handle,
    packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload},
    packet_route::{
        RouteNetlinkMessage,
        tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcMessage, TcOption},
    },
};

use super::{CaptureError, links::Link};

/// A tc hook of an interface's clsact qdisc.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TcDir {
    Ingress,
    Egress,
}

impl TcDir {
    pub const BOTH: [TcDir; 2] = [TcDir::Ingress, TcDir::Egress];

    /// The handle of dnstrace's netlink filters on this hook. "d753" reads as
    /// "dns 53"; tc(8) and the kernel number filters from 1 upwards, so no tool
    /// that lets them choose ends up here.
    pub const fn handle(self) -> u32 {
        match self {
            Self::Ingress => 0xd753_0001,
            Self::Egress => 0xd753_0002,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }

    /// dnstrace's classifiers that attach here.
    pub const fn programs(self) -> [&'static str; 2] {
        match self {
            Self::Ingress => [PROG_TC_ETH_IN, PROG_TC_RAW_IN],
            Self::Egress => [PROG_TC_ETH_OUT, PROG_TC_RAW_OUT],
        }
    }

    fn parent(self) -> TcHandle {
        TcHandle {
            major: 0xffff,
            minor: match self {
                Self::Ingress => TcHandle::MIN_INGRESS,
                Self::Egress => TcHandle::MIN_EGRESS,
            },
        }
    }
}

/// One tc filter (or a priority's header entry, with handle 0), as dumped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcFilter {
    pub ifindex: u32,
    pub iface: String,
    pub dir: TcDir,
    pub prio: u16,
    /// `tcm_info` as the kernel gave it: priority and protocol, needed to delete.
    info: u32,
    pub handle: u32,
    pub chain: u32,
    pub kind: String,
    pub prog_id: Option<u32>,
    pub prog_name: Option<String>,
    pub prog_tag: Option<u64>,
}

impl std::fmt::Display for TcFilter {
    /// The `tc filter del` command that removes it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tc filter del dev {} {} prio {} handle {:#x} {}",
            self.iface,
            self.dir.as_str(),
            self.prio,
            self.handle,
            self.kind
        )?;
        if let Some(name) = &self.prog_name {
            write!(f, "  # {name}")?;
        }
        if let Some(id) = self.prog_id {
            write!(f, " id {id}")?;
        }
        if let Some(tag) = self.prog_tag {
            write!(f, " tag {tag:016x}")?;
        }
        Ok(())
    }
}

/// What one filter with dnstrace's handle and program name turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finding {
    /// Left by a dnstrace that is gone: removed.
    Stale,
    /// A running dnstrace holds the program: kept.
    Running,
    /// Another build's program (the tags differ): kept, and reported.
    OtherBuild,
}

/// A filter that looks like one of dnstrace's, and what it is.
#[derive(Clone, Debug)]
pub struct Found {
    pub filter: TcFilter,
    pub finding: Finding,
}

/// Every filter on the ingress and egress hooks of `links`. A link that has
/// gone away meanwhile has none.
pub(super) async fn dump(handle: &Handle, links: &[Link]) -> io::Result<Vec<TcFilter>> {
    let mut filters = Vec::new();
    for link in links {
        for dir in TcDir::BOTH {
            let mut req = handle.traffic_filter(link.index as i32).get();
            req = match dir {
                TcDir::Ingress => req.ingress(),
                TcDir::Egress => req.egress(),
            };
            let msgs: Vec<TcMessage> = match req.execute().try_collect().await {
                Ok(m) => m,
                Err(rtnetlink::Error::NetlinkError(e))
                    if e.raw_code() == -libc::ENODEV || e.raw_code() == -libc::EINVAL =>
                {
                    continue;
                }
                Err(e) => {
                    return Err(io::Error::other(format!(
                        "listing tc filters on {} {}: {e}",
                        link.name,
                        dir.as_str()
                    )));
                }
            };
            filters.extend(msgs.into_iter().map(|m| parse(m, link, dir)));
        }
    }
    Ok(filters)
}

fn parse(msg: TcMessage, link: &Link, dir: TcDir) -> TcFilter {
    let mut f = TcFilter {
        ifindex: link.index,
        iface: link.name.clone(),
        dir,
        prio: (msg.header.info >> 16) as u16,
        info: msg.header.info,
        handle: u32::from(msg.header.handle),
        chain: 0,
        kind: String::new(),
        prog_id: None,
        prog_name: None,
        prog_tag: None,
    };
    for attr in msg.attributes {
        match attr {
            TcAttribute::Kind(kind) => f.kind = kind,
            TcAttribute::Chain(chain) => f.chain = chain,
            TcAttribute::Options(opts) => {
                for opt in opts {
                    match opt {
                        TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => f.prog_id = Some(id),
                        TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => f.prog_name = Some(n),
                        TcOption::Bpf(TcFilterBpfOption::ProgTag(t)) => {
                            f.prog_tag = Some(u64::from_be_bytes(t));
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    f
}

/// Priorities taken on each (ifindex, hook), by anyone.
pub(super) fn used_priorities(filters: &[TcFilter]) -> HashMap<(u32, TcDir), BTreeSet<u16>> {
    let mut used: HashMap<(u32, TcDir), BTreeSet<u16>> = HashMap::new();
    for f in filters {
        used.entry((f.ifindex, f.dir)).or_default().insert(f.prio);
    }
    used
}

/// A `bpf` filter with dnstrace's handle and one of its program names for that
/// hook: worth a closer look. Anything else is never ours.
pub(super) fn looks_ours(f: &TcFilter) -> bool {
    f.kind == "bpf"
        && f.handle == f.dir.handle()
        && f.chain == 0
        && f.prog_id.is_some()
        && f.prog_name
            .as_deref()
            .is_some_and(|n| f.dir.programs().contains(&n))
}

/// What a filter that [`looks_ours`] is, given this build's program tags
/// (by program name) and whether a process holds a program id.
pub(super) fn classify(
    f: &TcFilter,
    tag_of: impl Fn(&str) -> Option<u64>,
    held: impl Fn(u32) -> bool,
) -> Finding {
    let ours = f
        .prog_name
        .as_deref()
        .and_then(&tag_of)
        .is_some_and(|tag| f.prog_tag == Some(tag));
    match f.prog_id {
        _ if !ours => Finding::OtherBuild,
        Some(id) if !held(id) => Finding::Stale,
        _ => Finding::Running,
    }
}

/// Looks at every filter that [`looks_ours`], removes the stale ones (unless
/// `dry_run`), and says what each one was.
pub(super) async fn sweep(
    handle: &Handle,
    filters: &[TcFilter],
    tag_of: impl Fn(&str) -> Option<u64>,
    dry_run: bool,
) -> io::Result<Vec<Found>> {
    let mut found = Vec::new();
    // One /proc scan per sweep, and only when a marker is free.
    let by_fd = std::cell::OnceCell::new();
    for f in filters.iter().filter(|f| looks_ours(f)) {
        let finding = classify(f, &tag_of, |id| is_held(id, &by_fd));
        if finding == Finding::Stale && !dry_run {
            delete(handle, f)
                .await
                .map_err(|e| io::Error::other(format!("removing the stale filter `{f}`: {e}")))?;
        }
        found.push(Found {
            filter: f.clone(),
            finding,
        });
    }
    Ok(found)
}

async fn delete(handle: &Handle, f: &TcFilter) -> Result<(), rtnetlink::Error> {
    let mut msg = TcMessage::with_index(f.ifindex as i32);
    msg.header.parent = f.dir.parent();
    msg.header.handle = f.handle.into();
    msg.header.info = f.info;
    msg.attributes.push(TcAttribute::Kind(f.kind.clone()));
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::DelTrafficFilter(msg));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let mut response = handle.clone().request(req)?;
    while let Some(msg) = response.next().await {
        if let NetlinkPayload::Error(e) = msg.payload {
            return Err(rtnetlink::Error::NetlinkError(e));
        }
    }
    Ok(())
}

/// At start: removes the stale filters of dnstrace in this netns, saying so
/// for each, and returns the filters that stay (their priorities are taken).
pub(super) async fn remove_at_start(
    handle: &Handle,
    ebpf: &mut aya::Ebpf,
    attacher: &mut super::attach::Attacher,
    mut filters: Vec<TcFilter>,
) -> Result<Vec<TcFilter>, CaptureError> {
    if !filters.iter().any(looks_ours) {
        return Ok(filters);
    }
    let tags = attacher.tc_tags(ebpf)?;
    let found = match sweep(handle, &filters, tag_lookup(&tags), false).await {
        Ok(found) => found,
        // Not fatal: the leftovers keep their priorities, and `dnstrace cleanup` can retry.
        Err(e) => {
            log::warn!("{e}");
            return Ok(filters);
        }
    };
    for Found { filter, finding } in &found {
        match finding {
            Finding::Stale => log::warn!(
                "removed a tc filter left by a dnstrace that is gone (killed?): {filter}"
            ),
            Finding::Running => log::info!("a running dnstrace holds {filter}; left alone"),
            Finding::OtherBuild => log::warn!(
                "left alone a tc filter with dnstrace's handle and program name but another build's program (an older dnstrace?); if no dnstrace runs, remove it with: {filter}"
            ),
        }
    }
    let removed: Vec<&TcFilter> = found
        .iter()
        .filter(|x| x.finding == Finding::Stale)
        .map(|x| &x.filter)
        .collect();
    filters.retain(|f| !removed.contains(&f));
    // A priority's header entry goes with its last filter.
    let same_prio =
        |a: &TcFilter, b: &TcFilter| (a.ifindex, a.dir, a.prio) == (b.ifindex, b.dir, b.prio);
    let emptied: Vec<TcFilter> = filters
        .iter()
        .filter(|h| {
            h.handle == 0
                && removed.iter().any(|r| same_prio(r, h))
                && !filters.iter().any(|f| f.handle != 0 && same_prio(f, h))
        })
        .cloned()
        .collect();
    filters.retain(|f| !emptied.contains(f));
    Ok(filters)
}

fn tag_lookup<'a>(tags: &'a [(&'static str, u64)]) -> impl Fn(&str) -> Option<u64> + 'a {
    move |name| tags.iter().find(|(n, _)| *n == name).map(|&(_, t)| t)
}

/// `dnstrace cleanup`: finds (and unless `dry_run` removes) the stale filters
/// of dnstrace on `ifaces`, or on every interface of this netns when empty.
pub async fn cleanup(ifaces: &[String], dry_run: bool) -> Result<Vec<Found>, CaptureError> {
    let links = super::links::list()
        .await
        .map_err(|source| CaptureError::Io {
            action: "listing interfaces over rtnetlink".into(),
            source,
        })?;
    for name in ifaces {
        if !links.iter().any(|l| &l.name == name) {
            return Err(CaptureError::NoSuchInterface { name: name.clone() });
        }
    }
    let links: Vec<Link> = links
        .into_iter()
        .filter(|l| ifaces.is_empty() || ifaces.contains(&l.name))
        .collect();
    let io = |action: &str| {
        let action = action.to_owned();
        move |source| CaptureError::Io { action, source }
    };
    let (conn, handle, _) = rtnetlink::new_connection().map_err(io("opening rtnetlink"))?;
    let task = tokio::spawn(conn);
    let result = async {
        let filters = dump(&handle, &links)
            .await
            .map_err(io("listing tc filters"))?;
        if !filters.iter().any(looks_ours) {
            return Ok(Vec::new());
        }
        super::raise_memlock();
        let mut ebpf = super::load_object(&dnstrace_common::RawConfig::empty(), 4096)?;
        let mut attacher = super::attach::Attacher::new(super::TcMode::Netlink, 2, 0)?;
        let tags = attacher.tc_tags(&mut ebpf)?;
        sweep(&handle, &filters, tag_lookup(&tags), dry_run)
            .await
            .map_err(io("removing stale dnstrace tc filters"))
    }
    .await;
    task.abort();
    result
}

/// What `dnstrace cleanup` prints: a line per filter, or that there was none.
pub fn report(found: &[Found], dry_run: bool) -> String {
    if found.is_empty() {
        return "no dnstrace tc filters found\n".to_owned();
    }
    let mut out = String::new();
    for Found { filter, finding } in found {
        let what = match finding {
            Finding::Stale if dry_run => "would remove",
            Finding::Stale => "removed",
            Finding::Running => "kept (a running dnstrace holds it)",
            Finding::OtherBuild => {
                "kept (another dnstrace build's program: if that dnstrace is not running, remove it by hand)"
            }
        };
        out.push_str(&format!("{what}: {filter}\n"));
    }
    out
}

/// Held while dnstrace runs: says that its program `id` is in use.
#[derive(Debug)]
pub(super) struct Marker(
    #[expect(dead_code, reason = "held, never read: its bound name is the marker")]
    net::UnixDatagram,
);

fn marker_name(prog_id: u32) -> String {
    format!("dnstrace-tc-prog-{prog_id}")
}

/// Binds the liveness marker of program `prog_id` (before attaching it).
pub(super) fn hold(prog_id: u32) -> io::Result<Marker> {
    let addr = net::SocketAddr::from_abstract_name(marker_name(prog_id))?;
    net::UnixDatagram::bind_addr(&addr).map(Marker)
}

/// True when a process may hold program `prog_id`: its marker is bound, or a
/// file descriptor of a visible process refers to it (`by_fd` caches the ids
/// held in /proc). When in doubt, true.
fn is_held(prog_id: u32, by_fd: &std::cell::OnceCell<Option<HashSet<u32>>>) -> bool {
    let marker = net::SocketAddr::from_abstract_name(marker_name(prog_id))
        .and_then(|addr| net::UnixDatagram::bind_addr(&addr));
    match marker {
        Ok(_probe) => by_fd
            .get_or_init(|| programs_held_by_fd().ok())
            .as_ref()
            .is_none_or(|held| held.contains(&prog_id)),
        Err(_) => true,
    }
}

/// Ids of the programs that processes in /proc hold a file descriptor on
/// (a program, or a link to one).
fn programs_held_by_fd() -> io::Result<HashSet<u32>> {
    let mut held = HashSet::new();
    for proc in std::fs::read_dir("/proc")? {
        let Ok(proc) = proc else { continue };
        if !proc
            .file_name()
            .as_encoded_bytes()
            .iter()
            .all(u8::is_ascii_digit)
        {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(proc.path().join("fdinfo")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(info) = std::fs::read_to_string(fd.path()) else {
                continue;
            };
            held.extend(
                info.lines()
                    .filter_map(|l| l.strip_prefix("prog_id:"))
                    .filter_map(|id| id.trim().parse::<u32>().ok()),
            );
        }
    }
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(dir: TcDir, handle: u32, name: &str, tag: u64) -> TcFilter {
        TcFilter {
            ifindex: 3,
            iface: "eth0".into(),
            dir,
            prio: 53,
            info: (53 << 16) | 0x0300,
            handle,
            chain: 0,
            kind: "bpf".into(),
            prog_id: Some(77),
            prog_name: Some(name.into()),
            prog_tag: Some(tag),
        }
    }

    #[test]
    fn only_our_handle_and_names_look_ours() {
        let ours = filter(TcDir::Ingress, 0xd753_0001, PROG_TC_ETH_IN, 1);
        assert!(looks_ours(&ours));
        for not in [
            // Someone else's handle, or the kernel's first one.
            filter(TcDir::Ingress, 1, PROG_TC_ETH_IN, 1),
            filter(TcDir::Ingress, 0xd753_0002, PROG_TC_ETH_IN, 1),
            // Our handle, another program name, or ours on the wrong hook.
            filter(TcDir::Ingress, 0xd753_0001, "cil_from_netdev", 1),
            filter(TcDir::Egress, 0xd753_0002, PROG_TC_ETH_IN, 1),
            TcFilter {
                kind: "matchall".into(),
                ..ours.clone()
            },
            TcFilter {
                chain: 1,
                ..ours.clone()
            },
            // A priority's header entry.
            TcFilter {
                handle: 0,
                prog_id: None,
                ..ours.clone()
            },
        ] {
            assert!(!looks_ours(&not), "{not:?}");
        }
        assert!(looks_ours(&filter(
            TcDir::Egress,
            0xd753_0002,
            PROG_TC_RAW_OUT,
            1
        )));
    }

    #[test]
    fn stale_needs_our_tag_and_no_holder() {
        let f = filter(TcDir::Egress, 0xd753_0002, PROG_TC_ETH_OUT, 0xabc);
        let tag = |n: &str| (n == PROG_TC_ETH_OUT).then_some(0xabc);
        assert_eq!(classify(&f, tag, |_| false), Finding::Stale);
        assert_eq!(classify(&f, tag, |id| id == 77), Finding::Running);
        let other = |_: &str| Some(0xdef);
        assert_eq!(classify(&f, other, |_| false), Finding::OtherBuild);
        assert_eq!(classify(&f, |_| None, |_| false), Finding::OtherBuild);
    }

    #[test]
    fn handles_are_never_one_and_differ_by_hook() {
        assert_ne!(TcDir::Ingress.handle(), 1);
        assert_ne!(TcDir::Egress.handle(), 1);
        assert_ne!(TcDir::Ingress.handle(), TcDir::Egress.handle());
    }

    #[test]
    fn a_held_marker_means_running() {
        // Program ids are 32-bit; this one is far above any the kernel hands out here.
        let id = u32::MAX - std::process::id();
        let marker = hold(id).expect("bind an abstract unix socket");
        assert!(is_held(id, &Default::default()));
        drop(marker);
        assert!(
            !is_held(id, &Default::default()),
            "no process has program {id}"
        );
        // A program that a process holds an fd on is held, marker or not.
        let by_fd = std::cell::OnceCell::from(Some(HashSet::from([id])));
        assert!(is_held(id, &by_fd));
    }

    #[test]
    fn report_says_what_happened_to_each() {
        assert_eq!(report(&[], false), "no dnstrace tc filters found\n");
        let f = filter(TcDir::Egress, 0xd753_0002, PROG_TC_ETH_OUT, 1);
        let found = |finding| Found {
            filter: f.clone(),
            finding,
        };
        let all = [
            found(Finding::Stale),
            found(Finding::Running),
            found(Finding::OtherBuild),
        ];
        let lines: Vec<String> = report(&all, true).lines().map(str::to_owned).collect();
        assert!(lines[0].starts_with("would remove: tc filter del dev eth0 egress prio 53"));
        assert!(lines[1].starts_with("kept (a running dnstrace holds it): "));
        assert!(lines[2].starts_with("kept (another dnstrace build's program"));
        assert!(report(&all[..1], false).starts_with("removed: "));
    }

    #[test]
    fn delete_command_names_the_filter() {
        let f = filter(TcDir::Ingress, 0xd753_0001, PROG_TC_ETH_IN, 0x1f);
        assert_eq!(
            f.to_string(),
            "tc filter del dev eth0 ingress prio 53 handle 0xd7530001 bpf  # dt_tc_eth_in id 77 tag 000000000000001f"
        );
    }
}

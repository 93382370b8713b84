//! Attaching the kernel programs: tcx at the head of the chain when the kernel
//! has it, netlink clsact filters otherwise, and cgroup_skb on the cgroup v2
//! root for the socket hop. One function per kind, taking the direction.
use aya::{
    Ebpf,
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, LinkOrder,
        SchedClassifier, TcAttachType,
        tc::{NlOptions, SchedClassifierLinkId, TcAttachOptions, TcHandle, qdisc_add_clsact},
    },
    util::KernelVersion,
};
use dnstrace_common::{
    DROP_TRACEPOINT, PROG_DROP, PROG_SOCK_IN, PROG_SOCK_OUT, PROG_TC_ETH_IN, PROG_TC_ETH_OUT,
    PROG_TC_RAW_IN, PROG_TC_RAW_OUT,
};
use futures::TryStreamExt as _;

use super::{
    CaptureError,
    links::{Framing, Link},
    stale::{self, TcDir},
};
use crate::decode::Point;

/// How tc programs are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TcMode {
    /// tcx on Linux ≥ 6.6 for up to 32 interfaces, netlink clsact filters beyond that (each tcx hook waits for an RCU grace period, ~16 ms, so hundreds take seconds) and before 6.6.
    Auto,
    /// tcx links only (Linux ≥ 6.6); they vanish with the process, even after SIGKILL.
    Tcx,
    /// netlink clsact filters (any kernel); removed on exit; after a SIGKILL, by the next start or `dnstrace cleanup`.
    Netlink,
}

/// How one attach point is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    Tcx,
    Netlink { priority: u16 },
    Cgroup,
    Tracepoint,
}

impl std::fmt::Display for AttachMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcx => f.write_str("tcx"),
            Self::Netlink { priority } => write!(f, "netlink tc prio {priority}"),
            Self::Cgroup => f.write_str("cgroup_skb"),
            Self::Tracepoint => f.write_str("tp_btf"),
        }
    }
}

/// One place a program is attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachPoint {
    /// Interface name, or the cgroup path for the socket hop.
    pub target: String,
    pub ifindex: u32,
    pub point: Point,
    pub mode: AttachMode,
}

/// Above this many interfaces, `--tc-mode auto` uses netlink tc: attaching or detaching
/// a tcx hook waits for an RCU grace period under the RTNL lock (~16 ms each here), so
/// 250 interfaces took 7 s with tcx and 0.09 s with netlink (`cargo xtask bench`).
pub const TCX_AUTO_MAX_IFACES: usize = 32;

/// Free netlink priorities tried before giving up, when attaching fails at one
/// that was free when listed (another tool took it meanwhile).
const PRIORITY_TRIES: usize = 16;

/// A tc program attached to one direction of an interface, for detaching it alone
/// (when its interface goes away while the others stay).
#[derive(Debug)]
pub(super) struct TcLink {
    program: &'static str,
    id: SchedClassifierLinkId,
}

/// A clsact qdisc this process added, by interface index: a name may come back as
/// another device, whose qdisc is not ours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct OwnClsact {
    pub index: u32,
    pub name: String,
}

/// How tc programs are attached, and what this process holds: kept for the whole run,
/// since interfaces that appear later are attached the same way.
pub(super) struct Attacher {
    tcx: bool,
    explicit_tcx: bool,
    priority: u16,
    created_clsact: Vec<OwnClsact>,
    /// Netlink priorities taken on each hook, by anyone (see [`Self::set_used`]).
    used: std::collections::HashMap<(u32, TcDir), std::collections::BTreeSet<u16>>,
    /// Liveness markers of the classifiers this process loaded.
    markers: Vec<stale::Marker>,
    /// Names of the classifiers whose marker is taken care of.
    marked: Vec<String>,
}

impl Attacher {
    /// `interfaces`: how many interfaces will get tc hooks (auto mode picks by it).
    pub(super) fn new(
        mode: TcMode,
        priority: u16,
        interfaces: usize,
    ) -> Result<Self, CaptureError> {
        let has_tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
        if mode == TcMode::Auto && has_tcx && interfaces > TCX_AUTO_MAX_IFACES {
            log::info!(
                "{interfaces} interfaces: netlink tc instead of tcx (each tcx hook costs an RCU grace period)"
            );
        }
        let tcx = match mode {
            TcMode::Auto => has_tcx && interfaces <= TCX_AUTO_MAX_IFACES,
            TcMode::Tcx => true,
            TcMode::Netlink => false,
        };
        Ok(Self {
            tcx,
            explicit_tcx: mode == TcMode::Tcx,
            priority: priority.max(2),
            created_clsact: Vec::new(),
            used: Default::default(),
            markers: Vec::new(),
            marked: Vec::new(),
        })
    }

    /// The clsact qdiscs this process added (to remove once detached), and the
    /// markers held while its programs are attached.
    pub(super) fn finish(&mut self) -> (Vec<OwnClsact>, Vec<stale::Marker>) {
        (
            std::mem::take(&mut self.created_clsact),
            std::mem::take(&mut self.markers),
        )
    }

    /// Forgets what is known of interface `index`, which has gone away: the kernel
    /// removed its qdisc and filters with it.
    pub(super) fn forget(&mut self, index: u32) {
        self.created_clsact.retain(|c| c.index != index);
        self.used.retain(|(i, _), _| *i != index);
    }

    /// Takes the priorities now used on the hooks of one interface (seen after the start).
    pub(super) fn add_used(&mut self, filters: &[stale::TcFilter]) {
        for (key, prios) in stale::used_priorities(filters) {
            self.used.entry(key).or_default().extend(prios);
        }
    }

    /// Whether netlink filters are used (their priorities must be known first).
    pub(super) fn netlink(&self) -> bool {
        !self.tcx
    }

    /// The filters now on the hooks: netlink filters go only at a priority
    /// that none of them uses.
    pub(super) fn set_used(&mut self, filters: &[stale::TcFilter]) {
        self.used = stale::used_priorities(filters);
    }

    /// Loads (once) the tc classifier `name` and holds its liveness marker.
    fn classifier(
        &mut self,
        ebpf: &mut Ebpf,
        name: &str,
        action: &str,
    ) -> Result<(), CaptureError> {
        let prog: &mut SchedClassifier = program(ebpf, name, action)?;
        if self.marked.iter().any(|n| n == name) {
            return Ok(());
        }
        let id = prog
            .info()
            .map_err(|e| CaptureError::from_aya(format!("reading the id of {name}"), &e))?
            .id();
        match stale::hold(id) {
            Ok(m) => self.markers.push(m),
            // Without it, `dnstrace cleanup` still finds the program through /proc.
            Err(e) => log::warn!("could not mark program {name} (id {id}) as in use: {e}"),
        }
        self.marked.push(name.to_owned());
        Ok(())
    }

    /// Tags (the kernel's hash of the instructions) of this build's tc
    /// classifiers, by name; loads them.
    pub(super) fn tc_tags(
        &mut self,
        ebpf: &mut Ebpf,
    ) -> Result<Vec<(&'static str, u64)>, CaptureError> {
        let mut tags = Vec::new();
        for dir in TcDir::BOTH {
            for name in dir.programs() {
                let action = format!("loading {name}");
                self.classifier(ebpf, name, &action)?;
                let prog: &mut SchedClassifier = program(ebpf, name, &action)?;
                let info = prog.info().map_err(|e| {
                    CaptureError::from_aya(format!("reading the tag of {name}"), &e)
                })?;
                tags.push((name, info.tag()));
            }
        }
        Ok(tags)
    }

    /// Attaches on ingress and egress of `link`. When the second direction fails, the
    /// first is detached again.
    pub(super) fn attach_tc(
        &mut self,
        ebpf: &mut Ebpf,
        link: &Link,
    ) -> Result<Vec<(AttachPoint, TcLink)>, CaptureError> {
        let mut points = Vec::with_capacity(2);
        for point in [Point::TcIngress, Point::TcEgress] {
            match self.attach_tc_dir(ebpf, link, point) {
                Ok(p) => points.push(p),
                Err(e) => {
                    for (_, l) in points {
                        detach_tc(ebpf, l);
                    }
                    return Err(e);
                }
            }
        }
        Ok(points)
    }

    fn attach_tc_dir(
        &mut self,
        ebpf: &mut Ebpf,
        link: &Link,
        point: Point,
    ) -> Result<(AttachPoint, TcLink), CaptureError> {
        let (name, tc_type) = match (link.framing, point) {
            (Framing::Ethernet, Point::TcIngress) => (PROG_TC_ETH_IN, TcAttachType::Ingress),
            (Framing::Ethernet, _) => (PROG_TC_ETH_OUT, TcAttachType::Egress),
            (Framing::RawIp, Point::TcIngress) => (PROG_TC_RAW_IN, TcAttachType::Ingress),
            (Framing::RawIp, _) => (PROG_TC_RAW_OUT, TcAttachType::Egress),
            (Framing::Unsupported, _) => {
                return Err(CaptureError::Bpf {
                    action: format!("attaching to {}", link.name),
                    detail: "unsupported link-layer type (dnstrace parses Ethernet and L2-less IP devices)".into(),
                });
            }
        };
        let action = format!("attaching {name} to {} {}", link.name, point.as_str());
        self.classifier(ebpf, name, &action)?;
        let prog: &mut SchedClassifier = program(ebpf, name, &action)?;
        let held = |id| TcLink { program: name, id };
        if self.tcx {
            let opts = TcAttachOptions::TcxOrder(LinkOrder::first());
            match prog.attach_with_options(&link.name, tc_type, opts) {
                Ok(id) => {
                    let p = AttachPoint {
                        target: link.name.clone(),
                        ifindex: link.index,
                        point,
                        mode: AttachMode::Tcx,
                    };
                    return Ok((p, held(id)));
                }
                Err(e) if self.explicit_tcx => return Err(CaptureError::from_aya(action, &e)),
                // The device went away (or its name moved on): no reason to give up tcx.
                Err(e) if super::links::index_of(&link.name) != Some(link.index) => {
                    return Err(CaptureError::from_aya(action, &e));
                }
                Err(e) => {
                    let err = CaptureError::from_aya(action.clone(), &e);
                    if matches!(err, CaptureError::Permission { .. }) {
                        return Err(err);
                    }
                    log::warn!("tcx attach failed ({err}); falling back to netlink tc");
                    self.tcx = false;
                }
            }
        }
        match qdisc_add_clsact(&link.name) {
            Ok(()) => {
                if !self.created_clsact.iter().any(|c| c.index == link.index) {
                    self.created_clsact.push(OwnClsact {
                        index: link.index,
                        name: link.name.clone(),
                    });
                }
            }
            // EEXIST: someone (maybe an earlier direction of ours) has it; never ours to delete.
            Err(e) if e.to_string().contains("exists") || format!("{e:?}").contains("17") => {}
            Err(e) => {
                return Err(CaptureError::from_aya(
                    format!("adding clsact to {}", link.name),
                    &e,
                ));
            }
        }
        let dir = if tc_type == TcAttachType::Ingress {
            TcDir::Ingress
        } else {
            TcDir::Egress
        };
        // Our own handle, at a priority nobody uses: never into another tool's
        // priority, and never at 1.
        let used = self.used.entry((link.index, dir)).or_default();
        let free: Vec<u16> = (self.priority.max(2)..=u16::MAX)
            .filter(|p| !used.contains(p))
            .take(PRIORITY_TRIES)
            .collect();
        let mut last = None;
        for priority in free {
            let opts = TcAttachOptions::Netlink(NlOptions {
                priority,
                handle: TcHandle::from(dir.handle()),
                ..Default::default()
            });
            match prog.attach_with_options(&link.name, tc_type, opts) {
                Ok(id) => {
                    used.insert(priority);
                    let p = AttachPoint {
                        target: link.name.clone(),
                        ifindex: link.index,
                        point,
                        mode: AttachMode::Netlink { priority },
                    };
                    return Ok((p, held(id)));
                }
                Err(e) => last = Some(CaptureError::from_aya(action.clone(), &e)),
            }
        }
        Err(last.unwrap_or_else(|| CaptureError::Bpf {
            action,
            detail: format!(
                "no free tc priority from {} up (--tc-priority)",
                self.priority
            ),
        }))
    }

    /// Attaches the socket hop programs to the cgroup v2 root.
    pub(super) fn attach_cgroup(
        &mut self,
        ebpf: &mut Ebpf,
        dir: &std::fs::File,
        label: &str,
    ) -> Result<Vec<AttachPoint>, CaptureError> {
        let mut points = Vec::with_capacity(2);
        for (name, ty, point) in [
            (PROG_SOCK_IN, CgroupSkbAttachType::Ingress, Point::SocketIn),
            (PROG_SOCK_OUT, CgroupSkbAttachType::Egress, Point::SocketOut),
        ] {
            let action = format!("attaching {name} to {label}");
            let prog: &mut CgroupSkb = program(ebpf, name, &action)?;
            // bpf_link attachments (5.7+) always share the cgroup and take no
            // flags; the older prog_attach path must ask to share it.
            let mode = if KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(5, 7, 0)) {
                CgroupAttachMode::Single
            } else {
                CgroupAttachMode::AllowMultiple
            };
            prog.attach(dir, ty, mode)
                .map_err(|e| CaptureError::from_aya(action, &e))?;
            points.push(AttachPoint {
                target: label.to_owned(),
                ifindex: 0,
                point,
                mode: AttachMode::Cgroup,
            });
        }
        Ok(points)
    }
}

impl Attacher {
    /// Attaches the drop observer to the skb:kfree_skb tracepoint.
    pub(super) fn attach_drops(
        &mut self,
        ebpf: &mut Ebpf,
    ) -> Result<Vec<AttachPoint>, CaptureError> {
        let action = format!("attaching {PROG_DROP} to tp_btf/{DROP_TRACEPOINT}");
        let btf = aya::Btf::from_sys_fs()
            .map_err(|e| CaptureError::from_aya(format!("{action}: reading kernel BTF"), &e))?;
        let prog: &mut BtfTracePoint = ebpf
            .program_mut(PROG_DROP)
            .ok_or_else(|| CaptureError::Bpf {
                action: action.clone(),
                detail: "program missing from the eBPF object".into(),
            })?
            .try_into()
            .map_err(|e| CaptureError::from_aya(action.clone(), &e))?;
        prog.load(DROP_TRACEPOINT, &btf)
            .map_err(|e| CaptureError::from_aya(format!("loading {PROG_DROP}"), &e))?;
        prog.attach()
            .map_err(|e| CaptureError::from_aya(action, &e))?;
        Ok(vec![AttachPoint {
            target: format!("skb:{DROP_TRACEPOINT}"),
            ifindex: 0,
            point: Point::Drop,
            mode: AttachMode::Tracepoint,
        }])
    }
}

/// Detaches one tc program from one interface hook. The interface may be gone (then the
/// kernel has removed the hook already, and only our handle is let go).
pub(super) fn detach_tc(ebpf: &mut Ebpf, link: TcLink) {
    let Some(Ok(prog)) = ebpf
        .program_mut(link.program)
        .map(<&mut SchedClassifier>::try_from)
    else {
        return;
    };
    if let Err(e) = prog.detach(link.id) {
        log::debug!("detaching {}: {e} (its interface is gone)", link.program);
    }
}

/// Looks up a program by name and loads it on first use.
fn program<'e, P>(ebpf: &'e mut Ebpf, name: &str, action: &str) -> Result<&'e mut P, CaptureError>
where
    P: 'e + Loadable,
    &'e mut P: TryFrom<&'e mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf.program_mut(name).ok_or_else(|| CaptureError::Bpf {
        action: action.to_owned(),
        detail: format!("program {name} missing from the eBPF object"),
    })?;
    let prog: &mut P = prog
        .try_into()
        .map_err(|e| CaptureError::from_aya(action, &e))?;
    if !prog.is_loaded() {
        prog.load_prog()
            .map_err(|e| CaptureError::from_aya(format!("loading {name} into the kernel"), &e))?;
    }
    Ok(prog)
}

pub(super) trait Loadable {
    fn is_loaded(&self) -> bool;
    fn load_prog(&mut self) -> Result<(), aya::programs::ProgramError>;
}

impl Loadable for SchedClassifier {
    fn is_loaded(&self) -> bool {
        self.fd().is_ok()
    }
    fn load_prog(&mut self) -> Result<(), aya::programs::ProgramError> {
        self.load()
    }
}

impl Loadable for CgroupSkb {
    fn is_loaded(&self) -> bool {
        self.fd().is_ok()
    }
    fn load_prog(&mut self) -> Result<(), aya::programs::ProgramError> {
        self.load()
    }
}

/// Deletes a clsact qdisc this process added, but only when no filter is
/// left on it: someone may have added theirs since. By interface index: a
/// device that went away took its qdisc along, and its name may now be another's.
pub(super) async fn remove_own_clsact(own: &OwnClsact) {
    if let Err(e) = try_remove_own_clsact(own.index).await {
        log::warn!(
            "could not remove the clsact qdisc dnstrace added on {}: {e}",
            own.name
        );
    }
}

async fn try_remove_own_clsact(index: u32) -> Result<(), Box<dyn std::error::Error>> {
    use rtnetlink::packet_route::tc::TcHandle;
    let (conn, handle, _) = rtnetlink::new_connection()?;
    let task = tokio::spawn(conn);
    let result = async {
        let link = match handle
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_next()
            .await
        {
            Ok(Some(link)) => link,
            Ok(None) => return Ok(()),
            // Gone: the kernel removed its qdisc with it.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let iface = link
            .attributes
            .iter()
            .find_map(|a| match a {
                rtnetlink::packet_route::link::LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            })
            .unwrap_or_default();
        let index = link.header.index as i32;
        let ingress: Vec<_> = handle
            .traffic_filter(index)
            .get()
            .ingress()
            .execute()
            .try_collect()
            .await?;
        let egress: Vec<_> = handle
            .traffic_filter(index)
            .get()
            .egress()
            .execute()
            .try_collect()
            .await?;
        if !ingress.is_empty() || !egress.is_empty() {
            log::info!("leaving clsact on {iface}: other filters use it");
            return Ok(());
        }
        let mut req = handle.qdisc().del(index);
        let msg = req.message_mut();
        msg.header.parent = TcHandle {
            major: 0xffff,
            minor: 0xfff1,
        };
        msg.header.handle = TcHandle {
            major: 0xffff,
            minor: 0,
        };
        req.execute().await?;
        Ok::<(), Box<dyn std::error::Error>>(())
    }
    .await;
    task.abort();
    result
}

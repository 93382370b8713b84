//! Who sent a lookup: the netns inode behind the kernel's netns cookie, and the pod and
//! container, named by the container runtime's CRI API (or, without one, by the cgroup
//! path of a process in that netns).
//!
//! A background task refreshes one [`Snapshot`] every [`REFRESH`], and sooner when the
//! pipeline meets a netns cookie it does not know; the pipeline only reads the latest
//! snapshot. Nothing is looked up per packet: a lookup's container comes from its
//! process's cgroup, read once per (pid, netns) and cached.
pub mod cgroup;
pub mod cri;
pub mod netns;

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    num::NonZeroUsize,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::{Notify, watch};

use crate::correlate::{ContainerRef, Lookup, PodRef};
use cri::{Cri, SandboxMeta};

/// How often the sandboxes, netns and cgroups are looked at again.
pub const REFRESH: Duration = Duration::from_secs(2);
/// Refreshes asked for by an unknown netns cookie come at most this often.
const MIN_REFRESH: Duration = Duration::from_secs(1);
/// Processes whose cgroup is remembered.
const TASK_CACHE: usize = 4096;

/// This machine's host name, the `node` the records name unless `--node` says otherwise.
pub fn hostname() -> String {
    let name = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    if name.is_empty() {
        "localhost".to_owned()
    } else {
        name
    }
}

/// Where pod names come from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PodSource {
    /// The first CRI socket of [`cri::DEFAULT_SOCKETS`] that exists, else cgroups.
    #[default]
    Auto,
    /// This CRI socket (`--cri-socket`).
    Socket(PathBuf),
    /// Cgroups only (`--no-cri`).
    Cgroups,
}

/// What the node looked like at the last refresh.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// netns cookie → inode.
    inodes: HashMap<u64, u64>,
    /// netns inode → the pod living in it.
    by_netns: HashMap<u64, Arc<PodRef>>,
    by_ip: HashMap<IpAddr, Arc<PodRef>>,
    by_uid: HashMap<String, Arc<PodRef>>,
    /// Container id → container, for those the runtime names.
    containers: HashMap<String, Arc<ContainerRef>>,
    /// Pod UID → its container, for pods with only one running.
    only_container: HashMap<String, Arc<ContainerRef>>,
}

impl Snapshot {
    pub fn inode(&self, cookie: u64) -> Option<u64> {
        self.inodes.get(&cookie).copied()
    }
}

type TaskCache = lru::LruCache<(u32, u64), Option<cgroup::PodCgroup>>;

/// The pipeline's view: cheap to clone, read once per finished lookup.
#[derive(Clone)]
pub struct Identity {
    /// Where names came from at the start, for the start line.
    pub source: String,
    rx: watch::Receiver<Arc<Snapshot>>,
    wake: Arc<Notify>,
    proc_root: PathBuf,
    /// (pid, netns cookie) → what its cgroup says.
    tasks: Arc<Mutex<TaskCache>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").finish_non_exhaustive()
    }
}

impl Identity {
    /// Looks at the node once, then starts the background refresh on the current runtime.
    pub async fn start(source: PodSource) -> Identity {
        let proc_root = PathBuf::from("/proc");
        let mut r = Refresher::new(source, proc_root.clone());
        let first = r.refresh().await;
        let told = r.said.clone().unwrap_or_else(|| {
            "pod names: none asked (--no-cri): pods known by their cgroup (UID only)".to_owned()
        });
        // From here on, a change is logged.
        r.quiet = false;
        let (tx, rx) = watch::channel(Arc::new(first));
        let wake = Arc::new(Notify::new());
        tokio::spawn(r.run(tx, wake.clone()));
        Identity {
            source: told,
            rx,
            wake,
            proc_root,
            tasks: Arc::new(Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(TASK_CACHE).expect("non-zero"),
            ))),
        }
    }

    /// The latest snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.rx.borrow().clone()
    }

    /// A netns cookie's inode; an unknown cookie asks for a refresh.
    pub fn inode(&self, snap: &Snapshot, cookie: u64) -> Option<u64> {
        let ino = snap.inode(cookie);
        if ino.is_none() && cookie != 0 {
            self.wake.notify_one();
        }
        ino
    }

    /// Fills in who sent `l`: the netns inode, the pod (by its netns, its process's
    /// cgroup, or its address) and the container (by its process's cgroup).
    pub fn fill(&self, l: &mut Lookup) {
        let snap = self.snapshot();
        if l.netns.is_some_and(|c| c != 0 && snap.inode(c).is_none()) {
            self.wake.notify_one();
        }
        snap.fill(l, |pid, cookie| self.task_cgroup(pid, cookie));
    }

    /// The netns inode and the pod of a packet: by its netns, else by `client`'s address.
    pub fn packet(&self, netns: u64, client: Option<IpAddr>) -> (Option<u64>, Option<Arc<PodRef>>) {
        let snap = self.snapshot();
        let ino = self.inode(&snap, netns);
        let pod = ino
            .and_then(|i| snap.by_netns.get(&i).cloned())
            .or_else(|| snap.by_ip.get(&client?).cloned());
        (ino, pod)
    }

    fn task_cgroup(&self, pid: u32, cookie: u64) -> Option<cgroup::PodCgroup> {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks
            .get_or_insert((pid, cookie), || {
                let path = self.proc_root.join(pid.to_string()).join("cgroup");
                let text = std::fs::read_to_string(path).ok()?;
                cgroup::parse_proc_cgroup(&text)
            })
            .clone()
    }
}

impl Snapshot {
    /// Fills in `l`'s origin from this snapshot, and its forwarded queries' (whose client
    /// is the forwarder: a CoreDNS pod, node-local-dns); `task` reads a process's cgroup.
    fn fill(&self, l: &mut Lookup, mut task: impl FnMut(u32, u64) -> Option<cgroup::PodCgroup>) {
        self.fill_one(l, &mut task);
    }

    fn fill_one(
        &self,
        l: &mut Lookup,
        task: &mut impl FnMut(u32, u64) -> Option<cgroup::PodCgroup>,
    ) {
        for c in &mut l.children {
            self.fill_one(c, task);
        }
        let o = &mut l.origin;
        o.netns_inode = l.netns.and_then(|c| self.inode(c));
        let mut pod = o.netns_inode.and_then(|i| self.by_netns.get(&i).cloned());
        if let (Some(pid), Some(cookie)) = (o.pid, l.netns)
            && let Some(pc) = task(pid, cookie)
        {
            pod = pod.or_else(|| Some(self.pod_of_uid(&pc.uid)));
            o.container = pc.container_id.map(|id| self.container(id));
        }
        o.pod = pod.or_else(|| self.by_ip.get(&l.client.ip()).cloned());
        // A process that exited before its lookup ended has no cgroup left to read; in a
        // pod with one container, it ran in that one.
        if o.container.is_none() {
            o.container = o
                .pod
                .as_ref()
                .and_then(|p| self.only_container.get(&p.uid).cloned());
        }
    }

    /// The runtime's pod of this UID, else one known by its UID alone.
    fn pod_of_uid(&self, uid: &str) -> Arc<PodRef> {
        self.by_uid.get(uid).cloned().unwrap_or_else(|| {
            Arc::new(PodRef {
                uid: uid.to_owned(),
                ..PodRef::default()
            })
        })
    }

    fn container(&self, id: String) -> Arc<ContainerRef> {
        self.containers
            .get(&id)
            .cloned()
            .unwrap_or_else(|| Arc::new(ContainerRef { name: None, id }))
    }
}

/// A container as last seen, and its pod's sandbox.
struct Running {
    container: Arc<ContainerRef>,
    sandbox: String,
}

/// A sandbox as last seen, with the inode of its netns.
struct Known {
    pod: Arc<PodRef>,
    netns_inode: Option<u64>,
    ips: Vec<IpAddr>,
}

/// The background task's state.
struct Refresher {
    source: PodSource,
    proc_root: PathBuf,
    cri: Option<Cri>,
    /// What was said last about the CRI, so that a missing socket is one line, not one
    /// per refresh.
    said: Option<String>,
    /// At the start, the caller prints what was found, once.
    quiet: bool,
    /// netns inode → cookie.
    cookies: HashMap<u64, u64>,
    /// netns inode → what the cgroup of its lowest pid says.
    cgroups: HashMap<u64, Option<cgroup::PodCgroup>>,
    sandboxes: HashMap<String, Known>,
    containers: HashMap<String, Running>,
}

impl Refresher {
    fn new(source: PodSource, proc_root: PathBuf) -> Self {
        Self {
            source,
            proc_root,
            cri: None,
            said: None,
            quiet: true,
            cookies: HashMap::new(),
            cgroups: HashMap::new(),
            sandboxes: HashMap::new(),
            containers: HashMap::new(),
        }
    }

    async fn run(mut self, tx: watch::Sender<Arc<Snapshot>>, wake: Arc<Notify>) {
        let mut last = Instant::now();
        loop {
            tokio::select! {
                () = tokio::time::sleep(REFRESH) => {}
                () = wake.notified() => {
                    let since = last.elapsed();
                    if since < MIN_REFRESH {
                        tokio::time::sleep(MIN_REFRESH - since).await;
                    }
                }
            }
            let snap = self.refresh().await;
            last = Instant::now();
            if tx.send(Arc::new(snap)).is_err() {
                // The pipeline is gone.
                return;
            }
        }
    }

    async fn refresh(&mut self) -> Snapshot {
        let proc_root = self.proc_root.clone();
        let found = tokio::task::spawn_blocking(move || netns::scan(&proc_root))
            .await
            .unwrap_or_default();
        self.cookies.retain(|ino, _| found.contains_key(ino));
        self.cgroups.retain(|ino, _| found.contains_key(ino));
        let new: Vec<(u64, PathBuf)> = found
            .iter()
            .filter(|(ino, _)| !self.cookies.contains_key(ino))
            .map(|(ino, f)| (*ino, f.path.clone()))
            .collect();
        if !new.is_empty()
            && let Ok(cookies) = tokio::task::spawn_blocking(move || netns::cookies(new)).await
        {
            self.cookies.extend(cookies);
        }
        for (ino, f) in &found {
            if let (Some(pid), false) = (f.pid, self.cgroups.contains_key(ino)) {
                let path = self.proc_root.join(pid.to_string()).join("cgroup");
                let pc = std::fs::read_to_string(path)
                    .ok()
                    .and_then(|t| cgroup::parse_proc_cgroup(&t));
                self.cgroups.insert(*ino, pc);
            }
        }
        self.refresh_cri().await;
        self.snapshot()
    }

    fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot {
            inodes: self.cookies.iter().map(|(i, c)| (*c, *i)).collect(),
            containers: self
                .containers
                .iter()
                .map(|(id, r)| (id.clone(), r.container.clone()))
                .collect(),
            ..Snapshot::default()
        };
        let mut per_sandbox: HashMap<&str, Vec<&Arc<ContainerRef>>> = HashMap::new();
        for r in self.containers.values() {
            per_sandbox
                .entry(&r.sandbox)
                .or_default()
                .push(&r.container);
        }
        for (sandbox, containers) in per_sandbox {
            if let ([only], Some(k)) = (containers.as_slice(), self.sandboxes.get(sandbox)) {
                s.only_container.insert(k.pod.uid.clone(), Arc::clone(only));
            }
        }
        for k in self.sandboxes.values() {
            s.by_uid.insert(k.pod.uid.clone(), k.pod.clone());
            if let Some(ino) = k.netns_inode {
                s.by_netns.insert(ino, k.pod.clone());
            }
            for ip in &k.ips {
                s.by_ip.insert(*ip, k.pod.clone());
            }
        }
        // Without the runtime (or a netns it did not tell): the pod of the netns's processes.
        for (ino, pc) in &self.cgroups {
            if let Some(pc) = pc
                && !s.by_netns.contains_key(ino)
            {
                let pod = s.pod_of_uid(&pc.uid);
                s.by_netns.insert(*ino, pod);
            }
        }
        s
    }

    /// Says `what` once (again only after something else was said).
    fn say(&mut self, what: String, warn: bool) {
        if self.said.as_deref() != Some(what.as_str()) {
            if self.quiet {
            } else if warn {
                log::warn!("{what}");
            } else {
                log::info!("{what}");
            }
            self.said = Some(what);
        }
    }

    async fn refresh_cri(&mut self) {
        let explicit = match &self.source {
            PodSource::Cgroups => return,
            PodSource::Auto => None,
            PodSource::Socket(p) => Some(p.clone()),
        };
        if self.cri.is_none() {
            let connected = match cri::find_socket(explicit.as_deref()) {
                Ok(path) => Cri::connect(&path).await,
                Err(e) => Err(e),
            };
            match connected {
                Ok(c) => {
                    self.say(
                        format!("pod names: from the CRI socket {}", c.path()),
                        false,
                    );
                    self.cri = Some(c);
                }
                Err(e) => {
                    self.say(
                        format!("pod names: {e}; naming pods by their cgroup (UID only)"),
                        explicit.is_some(),
                    );
                    return;
                }
            }
        }
        if let Err(e) = self.list().await {
            self.say(
                format!("pod names: {e}; keeping the names known, connecting again"),
                true,
            );
            self.cri = None;
        }
    }

    async fn list(&mut self) -> Result<(), cri::CriError> {
        let Some(c) = self.cri.as_mut() else {
            return Ok(());
        };
        let ready = c.ready_sandboxes().await?;
        let ids: HashSet<&str> = ready.iter().map(|m| m.id.as_str()).collect();
        self.sandboxes.retain(|id, _| ids.contains(id.as_str()));
        let new: Vec<SandboxMeta> = ready
            .iter()
            .filter(|m| !self.sandboxes.contains_key(&m.id))
            .cloned()
            .collect();
        for meta in new {
            let s = c.sandbox(meta).await?;
            let netns_inode =
                s.netns_path.as_deref().and_then(netns_inode).or_else(|| {
                    netns_inode(&self.proc_root.join(s.pid?.to_string()).join("ns/net"))
                });
            let pod = Arc::new(PodRef {
                namespace: Some(s.meta.namespace),
                name: Some(s.meta.name),
                uid: s.meta.uid,
            });
            self.sandboxes.insert(
                s.meta.id,
                Known {
                    pod,
                    netns_inode,
                    ips: s.ips,
                },
            );
        }
        let running = c.containers().await?;
        self.containers.retain(|id, _| running.contains_key(id));
        for (id, (name, sandbox)) in running {
            self.containers
                .entry(id.clone())
                .or_insert_with(|| Running {
                    container: Arc::new(ContainerRef {
                        name: Some(name),
                        id,
                    }),
                    sandbox,
                });
        }
        Ok(())
    }
}

/// The inode of a netns file; from a container, the host's file is under /proc/1/root.
fn netns_inode(path: &Path) -> Option<u64> {
    netns::inode(path).or_else(|| {
        let rel = path.strip_prefix("/").ok()?;
        netns::inode(&Path::new("/proc/1/root").join(rel))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::{Origin, Verdict};

    fn lookup(client: &str, netns: Option<u64>, pid: Option<u32>) -> Lookup {
        Lookup {
            id: 1,
            client: client.parse().unwrap(),
            server: "10.96.0.10:53".parse().unwrap(),
            qname: "a.test.".into(),
            qtype: "A".into(),
            rcode: None,
            verdict: Verdict::Ok,
            culprit: None,
            last_hop: None,
            hint: None,
            latency_ms: None,
            detail: String::new(),
            hops: Vec::new(),
            children: Vec::new(),
            retries: 0,
            start_ts_ns: 0,
            netns,
            hops_omitted: 0,
            children_omitted: 0,
            trail: None,
            origin: Origin {
                pid,
                ..Origin::default()
            },
        }
    }

    fn pod(ns: &str, name: &str, uid: &str) -> Arc<PodRef> {
        Arc::new(PodRef {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            uid: uid.into(),
        })
    }

    /// netns first, then the process's cgroup, then the address; the container from the
    /// cgroup, else the pod's only one.
    #[test]
    fn a_lookup_is_named_by_netns_then_cgroup_then_address() {
        let web = pod("shop", "web-1", "u-web");
        let dns = pod("kube-system", "coredns-1", "u-dns");
        let app = Arc::new(ContainerRef {
            name: Some("app".into()),
            id: "c-app".into(),
        });
        let snap = Snapshot {
            inodes: HashMap::from([(7, 4026532001), (9, 4026531840)]),
            by_netns: HashMap::from([(4026532001, web.clone())]),
            by_ip: HashMap::from([("10.244.0.9".parse().unwrap(), dns.clone())]),
            by_uid: HashMap::from([("u-dns".to_owned(), dns.clone())]),
            containers: HashMap::from([("c-app".to_owned(), app.clone())]),
            only_container: HashMap::from([("u-web".to_owned(), app.clone())]),
        };
        let none = |_: u32, _: u64| None;

        // By netns; the process is gone, so the pod's only container.
        let mut l = lookup("10.244.0.5:4000", Some(7), Some(42));
        snap.fill(&mut l, none);
        assert_eq!(l.origin.netns_inode, Some(4026532001));
        assert_eq!(l.origin.pod, Some(web.clone()));
        assert_eq!(l.origin.container, Some(app.clone()));

        // A host-network pod: the node's netns, named by its process's cgroup.
        let mut l = lookup("10.0.0.1:4000", Some(9), Some(43));
        snap.fill(&mut l, |pid, cookie| {
            assert_eq!((pid, cookie), (43, 9));
            Some(cgroup::PodCgroup {
                uid: "u-dns".into(),
                container_id: Some("c-unknown".into()),
            })
        });
        assert_eq!(l.origin.netns_inode, Some(4026531840));
        assert_eq!(l.origin.pod, Some(dns.clone()));
        let c = l.origin.container.as_deref().unwrap();
        assert_eq!((c.name.as_deref(), c.id.as_str()), (None, "c-unknown"));

        // Seen on tc only: by address; an unknown cookie names nothing.
        let mut l = lookup("10.244.0.9:4000", Some(1234), None);
        snap.fill(&mut l, none);
        assert_eq!(l.origin.netns_inode, None);
        assert_eq!(l.origin.pod, Some(dns));
        assert_eq!(l.origin.container, None);

        // Nothing known: nothing made up.
        let mut l = lookup("192.168.1.1:4000", None, None);
        snap.fill(&mut l, none);
        assert_eq!(l.origin, Origin::default());

        // A forwarded query is named after its own client, the forwarder.
        let mut l = lookup("10.244.0.5:4000", Some(7), None);
        l.children.push(lookup("10.244.0.9:5300", None, None));
        snap.fill(&mut l, none);
        assert_eq!(l.origin.pod.as_deref().unwrap().label(), "shop/web-1");
        let fwd = &l.children[0].origin;
        assert_eq!(fwd.pod.as_deref().unwrap().label(), "kube-system/coredns-1");
    }
}

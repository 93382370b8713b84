//! Pod identity from a real containerd: Debian's containerd, runc and CNI plugins run
//! real pod sandboxes through containerd's CRI plugin, on a real CNI bridge network,
//! inside a lab netns (the "node"). A container in each pod asks a DNS server on the node
//! (busybox `nslookup`, run in the container through the CRI's ExecSync), and dnstrace,
//! watching the node with `--cri-socket`, must name the pod (namespace, name, UID), the
//! container, the process and the pod's netns inode on those lookups.
//!
//! containerd runs with its own config, root, state and socket under the lab's folder,
//! in a private mount namespace (so its `cni-…` netns mounts are its own), with the
//! cgroupfs driver under a `<prefix>-kubepods` cgroup; everything is stopped and removed
//! at the end, also on failure. The sandbox image is built here from busybox-static:
//! no registry is reached.
use std::{
    collections::HashMap,
    fs,
    net::IpAddr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use dnstrace_tests::{Lab, Proc, Signal, Tracer, dnstrace_bin, skip_without_root};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ExecSyncRequest, ImageSpec,
    LinuxPodSandboxConfig, PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
    runtime_service_client::RuntimeServiceClient,
};
use serde_json::Value;
use tonic::transport::{Channel, Endpoint, Uri};

/// `--metrics` on the node netns's loopback.
const METRICS: &str = "127.0.0.1:9968";
const BUSYBOX: &str = "/bin/busybox";
const CNI_BIN: &str = "/usr/lib/cni";
const IMAGE: &str = "dt.invalid/busybox:1";
/// The DNS server on the node, on its loopback; pods reach it through the bridge.
const DNS: &str = "10.53.0.53";
const ZONE: &str = "pods.test";
const ANSWER: &str = "10.53.0.7";
const POD_SUBNET: &str = "10.88.0.0/24";

/// Which programs are missing (setup installs them all).
fn missing() -> Vec<&'static str> {
    let mut missing = Vec::new();
    for (program, package) in [
        ("containerd", "containerd"),
        ("ctr", "containerd"),
        ("runc", "runc"),
        ("tar", "tar"),
        ("sha256sum", "coreutils"),
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            missing.push(package);
        }
    }
    if !Path::new(BUSYBOX).is_file() {
        missing.push("busybox-static");
    }
    if !Path::new(CNI_BIN).join("bridge").is_file() {
        missing.push("containernetworking-plugins");
    }
    missing
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A docker-archive image of busybox-static (`sh`, `sleep`, `nslookup`), whose
/// entrypoint sleeps: it serves as the sandbox ("pause") image and as the container's.
fn build_image(dir: &Path) -> PathBuf {
    let root = dir.join("image/rootfs");
    let bin = root.join("bin");
    fs::create_dir_all(&bin).unwrap();
    fs::copy(BUSYBOX, bin.join("busybox")).unwrap();
    for applet in ["sh", "sleep", "nslookup", "cat"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    let image = dir.join("image");
    sh(Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(&root)
        .args(["-cf"])
        .arg(image.join("layer.tar"))
        .arg("bin"));
    let sum = sh(Command::new("sha256sum").arg(image.join("layer.tar")));
    let diff_id = sum.split_whitespace().next().unwrap().to_owned();
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/bin/sleep", "2147483647"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
    });
    fs::write(image.join("config.json"), config.to_string()).unwrap();
    let manifest = serde_json::json!([{
        "Config": "config.json",
        "RepoTags": [IMAGE],
        "Layers": ["layer.tar"],
    }]);
    fs::write(image.join("manifest.json"), manifest.to_string()).unwrap();
    let archive = dir.join("image.tar");
    sh(Command::new("tar")
        .arg("-C")
        .arg(&image)
        .arg("-cf")
        .arg(&archive)
        .args(["manifest.json", "config.json", "layer.tar"]));
    archive
}

/// containerd's config: everything under `dir`, the CRI plugin with our sandbox image,
/// runc with cgroupfs, the native snapshotter (no overlay mounts to leave behind), CNI
/// from Debian's plugins with our bridge network.
fn containerd_config(dir: &Path, bridge: &str) -> PathBuf {
    let d = dir.display();
    let cni = dir.join("cni");
    fs::create_dir_all(&cni).unwrap();
    let net = serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "dtpods",
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_SUBNET}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": format!("{d}/ipam"),
                },
            },
            {"type": "loopback"},
        ],
    });
    fs::write(cni.join("10-dtpods.conflist"), net.to_string()).unwrap();
    let config = format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.internal.v1.tracing"]
[debug]
  level = "debug"
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  enable_selinux = false
  # The pause container's default (-998) needs CAP_SYS_RESOURCE, which a sandboxed CI
  # root may lack: never below containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{d}/cni"
"#
    );
    let path = dir.join("containerd.toml");
    fs::write(&path, config).unwrap();
    path
}

/// Stops what containerd leaves running and removes its cgroups, whatever happened:
/// containerd itself, the shims (reparented away from it, found by our socket in their
/// command line), the processes of our pods' cgroups, then the cgroups.
struct Runtime<'a> {
    lab: &'a Lab,
    containerd: Option<Proc>,
    dir: PathBuf,
    cgroup: String,
    /// /run/containerd did not exist before: the empty folder is removed at the end.
    made_run_containerd: bool,
}

impl Drop for Runtime<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.containerd.take() {
            let _ = self.lab.stop(&p, Signal::Term, Duration::from_secs(5));
        }
        kill_and_remove(&self.dir.display().to_string(), &self.cgroup);
        if self.made_run_containerd
            && let Err(e) = fs::remove_dir("/run/containerd")
        {
            eprintln!("removing /run/containerd: {e}");
        }
    }
}

/// SIGKILLs every process whose command line names `dir` (the shims) or that sits in
/// the cgroup `cgroup` (the pods), then removes that cgroup from every hierarchy.
fn kill_and_remove(dir: &str, cgroup: &str) {
    let inside = format!("/{cgroup}/");
    for _ in 0..3 {
        let mut pids: Vec<i32> = Vec::new();
        for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let cmdline = fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cgroups = fs::read_to_string(e.path().join("cgroup")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(dir) || cgroups.contains(&inside) {
                pids.push(pid);
            }
        }
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            // SAFETY: kill(2) on a pid we found to be ours.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    for hierarchy in fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        remove_cgroup(&hierarchy.path().join(cgroup));
    }
}

/// A run killed outright (SIGKILL, a crash) cannot stop what its containerd started:
/// the shims and the pods' processes live on, in a cgroup named after its lab. They are
/// stopped here for every such lab whose creator is gone (`Lab::new` then removes the
/// lab's netns and folder).
fn clean_stale_runtimes() {
    let live: Vec<String> = Lab::live_labs()
        .unwrap_or_default()
        .into_iter()
        .map(|(prefix, _, _)| prefix)
        .collect();
    let mut stale = Vec::new();
    for hierarchy in fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        for e in fs::read_dir(hierarchy.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(prefix) = name.strip_suffix("-kubepods")
                && prefix.starts_with("dtcri")
                && !live.iter().any(|l| l == prefix)
                && !stale.contains(&name)
            {
                stale.push(name);
            }
        }
    }
    for cgroup in stale {
        let prefix = cgroup.trim_end_matches("-kubepods");
        eprintln!("cleaning up after a killed run: {cgroup}");
        kill_and_remove(&format!("{}/{prefix}/", dnstrace_tests::RUN_DIR), &cgroup);
        // The folder it made for its mount namespace, if nothing else put anything there.
        let _ = fs::remove_dir("/run/containerd");
    }
}

/// Removes a cgroup folder, children first.
fn remove_cgroup(path: &Path) {
    if let Ok(entries) = fs::read_dir(path) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path());
            }
        }
        if let Err(e) = fs::remove_dir(path) {
            eprintln!("removing cgroup {}: {e}", path.display());
        }
    }
}

async fn connect(socket: &Path) -> RuntimeServiceClient<Channel> {
    let socket = socket.to_owned();
    let channel = Endpoint::from_static("http://cri.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .expect("connect to containerd's CRI socket");
    RuntimeServiceClient::new(channel)
}

/// One pod the test runs: its sandbox, one container, the pause process's netns.
struct Pod {
    namespace: String,
    name: String,
    uid: String,
    sandbox: String,
    container: String,
    netns_inode: u64,
}

async fn run_pod(
    cri: &mut RuntimeServiceClient<Channel>,
    dir: &Path,
    cgroup: &str,
    namespace: &str,
    name: &str,
    uid: &str,
) -> Pod {
    let logs = dir.join("logs").join(name);
    fs::create_dir_all(&logs).unwrap();
    let config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.to_owned(),
            uid: uid.to_owned(),
            namespace: namespace.to_owned(),
            attempt: 0,
        }),
        hostname: name.to_owned(),
        log_directory: logs.display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: format!("/{cgroup}/besteffort/pod{uid}"),
            ..Default::default()
        }),
        ..Default::default()
    };
    let sandbox = cri
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox {namespace}/{name}: {e}"))
        .into_inner()
        .pod_sandbox_id;
    let container = cri
        .create_container(CreateContainerRequest {
            pod_sandbox_id: sandbox.clone(),
            config: Some(ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: "app".to_owned(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image: IMAGE.to_owned(),
                    ..Default::default()
                }),
                command: vec!["/bin/sleep".to_owned(), "3600".to_owned()],
                log_path: "app.log".to_owned(),
                ..Default::default()
            }),
            sandbox_config: Some(config),
        })
        .await
        .unwrap_or_else(|e| panic!("CreateContainer in {name}: {e}"))
        .into_inner()
        .container_id;
    cri.start_container(StartContainerRequest {
        container_id: container.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("StartContainer in {name}: {e}"));
    let status = cri
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: sandbox.clone(),
            verbose: true,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner();
    let info: Value = serde_json::from_str(&status.info["info"]).expect("verbose info is JSON");
    let pid = info["pid"].as_u64().expect("the sandbox's pid");
    let netns_inode = fs::metadata(format!("/proc/{pid}/ns/net"))
        .expect("the sandbox's netns")
        .ino();
    let ip = status.status.and_then(|s| s.network).map(|n| n.ip);
    eprintln!("pod {namespace}/{name}: sandbox pid {pid}, netns {netns_inode}, ip {ip:?}");
    Pod {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        uid: uid.to_owned(),
        sandbox,
        container,
        netns_inode,
    }
}

/// busybox `nslookup` inside the pod's container (A and AAAA); its stdout.
async fn nslookup(cri: &mut RuntimeServiceClient<Channel>, pod: &Pod, qname: &str) -> String {
    let r = cri
        .exec_sync(ExecSyncRequest {
            container_id: pod.container.clone(),
            cmd: vec!["nslookup".into(), qname.into(), DNS.into()],
            timeout: 10,
        })
        .await
        .unwrap_or_else(|e| panic!("ExecSync nslookup in {}: {e}", pod.name))
        .into_inner();
    // It also asks AAAA, which dnsmasq refuses here: the exit code says nothing of A.
    String::from_utf8_lossy(&r.stdout).into_owned()
}

/// The lookups of `qname` (A) that name `pod` fully.
fn named(lookups: &[Value], qname: &str, pod: &Pod) -> Vec<Value> {
    lookups
        .iter()
        .filter(|l| l["qname"] == qname && l["qtype"] == "A")
        .filter(|l| l["pod_name"] == pod.name.as_str())
        .cloned()
        .collect()
}

fn check_lookup(l: &Value, pod: &Pod) {
    assert_eq!(l["pod_namespace"], pod.namespace.as_str(), "{l}");
    assert_eq!(l["pod_name"], pod.name.as_str(), "{l}");
    assert_eq!(l["pod_uid"], pod.uid.as_str(), "{l}");
    assert_eq!(l["netns_inode"], pod.netns_inode, "{l}");
    assert_eq!(l["container"], "app", "{l}");
    assert_eq!(l["container_id"], pod.container.as_str(), "{l}");
    assert_eq!(l["comm"], "nslookup", "{l}");
    assert!(l["pid"].as_u64().is_some_and(|p| p > 1), "{l}");
    assert_eq!(l["verdict"], "ok", "{l}");
}

#[test]
fn lookups_from_containerd_pods_carry_the_pods_names() {
    if skip_without_root() || dnstrace_bin().is_none() {
        return;
    }
    let missing = missing();
    if !missing.is_empty() {
        // `cargo xtask setup` installs them; only a hand-made environment gets here.
        eprintln!(
            "SKIPPED: lookups_from_containerd_pods_carry_the_pods_names needs {} (cargo xtask setup installs them)",
            missing.join(" ")
        );
        return;
    }
    clean_stale_runtimes();
    let lab = Lab::new("cri").expect("lab");
    let node = lab.add_netns("node").expect("node netns");
    lab.add_addr(&node, "lo", &format!("{DNS}/32")).unwrap();
    lab.sysctl(&node, "net.ipv4.ip_forward", "1").unwrap();
    let dns_ip: IpAddr = DNS.parse().unwrap();
    let dnsmasq = lab
        .start_dnsmasq(
            &node,
            "dns",
            &[dns_ip],
            &[&format!("--address=/{ZONE}/{ANSWER}")],
        )
        .expect("dnsmasq on the node");
    let _ = dnsmasq;
    let dir = lab.dir().join("containerd");
    fs::create_dir_all(&dir).unwrap();
    let bridge = format!("{}br", lab.prefix());
    let config = containerd_config(&dir, &bridge);
    let socket = dir.join("containerd.sock");
    let cgroup = format!("{}-kubepods", lab.prefix());
    // containerd in the node's netns, in a mount namespace of its own where /run/netns
    // and /run/containerd (runc's state, the shims' sockets) are fresh tmpfs: what it
    // puts there exists in that namespace only, and goes with it.
    let run_containerd = Path::new("/run/containerd");
    let made_run_containerd = !run_containerd.exists();
    fs::create_dir_all(run_containerd).unwrap();
    let mut cmd = lab.cmd_setns(&node, "unshare").unwrap();
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(concat!(
            "mount -t tmpfs dtpods /run/netns && mount -t tmpfs dtpods /run/containerd && ",
            r#"exec containerd --config "$0""#
        ))
        .arg(&config);
    let containerd = lab.spawn_logged("containerd", cmd).expect("containerd");
    let mut runtime = Runtime {
        lab: &lab,
        containerd: Some(containerd.clone()),
        dir: dir.clone(),
        cgroup: cgroup.clone(),
        made_run_containerd,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline && lab.status(&containerd).unwrap().is_none(),
            "containerd did not start: {}",
            lab.log_tail(&containerd, 40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let version = sh(Command::new("containerd").arg("--version"));
    let runc = sh(Command::new("runc").arg("--version"));
    eprintln!(
        "against {} / {}",
        version.trim(),
        runc.lines().next().unwrap_or("")
    );
    let archive = build_image(&dir);
    sh(Command::new("ctr")
        .arg("--address")
        .arg(&socket)
        .args([
            "-n",
            "k8s.io",
            "images",
            "import",
            "--snapshotter",
            "native",
        ])
        .arg(&archive));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut cri = rt.block_on(connect(&socket));
    let mut pods = Vec::new();
    // One pod before dnstrace starts (named from the first refresh)…
    pods.push(rt.block_on(run_pod(
        &mut cri,
        &dir,
        &cgroup,
        "shop",
        "web-1",
        "0f3c2a51-7d0e-4c1b-9a55-3e2b8c6d1f01",
    )));
    let tracer = Tracer::start(
        &lab,
        &node,
        "trace",
        &[
            "--auto",
            "--hops",
            "all",
            "--cri-socket",
            &socket.display().to_string(),
            "--metrics",
            METRICS,
            "--metrics-pods",
        ],
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    // …and one while it runs (named by a later refresh).
    pods.push(rt.block_on(run_pod(
        &mut cri,
        &dir,
        &cgroup,
        "ops",
        "probe-1",
        "6b1d9e02-55aa-4f0c-8c3d-7a9e1b2c3d02",
    )));
    let mut results: HashMap<String, Vec<Value>> = HashMap::new();
    for pod in &pods {
        let qname = format!("{}.{ZONE}", pod.name);
        let fq = format!("{qname}.");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let out = rt.block_on(nslookup(&mut cri, pod, &qname));
            assert!(out.contains(ANSWER), "{out}");
            std::thread::sleep(Duration::from_millis(500));
            let found = named(&tracer.lookups(), &fq, pod);
            if !found.is_empty() {
                results.insert(pod.name.clone(), found);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no lookup of {fq} named {}/{}: {:?}\n{}",
                pod.namespace,
                pod.name,
                tracer
                    .lookups()
                    .iter()
                    .filter(|l| l["qname"] == fq.as_str())
                    .map(|l| l.to_string())
                    .collect::<Vec<_>>(),
                tracer.stderr()
            );
        }
    }
    let said = format!("pod names: from the CRI socket {}", socket.display());
    assert!(tracer.stderr().contains(&said), "{}", tracer.stderr());
    // `--metrics-pods`: the pods' lookups by namespace and name (issue 12, part 1).
    let scraped = lab
        .exec(
            &node,
            &[
                "curl",
                "-sf",
                "--max-time",
                "5",
                &format!("http://{METRICS}/metrics"),
            ],
        )
        .expect("curl");
    for pod in &pods {
        let series = format!(
            "dnstrace_pod_lookups_total{{namespace=\"{}\",pod=\"{}\",verdict=\"ok\"}} ",
            pod.namespace, pod.name
        );
        assert!(
            scraped.stdout.contains(&series),
            "{series}: {}",
            scraped.stdout
        );
    }
    let out = tracer.out.clone();
    tracer.stop(Signal::Int).unwrap_or_else(|e| panic!("{e:#}"));
    for pod in &pods {
        for l in &results[&pod.name] {
            check_lookup(l, pod);
        }
    }
    // The pod that was there at the start is named on its very first lookup.
    let first = &pods[0];
    let fq = format!("{}.{ZONE}.", first.name);
    let text = fs::read_to_string(&out).unwrap();
    let records: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let first_lookup = records
        .iter()
        .find(|r| r["type"] == "lookup" && r["qname"] == fq.as_str() && r["qtype"] == "A")
        .expect("a lookup of the first pod");
    check_lookup(first_lookup, first);
    // Its query as a packet, sent by the pod's socket, names it too.
    let packet = records
        .iter()
        .find(|r| {
            r["type"] == "packet"
                && r["dir"] == "socket-out"
                && r["qname"] == fq.as_str()
                && r["qr"] == false
        })
        .expect("the query's socket-out packet");
    assert_eq!(packet["pod_name"], first.name.as_str(), "{packet}");
    assert_eq!(packet["netns_inode"], first.netns_inode, "{packet}");
    assert_eq!(packet["comm"], "nslookup", "{packet}");

    // `--pod` and `--namespace` show the lookups of the pods asked for, and only those;
    // the healthy ones in the default compact form, which keeps the pod.
    for (args, shown) in [
        (&["--pod", "*/web-*"][..], "web-1"),
        (&["--namespace", "ops"][..], "probe-1"),
    ] {
        let mut all = vec!["--auto", "--hops", "problems", "--cri-socket"];
        let socket_arg = socket.display().to_string();
        all.push(&socket_arg);
        all.extend_from_slice(args);
        let tracer = Tracer::start_lookups(&lab, &node, &format!("filter-{shown}"), &all)
            .unwrap_or_else(|e| panic!("{e:#}"));
        for pod in &pods {
            let qname = format!("{}.{ZONE}", pod.name);
            rt.block_on(nslookup(&mut cri, pod, &qname));
        }
        let fq = format!("{shown}.{ZONE}.");
        tracer
            .wait_lookups(|l| l["qname"] == fq.as_str(), 1, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{args:?}: {e:#}"));
        let trace = tracer.stop(Signal::Int).unwrap_or_else(|e| panic!("{e:#}"));
        let lookups = trace.lookups_for(&fq);
        assert!(!lookups.is_empty(), "{args:?}");
        for r in &trace.lookups {
            assert_eq!(r["pod_name"], shown, "{args:?} showed {r}");
        }
        let compact = lookups
            .iter()
            .find(|l| l["qtype"] == "A" && l.get("hops").is_none())
            .unwrap_or_else(|| panic!("{args:?}: no compact A lookup: {lookups:?}"));
        let pod = pods.iter().find(|p| p.name == shown).unwrap();
        assert_eq!(
            compact["pod_namespace"],
            pod.namespace.as_str(),
            "{compact}"
        );
        assert_eq!(compact["netns_inode"], pod.netns_inode, "{compact}");
        assert_eq!(compact["container"], "app", "{compact}");
        // Issue 10, part 7: at most 400 bytes for a healthy lookup, pod names included.
        let bytes = compact.to_string().len();
        assert!(bytes <= 400, "{bytes} bytes: {compact}");
        eprintln!("a compact lookup of {shown} ({bytes} bytes): {compact}");
        let summary = &trace.summary;
        assert!(
            summary["lookups"]["not_shown"].as_u64().unwrap_or(0) >= 1,
            "{args:?}: the other pod's lookups were not counted as not shown: {summary}"
        );
    }

    // Without the runtime (`--no-cri`), the pod is known by the cgroup of the processes
    // in its netns: its UID, no name.
    {
        let tracer = Tracer::start_lookups(
            &lab,
            &node,
            "no-cri",
            &["--auto", "--hops", "all", "--no-cri"],
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        let pod = &pods[0];
        let fq = format!("{}.{ZONE}.", pod.name);
        rt.block_on(nslookup(&mut cri, pod, &format!("{}.{ZONE}", pod.name)));
        tracer
            .wait_lookups(|l| l["qname"] == fq.as_str(), 1, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("--no-cri: {e:#}"));
        let trace = tracer.stop(Signal::Int).unwrap_or_else(|e| panic!("{e:#}"));
        let l = trace
            .lookups_for(&fq)
            .into_iter()
            .find(|l| l["qtype"] == "A")
            .expect("an A lookup");
        assert_eq!(l["pod_uid"], pod.uid.as_str(), "{l}");
        assert_eq!(l["netns_inode"], pod.netns_inode, "{l}");
        assert!(
            l.get("pod_name").is_none() && l.get("container").is_none(),
            "{l}"
        );
        assert!(
            !trace.stderr.contains("CRI socket"),
            "--no-cri still asked the runtime: {}",
            trace.stderr
        );
    }

    // Stop the pods the way the kubelet does, then everything else.
    for pod in &pods {
        rt.block_on(cri.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.sandbox.clone(),
        }))
        .unwrap_or_else(|e| panic!("StopPodSandbox {}: {e}", pod.name));
        rt.block_on(cri.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod.sandbox.clone(),
        }))
        .unwrap_or_else(|e| panic!("RemovePodSandbox {}: {e}", pod.name));
    }
    drop(cri);
    if let Some(p) = runtime.containerd.take() {
        lab.stop(&p, Signal::Term, Duration::from_secs(5))
            .expect("stop containerd");
    }
    drop(runtime);
    // Nothing of ours is left: no process, no cgroup, no pod netns.
    for pod in &pods {
        let alive = fs::read_dir("/proc").unwrap().flatten().any(|e| {
            fs::metadata(e.path().join("ns/net")).is_ok_and(|m| m.ino() == pod.netns_inode)
        });
        assert!(!alive, "a process is still in {}'s netns", pod.name);
    }
    for hierarchy in fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let left = hierarchy.path().join(&cgroup);
        assert!(!left.exists(), "{} is left", left.display());
    }
    let left: Vec<_> = fs::read_dir("/run/containerd")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left in /run/containerd: {left:?}");
    assert!(
        !made_run_containerd || !run_containerd.exists(),
        "/run/containerd, made for the test, is left"
    );
}

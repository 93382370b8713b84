//! The container image (issue 12, part 4), run the way deploy/daemonset.yaml runs
//! it: only the documented capabilities (`--cap-drop all --cap-add
//! BPF,PERFMON,NET_ADMIN,SYS_PTRACE`), the node's network (here the lab node's
//! netns, never the machine's own), the host's PID namespace, a cgroup namespace
//! of its own, the host's cgroup v2 tree mounted read-only, a read-only root.
//! It must trace the lab's DNS, socket hop included.
//!
//! The image comes from `cargo xtask test` (DNSTRACE_IMAGE), which builds it
//! with `cargo xtask image` first. Needs root and podman.

use std::{
    fs::File,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use dnstrace_tests::{Node, Signal, skip_without_root};
use serde_json::Value;

const CAPS: [&str; 4] = ["BPF", "PERFMON", "NET_ADMIN", "SYS_PTRACE"];
const QUERIES: usize = 5;

/// Removes the container even when the test fails (the lab kills only the client).
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "--force", "--time", "2", &self.0])
            .output();
    }
}

/// Where the host's cgroup v2 tree is mounted (/sys/fs/cgroup, or
/// /sys/fs/cgroup/unified on a hybrid host).
fn cgroup2_root() -> String {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let f: Vec<&str> = pre.split_whitespace().collect();
            (post.starts_with("cgroup2 ") && f.get(3) == Some(&"/")).then(|| f[4].to_owned())
        })
        .expect("a cgroup2 mount")
}

/// The runtime's default seccomp profile, except that bpf(2) is allowed without
/// CAP_SYS_ADMIN (the kernel still checks CAP_BPF): the DaemonSet says Unconfined,
/// this is the tighter equivalent.
fn seccomp_profile(node: &Node) -> std::path::PathBuf {
    let default = std::fs::read_to_string("/usr/share/containers/seccomp.json")
        .expect("podman's default seccomp profile");
    let mut p: Value = serde_json::from_str(&default).unwrap();
    let rules = p["syscalls"].as_array_mut().unwrap();
    for r in rules.iter_mut() {
        let names = r["names"].as_array_mut().unwrap();
        names.retain(|n| n != "bpf");
    }
    rules.retain(|r| !r["names"].as_array().unwrap().is_empty());
    rules.push(serde_json::json!({"names": ["bpf"], "action": "SCMP_ACT_ALLOW"}));
    node.lab
        .write_file("seccomp.json", &p.to_string())
        .expect("write the profile")
}

#[test]
fn image_traces_the_lab_with_only_the_documented_capabilities() {
    if skip_without_root() {
        return;
    }
    let Ok(image) = std::env::var("DNSTRACE_IMAGE") else {
        eprintln!(
            "SKIP: DNSTRACE_IMAGE is not set (cargo xtask test builds the image and sets it)"
        );
        return;
    };
    let node = Node::new("img").expect("build the node");
    let name = format!("{}-dnstrace", node.lab.prefix());
    let _container = Container(name.clone());
    let out = node.lab.dir().join("image.jsonl");
    let err = node.lab.dir().join("image.err");
    let ready = node.lab.dir().join("ready");
    // podman from the root netns; --network puts the container in the node's.
    let mut cmd = Command::new("podman");
    // The lab dir is mounted for the ready file only.
    cmd.args(["run", "--rm", "--name", &name, "--pull=never"])
        .arg(format!("--network=ns:/run/netns/{}", node.node_ns))
        .args(["--pid=host", "--cgroupns=private", "--read-only"])
        .args(["--cap-drop=all", &format!("--cap-add={}", CAPS.join(","))])
        .arg(format!(
            "--security-opt=seccomp={}",
            seccomp_profile(&node).display()
        ))
        // Podman would raise these, and root here may not (no CAP_SYS_RESOURCE).
        .args(["--ulimit=nofile=1024:1024", "--ulimit=nproc=4096:4096"])
        .arg(format!("--volume={}:/sys/fs/cgroup:ro", cgroup2_root()))
        .arg(format!("--volume={}:/out", node.lab.dir().display()))
        .arg("--tmpfs=/tmp")
        .arg(&image)
        .args([
            "watch",
            "--auto",
            "--output",
            "json",
            "--timeout",
            "2s",
            "--ready-file",
            "/out/ready",
        ])
        .stdin(Stdio::null())
        .stdout(File::create(&out).unwrap())
        .stderr(File::create(&err).unwrap());
    let proc = node.lab.spawn("podman", cmd).expect("podman run");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready.exists() {
        if let Ok(Some(status)) = node.lab.status(&proc) {
            panic!(
                "the container exited ({status}) before it was ready: {}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "not ready in 60 s: {}",
            std::fs::read_to_string(&err).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // What podman says the process holds, and what the kernel says.
    let inspect = Command::new("podman")
        .args([
            "inspect",
            &name,
            "--format",
            "{{json .EffectiveCaps}} {{.State.Pid}}",
        ])
        .output()
        .unwrap();
    let inspect = String::from_utf8_lossy(&inspect.stdout).trim().to_owned();
    eprintln!("container: {inspect}");
    let (caps, pid) = inspect.split_once(' ').expect("caps and pid");
    let mut caps: Vec<String> = serde_json::from_str(caps).unwrap();
    let mut want: Vec<String> = CAPS.iter().map(|c| format!("CAP_{c}")).collect();
    want.sort();
    caps.sort();
    assert_eq!(caps, want, "{inspect}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    // CAP_NET_ADMIN 12, CAP_SYS_PTRACE 19, CAP_PERFMON 38, CAP_BPF 39.
    assert_eq!(
        cap_eff,
        (1 << 12) | (1 << 19) | (1 << 38) | (1 << 39),
        "CapEff {cap_eff:#x}"
    );
    let ns = |pid: &str, kind: &str| std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap();
    assert_ne!(
        ns(pid, "cgroup"),
        ns("self", "cgroup"),
        "a cgroup namespace of its own"
    );
    assert_eq!(
        ns(pid, "pid"),
        ns("self", "pid"),
        "the host's PID namespace"
    );
    // The lab node's netns (its bind mount's inode), not the machine's.
    let node_ino = std::os::unix::fs::MetadataExt::ino(
        &std::fs::metadata(format!("/run/netns/{}", node.node_ns)).unwrap(),
    );
    assert_eq!(
        ns(pid, "net").to_string_lossy(),
        format!("net:[{node_ino}]"),
        "the container runs in the lab node's netns"
    );
    let privileged = Command::new("podman")
        .args(["inspect", &name, "--format", "{{.HostConfig.Privileged}}"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&privileged.stdout).trim(), "false");
    for _ in 0..QUERIES {
        node.query_short(&node.pod_ns, node.nodelocal(), &node.www_name, "A", &[])
            .expect("the node answers");
    }
    let www = dnstrace_tests::fqdn(&node.www_name);
    let deadline = Instant::now() + Duration::from_secs(20);
    let lookups = loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let lookups: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["type"] == "lookup" && v["qname"] == www.as_str())
            .collect();
        if lookups.len() >= QUERIES || Instant::now() > deadline {
            break lookups;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    node.lab
        .stop(&proc, Signal::Int, Duration::from_secs(30))
        .expect("stop the container");
    assert!(
        lookups.len() >= QUERIES,
        "{} lookups; {stderr}",
        lookups.len()
    );
    for l in &lookups {
        assert_eq!(l["verdict"], "ok", "{l}");
        // Compact (`path`) or full (`hops`), the pod's veth is on it.
        let on_veth = l["path"]
            .as_str()
            .is_some_and(|p| p.contains(&node.pod_veth))
            || l["hops"]
                .as_array()
                .is_some_and(|h| h.iter().any(|h| h["iface"] == node.pod_veth.as_str()));
        assert!(on_veth, "{l}");
    }
    // The socket hop is attached at the host's cgroup root, through the mount.
    assert!(
        stderr.contains("socket hop via cgroup_skb"),
        "no socket hop: {stderr}"
    );
    let size = Command::new("podman")
        .args(["image", "inspect", "--format", "{{.Size}}", &image])
        .output()
        .unwrap();
    eprintln!(
        "image {image}: {} bytes, ran with {caps:?}, cgroupns private, host PID, read-only root; {} lookups ok",
        String::from_utf8_lossy(&size.stdout).trim(),
        lookups.len()
    );
}

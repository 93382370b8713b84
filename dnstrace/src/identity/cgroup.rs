//! The fallback when no CRI socket answers: the kubelet puts every pod in a cgroup named
//! after its UID and every container in one named after its id, so a process's
//! `/proc/PID/cgroup` says which pod and container it belongs to.
//!
//! The layouts, by cgroup driver and QoS class:
//! - cgroupfs: `/kubepods/burstable/pod<uid>/<id>`, `/kubepods/pod<uid>/<id>` (guaranteed);
//! - systemd: `/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid with
//!   _>.slice/cri-containerd-<id>.scope` (CRI-O: `crio-<id>.scope`).

/// What a cgroup path tells about a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodCgroup {
    /// The pod's UID with dashes, as the API server writes it.
    pub uid: String,
    /// The container's id (64 hex digits), when the process sits in a container's cgroup.
    pub container_id: Option<String>,
}

/// The pod (and container) in the text of `/proc/PID/cgroup`: the first line, v2 or v1,
/// whose path is under a `kubepods` cgroup.
pub fn parse_proc_cgroup(text: &str) -> Option<PodCgroup> {
    text.lines()
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .find_map(parse_path)
}

/// The pod (and container) of one cgroup path.
pub fn parse_path(path: &str) -> Option<PodCgroup> {
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    // The pod's cgroup sits under a kubepods one (a kubelet's --cgroup-root may prefix it).
    segments.by_ref().find(|s| s.contains("kubepods"))?;
    let mut rest = segments.skip_while(|s| pod_uid(s).is_none());
    let uid = pod_uid(rest.next()?)?;
    let container_id = rest.next().and_then(container_id);
    Some(PodCgroup { uid, container_id })
}

/// "pod<uid>" (cgroupfs) or "kubepods-<qos>-pod<uid_with_underscores>.slice" (systemd).
fn pod_uid(segment: &str) -> Option<String> {
    let name = segment.strip_suffix(".slice").unwrap_or(segment);
    let at = name.rfind("pod")?;
    if at > 0 && !name[..at].ends_with('-') {
        return None;
    }
    let uid = name[at + 3..].replace('_', "-");
    is_uid(&uid).then_some(uid)
}

/// 8-4-4-4-12 hex digits.
fn is_uid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// "<id>", "cri-containerd-<id>.scope", "crio-<id>.scope", "docker-<id>.scope"; not
/// CRI-O's monitor ("crio-conmon-<id>.scope").
fn container_id(segment: &str) -> Option<String> {
    let name = segment.strip_suffix(".scope").unwrap_or(segment);
    let id = name.rsplit('-').next()?;
    let prefix = &name[..name.len() - id.len()];
    let known = matches!(
        prefix,
        "" | "cri-containerd-" | "crio-" | "docker-" | "cri-o-"
    );
    (known && id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
    const ID: &str = "4f0b5e1c9a7d2e3f60718293a4b5c6d7e8f901122334455667788990011aabbc";

    fn pod(container: Option<&str>) -> Option<PodCgroup> {
        Some(PodCgroup {
            uid: UID.to_owned(),
            container_id: container.map(str::to_owned),
        })
    }

    #[test]
    fn cgroupfs_driver_every_qos_class() {
        for qos in ["burstable/", "besteffort/", ""] {
            let path = format!("/kubepods/{qos}pod{UID}/{ID}");
            assert_eq!(parse_path(&path), pod(Some(ID)), "{path}");
        }
        // The pod's own cgroup, no container.
        assert_eq!(
            parse_path(&format!("/kubepods/burstable/pod{UID}")),
            pod(None)
        );
    }

    #[test]
    fn systemd_driver_containerd_and_crio() {
        let u = UID.replace('-', "_");
        for (qos, scope) in [
            ("burstable", format!("cri-containerd-{ID}.scope")),
            ("besteffort", format!("crio-{ID}.scope")),
        ] {
            let path =
                format!("/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{u}.slice/{scope}");
            assert_eq!(parse_path(&path), pod(Some(ID)), "{path}");
        }
        // Guaranteed: no QoS slice.
        let path = format!("/kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{ID}.scope");
        assert_eq!(parse_path(&path), pod(Some(ID)));
        // CRI-O's monitor is in the pod, but is no container.
        let path = format!("/kubepods.slice/kubepods-pod{u}.slice/crio-conmon-{ID}.scope");
        assert_eq!(parse_path(&path), pod(None));
    }

    #[test]
    fn proc_cgroup_v1_and_v2_and_a_cgroup_root_prefix() {
        let v2 = format!("0::/kubepods/besteffort/pod{UID}/{ID}\n");
        assert_eq!(parse_proc_cgroup(&v2), pod(Some(ID)));
        let v1 = format!("12:pids:/\n4:memory:/dt42-kubepods/besteffort/pod{UID}/{ID}\n0::/\n");
        assert_eq!(parse_proc_cgroup(&v1), pod(Some(ID)));
    }

    #[test]
    fn not_a_pod() {
        for text in [
            "0::/\n",
            "0::/system.slice/containerd.service\n",
            "0::/user.slice/user-1000.slice/session-2.scope\n",
            // A pod-like name outside kubepods.
            &format!("0::/system.slice/pod{UID}/{ID}\n"),
            // Not a UID.
            "0::/kubepods/burstable/podnotauid/abc\n",
            "",
        ] {
            assert_eq!(parse_proc_cgroup(text), None, "{text:?}");
        }
    }
}

//! The container runtime's CRI API (`runtime.v1.RuntimeService`), over its unix socket, as
//! the kubelet uses it: the pod sandboxes (name, namespace, UID), their netns and IPs,
//! and the containers' names. Nothing here needs Kubernetes API credentials.
use std::{
    collections::HashMap,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    ContainerState, ListContainersRequest, ListPodSandboxRequest, PodSandboxState,
    PodSandboxStatusRequest, runtime_service_client::RuntimeServiceClient,
};
use tonic::transport::{Channel, Endpoint, Uri};

/// Where containerd and CRI-O listen by default, in the order tried.
pub const DEFAULT_SOCKETS: &[&str] = &["/run/containerd/containerd.sock", "/run/crio/crio.sock"];
/// One CRI call's longest wait: a runtime that hangs must not hold up the refresh.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("no CRI socket at {}", tried.join(", "))]
    NoSocket { tried: Vec<String> },
    #[error("connecting to the CRI socket {path}: {source}")]
    Connect {
        path: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("CRI call {call} on {path}: {status}")]
    Call {
        call: &'static str,
        path: String,
        status: Box<tonic::Status>,
    },
}

/// What listing the sandboxes tells of one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SandboxMeta {
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// One pod sandbox, as its verbose status describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sandbox {
    pub meta: SandboxMeta,
    /// The file of its netns (`/var/run/netns/cni-…`), from the verbose status.
    pub netns_path: Option<PathBuf>,
    /// The sandbox's process (`pause`), from the verbose status.
    pub pid: Option<u32>,
    pub ips: Vec<IpAddr>,
}

/// A connected runtime.
pub struct Cri {
    path: String,
    client: RuntimeServiceClient<Channel>,
}

/// The socket to use: `explicit`, or the first of [`DEFAULT_SOCKETS`] that exists.
pub fn find_socket(explicit: Option<&Path>) -> Result<PathBuf, CriError> {
    if let Some(p) = explicit {
        return Ok(p.to_owned());
    }
    DEFAULT_SOCKETS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| CriError::NoSocket {
            tried: DEFAULT_SOCKETS.iter().map(|s| (*s).to_owned()).collect(),
        })
}

impl Cri {
    pub async fn connect(path: &Path) -> Result<Self, CriError> {
        let shown = path.display().to_string();
        let socket = path.to_owned();
        // The URI is required by tonic and ignored: the connector dials the socket.
        let channel = Endpoint::from_static("http://cri.invalid")
            .connect_timeout(CALL_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(socket).await?,
                    ))
                }
            }))
            .await
            .map_err(|source| CriError::Connect {
                path: shown.clone(),
                source,
            })?;
        Ok(Self {
            path: shown,
            client: RuntimeServiceClient::new(channel),
        })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    fn failed(&self, call: &'static str) -> impl FnOnce(tonic::Status) -> CriError + '_ {
        move |status| CriError::Call {
            call,
            path: self.path.clone(),
            status: Box::new(status),
        }
    }

    /// The ready sandboxes.
    pub async fn ready_sandboxes(&mut self) -> Result<Vec<SandboxMeta>, CriError> {
        let items = self
            .client
            .list_pod_sandbox(ListPodSandboxRequest { filter: None })
            .await
            .map_err(self.failed("ListPodSandbox"))?
            .into_inner()
            .items;
        Ok(items
            .into_iter()
            .filter(|s| s.state == PodSandboxState::SandboxReady as i32)
            .filter_map(|s| {
                let m = s.metadata?;
                Some(SandboxMeta {
                    id: s.id,
                    namespace: m.namespace,
                    name: m.name,
                    uid: m.uid,
                })
            })
            .collect())
    }

    /// The verbose status of one sandbox: its netns, process and IPs.
    pub async fn sandbox(&mut self, meta: SandboxMeta) -> Result<Sandbox, CriError> {
        let r = self
            .client
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: meta.id.clone(),
                verbose: true,
            })
            .await
            .map_err(self.failed("PodSandboxStatus"))?
            .into_inner();
        let (netns_path, pid) = r.info.get("info").map_or((None, None), |i| parse_info(i));
        let ips = r
            .status
            .and_then(|s| s.network)
            .map(|n| {
                std::iter::once(n.ip)
                    .chain(n.additional_ips.into_iter().map(|i| i.ip))
                    .filter_map(|ip| ip.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        Ok(Sandbox {
            meta,
            netns_path,
            pid,
            ips,
        })
    }

    /// The running containers: id → (name, sandbox id).
    pub async fn containers(&mut self) -> Result<HashMap<String, (String, String)>, CriError> {
        let items = self
            .client
            .list_containers(ListContainersRequest { filter: None })
            .await
            .map_err(self.failed("ListContainers"))?
            .into_inner()
            .containers;
        Ok(items
            .into_iter()
            .filter(|c| c.state == ContainerState::ContainerRunning as i32)
            .filter_map(|c| Some((c.id, (c.metadata?.name, c.pod_sandbox_id))))
            .collect())
    }
}

/// From the JSON of a verbose sandbox status's `info` (containerd and CRI-O both put the
/// OCI runtime spec there): the path of its network namespace
/// (`runtimeSpec.linux.namespaces[type=network].path`) and its `pid`.
pub fn parse_info(json: &str) -> (Option<PathBuf>, Option<u32>) {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return (None, None);
    };
    let path = v
        .pointer("/runtimeSpec/linux/namespaces")
        .and_then(|n| n.as_array())
        .and_then(|ns| {
            ns.iter()
                .find(|n| n.get("type").and_then(|t| t.as_str()) == Some("network"))
        })
        .and_then(|n| n.get("path")?.as_str())
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    let pid = v
        .get("pid")
        .and_then(|p| p.as_u64())
        .and_then(|p| u32::try_from(p).ok())
        .filter(|&p| p != 0);
    (path, pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape containerd 1.6 writes (trimmed to what matters, the rest as it is).
    #[test]
    fn containerd_info_gives_netns_path_and_pid() {
        let info = r#"{"pid":4242,"processStatus":"running","netNamespaceClosed":false,
            "image":"dt/pause:1","snapshotKey":"abc","runtimeHandler":"",
            "config":{"metadata":{"name":"web","uid":"u1","namespace":"shop"}},
            "runtimeSpec":{"ociVersion":"1.0.2-dev","linux":{"namespaces":[
                {"type":"pid"},{"type":"ipc"},{"type":"uts"},{"type":"mount"},
                {"type":"network","path":"/var/run/netns/cni-1a2b3c4d-0000-1111-2222-333344445555"}]}}}"#;
        assert_eq!(
            parse_info(info),
            (
                Some(PathBuf::from(
                    "/var/run/netns/cni-1a2b3c4d-0000-1111-2222-333344445555"
                )),
                Some(4242)
            )
        );
    }

    #[test]
    fn host_network_sandbox_and_garbage() {
        // hostNetwork: a network namespace entry without a path, or none at all.
        let host = r#"{"pid":7,"runtimeSpec":{"linux":{"namespaces":[{"type":"network"},{"type":"pid"}]}}}"#;
        assert_eq!(parse_info(host), (None, Some(7)));
        let none = r#"{"runtimeSpec":{"linux":{"namespaces":[{"type":"pid"}]}}}"#;
        assert_eq!(parse_info(none), (None, None));
        assert_eq!(parse_info("not json"), (None, None));
        assert_eq!(parse_info(r#"{"pid":-1,"runtimeSpec":[]}"#), (None, None));
    }
}

//! deploy/daemonset.yaml (issue 12, part 4), checked offline: every document
//! deserializes into the Kubernetes API types (k8s-openapi) with no field left
//! unread (a misspelt or misplaced key fails), and it asks for what the README
//! documents: host network and PID, the named capabilities and not privileged,
//! arguments the real binary accepts.

use std::path::Path;

use k8s_openapi::api::{apps::v1::DaemonSet, core::v1::Namespace};
use serde::Deserialize;

fn manifest() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/daemonset.yaml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Deserializes one document as `T`; every key serde did not read is an error.
fn strict<T: serde::de::DeserializeOwned>(doc: serde_yaml::Value) -> (T, Vec<String>) {
    let mut unread = Vec::new();
    let v: T = serde_ignored::deserialize(doc, |path| unread.push(path.to_string()))
        .unwrap_or_else(|e| panic!("not a valid {}: {e}", std::any::type_name::<T>()));
    (v, unread)
}

fn documents() -> Vec<serde_yaml::Value> {
    serde_yaml::Deserializer::from_str(&manifest())
        .map(|d| serde_yaml::Value::deserialize(d).expect("YAML"))
        .collect()
}

fn daemonset() -> DaemonSet {
    let doc = documents()
        .into_iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    strict::<DaemonSet>(doc).0
}

#[test]
fn every_document_is_a_valid_api_object_with_no_unknown_field() {
    let docs = documents();
    assert_eq!(docs.len(), 2, "a Namespace and a DaemonSet");
    for doc in docs {
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        let unread = match kind.as_str() {
            "Namespace" => strict::<Namespace>(doc).1,
            "DaemonSet" => strict::<DaemonSet>(doc).1,
            other => panic!("unexpected kind {other:?}"),
        };
        assert!(unread.is_empty(), "{kind}: unknown fields {unread:?}");
    }
}

/// The check above fails on a misspelt key (it is not a check that cannot fail).
#[test]
fn a_misspelt_key_is_caught() {
    let text = manifest().replacen("hostPID: true", "hostPid: true", 1);
    let doc = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .find(|d| d["kind"] == "DaemonSet")
        .unwrap();
    let (_, unread): (DaemonSet, _) = strict(doc);
    assert!(
        unread.len() == 1 && unread[0].ends_with("spec.?.hostPid"),
        "{unread:?}"
    );
}

#[test]
fn the_pod_asks_for_the_documented_privileges_only() {
    let ds = daemonset();
    let spec = ds.spec.template.spec.unwrap();
    assert_eq!(spec.host_network, Some(true));
    assert_eq!(spec.host_pid, Some(true));
    let c = &spec.containers[0];
    let sc = c.security_context.clone().unwrap();
    assert_eq!(sc.privileged, Some(false));
    let caps = sc.capabilities.unwrap();
    assert_eq!(caps.drop.unwrap(), ["ALL"]);
    let add = caps.add.unwrap();
    assert_eq!(add, ["BPF", "PERFMON", "NET_ADMIN", "SYS_PTRACE"]);
    // Each is in the README's capability table.
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    for cap in &add {
        assert!(
            readme.contains(&format!("| `CAP_{cap}` |")),
            "CAP_{cap} not in the README"
        );
    }
    assert_eq!(
        c.image.as_deref(),
        Some(format!("localhost/dnstrace:{}", env!("CARGO_PKG_VERSION")).as_str())
    );
    let port = &c.ports.as_ref().unwrap()[0];
    assert_eq!(port.container_port, 9968);
    // The arguments are ones the real binary accepts (clap checks each value before --help).
    let Some(bin) = dnstrace_tests::dnstrace_bin() else {
        eprintln!("SKIP (part): DNSTRACE_BIN is not set, the arguments were not run");
        return;
    };
    let args = c.args.clone().unwrap();
    let out = std::process::Command::new(bin)
        .args(&args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dnstrace {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

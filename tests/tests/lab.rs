//! The lab itself: a Node answers through every path, and leaves nothing behind.

use std::{fs, path::Path, time::Instant};

use dnstrace_tests::{Lab, Node, RUN_DIR, skip_without_root};

fn netns_with_prefix(prefix: &str) -> Vec<String> {
    let dash = format!("{prefix}-");
    fs::read_dir("/run/netns")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&dash))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn node_answers_through_nodelocal_clusterip_and_tcp_then_cleans_up() {
    if skip_without_root() {
        return;
    }
    let started = Instant::now();
    let node = Node::new("node").expect("build node");
    eprintln!(
        "node {} built in {:?}",
        node.lab.prefix(),
        started.elapsed()
    );
    let prefix = node.lab.prefix().to_owned();
    assert_eq!(netns_with_prefix(&prefix).len(), 4);
    let want = vec![node.www_a.to_string()];

    let via_nodelocal = node
        .query_short(&node.pod_ns, node.nodelocal_ip, &node.www_name, "A", &[])
        .unwrap();
    assert_eq!(via_nodelocal, want, "pod → node-local-dns");
    let via_clusterip = node
        .query_short(&node.pod_ns, node.cluster_ip, &node.www_name, "A", &[])
        .unwrap();
    assert_eq!(via_clusterip, want, "pod → ClusterIP (DNAT)");
    let via_tcp = node
        .query_short(
            &node.pod_ns,
            node.cluster_ip,
            &node.www_name,
            "A",
            &["+tcp"],
        )
        .unwrap();
    assert_eq!(via_tcp, want, "pod → ClusterIP over TCP");
    let via_tcp_nodelocal = node
        .query_short(
            &node.pod_ns,
            node.nodelocal_ip,
            &node.www_name,
            "A",
            &["+tcp"],
        )
        .unwrap();
    assert_eq!(via_tcp_nodelocal, want, "pod → node-local-dns over TCP");

    let aaaa = node
        .query_short(&node.pod_ns, node.nodelocal_ip, &node.www_name, "AAAA", &[])
        .unwrap();
    assert_eq!(aaaa, vec![node.www_aaaa.to_string()]);

    // Over UDP only (+ignore: don't retry over TCP) the big answer is truncated.
    let udp = node
        .query(
            &node.pod_ns,
            node.cluster_ip,
            &node.big_name,
            "TXT",
            &["+ignore"],
        )
        .unwrap();
    assert!(
        udp.stdout.contains(" tc "),
        "expected TC=1 over UDP:\n{}",
        udp.stdout
    );
    let full = node
        .query_short(&node.pod_ns, node.nodelocal_ip, &node.big_name, "TXT", &[])
        .unwrap();
    assert_eq!(
        full.len(),
        8,
        "dig retries over TCP and gets every TXT record"
    );

    let nx = node
        .query(&node.pod_ns, node.nodelocal_ip, &node.nx_name, "A", &[])
        .unwrap();
    assert!(nx.stdout.contains("status: NXDOMAIN"), "{}", nx.stdout);

    let k = node
        .kquery(
            &node.pod_ns,
            node.cluster_ip,
            &node.www_name,
            "A",
            &["+short"],
        )
        .unwrap();
    assert_eq!(k.stdout.trim(), node.www_a.to_string());

    let started = Instant::now();
    drop(node);
    eprintln!("node torn down in {:?}", started.elapsed());
    assert!(
        netns_with_prefix(&prefix).is_empty(),
        "namespaces left behind"
    );
    assert!(
        !Path::new(RUN_DIR).join(&prefix).exists(),
        "lab dir left behind"
    );
    assert!(
        !Path::new(RUN_DIR).join(format!("{prefix}.pid")).exists(),
        "marker left behind"
    );
}

#[test]
fn two_labs_coexist_and_a_dead_creators_lab_is_reclaimed() {
    if skip_without_root() {
        return;
    }
    let a = Lab::new("coex").unwrap();
    let b = Lab::new("coex").unwrap();
    assert_ne!(a.prefix(), b.prefix());
    a.add_netns("x").unwrap();
    b.add_netns("x").unwrap();

    // Fake a crashed run: a marker with the same tag whose pid is not running.
    let stale = "dtcoexzzzz";
    let ns = format!("{stale}-x");
    let status = std::process::Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .unwrap();
    assert!(status.success());
    // ... and a server it leaked, still running inside its namespace.
    let mut leaked = std::process::Command::new("ip")
        .args(["netns", "exec", &ns, "sleep", "300"])
        .spawn()
        .unwrap();
    for _ in 0..100 {
        let pids = std::process::Command::new("ip")
            .args(["netns", "pids", &ns])
            .output()
            .unwrap();
        if !pids.stdout.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    fs::write(
        Path::new(RUN_DIR).join(format!("{stale}.pid")),
        "999999999 1 coex\n",
    )
    .unwrap();
    let c = Lab::new("coex").unwrap();
    assert!(netns_with_prefix(stale).is_empty(), "stale lab not removed");
    let status = leaked.wait().unwrap();
    assert!(!status.success(), "the leaked process was killed");
    // Live labs with the same tag are left alone.
    assert_eq!(netns_with_prefix(a.prefix()).len(), 1);
    assert_eq!(netns_with_prefix(b.prefix()).len(), 1);

    let prefixes = [a.prefix().to_owned(), b.prefix().to_owned()];
    drop((a, b, c));
    for prefix in prefixes {
        assert!(netns_with_prefix(&prefix).is_empty());
    }
}

#[test]
fn a_failing_server_reports_its_own_error() {
    if skip_without_root() {
        return;
    }
    let lab = Lab::new("fail").unwrap();
    let ns = lab.add_netns("a").unwrap();
    // 10.1.2.3 is on no interface, so dnsmasq --bind-interfaces cannot bind it
    // (or binds nothing and never answers).
    let err = lab
        .start_dnsmasq(&ns, "broken", &["10.1.2.3".parse().unwrap()], &[])
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("broken"), "{msg}");
    eprintln!("error as reported: {msg}");
}

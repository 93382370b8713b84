//! `--metrics ADDR`: Prometheus metrics on `http://ADDR/metrics`.
//!
//! Names follow the ecosystem's habits (see the README's metrics table): a
//! `dnstrace_` prefix, seconds, `_total` counters, rcodes by their usual names,
//! and bounded labels. No label ever holds a query name or a client port. Labels
//! whose values come from the traffic (servers, upstreams, last hops) keep at
//! most [`MAX_VALUES`] distinct values each; later ones are counted under
//! `other`, so a pod spraying queries at random addresses cannot grow the series.
//!
//! Every finished lookup is counted, whatever `--client`, `--qname` or
//! `--verdict` let through to the output: the metrics describe the node.
use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

use crate::{
    capture::KernelCounters,
    correlate::{CorrelateStats, Lookup, Verdict},
};

/// Distinct values kept per traffic-derived label.
pub const MAX_VALUES: usize = 64;
/// Distinct pods kept by `--metrics-pods` (a node runs at most a few hundred).
pub const MAX_PODS: usize = 1024;
/// The label value for everything past [`MAX_VALUES`].
pub const OTHER: &str = "other";

/// Bucket bounds in seconds: sub-millisecond steps for answers on the node, then the
/// OpenTelemetry `dns.lookup.duration` bounds.
const BUCKETS: [f64; 19] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Query types named in labels; the rest are `other`.
const QTYPES: [&str; 16] = [
    "A", "AAAA", "PTR", "SRV", "TXT", "CNAME", "MX", "NS", "SOA", "HTTPS", "SVCB", "ANY", "CAA",
    "DS", "DNSKEY", "NAPTR",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LookupLabels {
    verdict: &'static str,
    qtype: &'static str,
    rcode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DepthLabels {
    depth: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LastHopLabels {
    last_hop: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    to: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamRcodeLabels {
    to: String,
    rcode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PodLabels {
    namespace: String,
    pod: String,
    verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookLabels {
    hook: &'static str,
}

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// At most `max` distinct values; the rest are [`OTHER`].
#[derive(Debug)]
struct Capped {
    seen: Mutex<HashSet<String>>,
    max: usize,
}

impl Capped {
    fn with_max(max: usize) -> Self {
        Capped {
            seen: Mutex::default(),
            max,
        }
    }

    fn get(&self, value: &str) -> String {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.contains(value) {
            return value.to_owned();
        }
        if seen.len() >= self.max {
            return OTHER.to_owned();
        }
        seen.insert(value.to_owned());
        value.to_owned()
    }
}

/// A last hop as a label: the place without the netns cookie that socket hops carry
/// ("socket-out (netns 4026)" → "socket-out"), which would make one series per netns.
fn place(last_hop: &str) -> &str {
    last_hop
        .split_once(" (netns ")
        .map_or(last_hop, |(place, _)| place)
}

/// The tracer's own figures at one moment (cumulative since start).
#[derive(Clone, Debug, Default)]
pub struct Tracer {
    pub kernel: KernelCounters,
    pub interfaces: u64,
    pub socket_hop: bool,
    pub drops: bool,
}

/// Every metric; cheap to share (`Arc`), updated from the pipeline, read by the server.
pub struct Metrics {
    registry: Registry,
    lookups: Family<LookupLabels, Counter>,
    duration: Family<ServerLabels, Histogram, fn() -> Histogram>,
    legs: Family<DepthLabels, Histogram, fn() -> Histogram>,
    unanswered: Family<LastHopLabels, Counter>,
    upstream_queries: Family<UpstreamLabels, Counter>,
    upstream_responses: Family<UpstreamRcodeLabels, Counter>,
    upstream_duration: Family<UpstreamLabels, Histogram, fn() -> Histogram>,
    lost: Family<StageLabels, Counter>,
    packets: Counter,
    dns_packets: Counter,
    kernel_drops: Counter,
    attached: Family<HookLabels, Gauge>,
    live_lookups: Gauge,
    /// `--metrics-pods`: lookups by the client's pod.
    pod_lookups: Option<Family<PodLabels, Counter>>,
    pods: Capped,
    servers: Capped,
    upstreams: Capped,
    last_hops: Capped,
    /// The last cumulative values seen, to turn them into counter increments.
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    kernel: KernelCounters,
    evicted: u64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(false)
    }
}

impl Metrics {
    /// `pods`: also count lookups by the client's pod (`--metrics-pods`).
    pub fn new(pods: bool) -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("dnstrace"),
            lookups: Family::default(),
            duration: Family::new_with_constructor(histogram),
            legs: Family::new_with_constructor(histogram),
            unanswered: Family::default(),
            upstream_queries: Family::default(),
            upstream_responses: Family::default(),
            upstream_duration: Family::new_with_constructor(histogram),
            lost: Family::default(),
            packets: Counter::default(),
            dns_packets: Counter::default(),
            kernel_drops: Counter::default(),
            attached: Family::default(),
            live_lookups: Gauge::default(),
            pod_lookups: pods.then(Family::default),
            pods: Capped::with_max(MAX_PODS),
            servers: Capped::with_max(MAX_VALUES),
            upstreams: Capped::with_max(MAX_VALUES),
            last_hops: Capped::with_max(MAX_VALUES),
            seen: Mutex::default(),
        };
        let r = &mut m.registry;
        r.register(
            "lookups",
            "Client lookups finished, by verdict, query type and the rcode the client got (none: no reply)",
            m.lookups.clone(),
        );
        r.register_with_unit(
            "lookup_duration",
            "Client lookups answered: first query seen to the reply reaching the client, by the server the client asked",
            Unit::Seconds,
            m.duration.clone(),
        );
        r.register_with_unit(
            "leg_duration",
            "Answered queries at each depth of a lookup: 0 the client's, 1 a forwarder's query for it, 2 the next forwarder's, 3+ deeper",
            Unit::Seconds,
            m.legs.clone(),
        );
        r.register(
            "unanswered",
            "Client lookups without a reply, by the last place the query or its forwards were seen",
            m.unanswered.clone(),
        );
        r.register(
            "upstream_queries",
            "Queries forwarders sent for client lookups, by the server they were sent to",
            m.upstream_queries.clone(),
        );
        r.register(
            "upstream_responses",
            "Replies to forwarded queries, by server and rcode",
            m.upstream_responses.clone(),
        );
        r.register_with_unit(
            "upstream_request_duration",
            "Forwarded queries answered: sent to answered, by server",
            Unit::Seconds,
            m.upstream_duration.clone(),
        );
        r.register(
            "events_lost",
            "Events the tracer lost, by stage: kernel_ring (ring buffer full), kernel_copy (packet copy failed), orphaned (a compact record whose payload the reader no longer held), evicted (lookups ended early at the cap on live lookups)",
            m.lost.clone(),
        );
        r.register(
            "packets",
            "Packets the kernel programs ran on",
            m.packets.clone(),
        );
        r.register(
            "dns_packets",
            "Packets on a DNS port",
            m.dns_packets.clone(),
        );
        r.register(
            "kernel_drops",
            "DNS packets the kernel dropped",
            m.kernel_drops.clone(),
        );
        r.register(
            "attached",
            "Capture points attached: interfaces, and 1/0 for the socket hop and the drop tracepoint",
            m.attached.clone(),
        );
        r.register("live_lookups", "Lookups still open", m.live_lookups.clone());
        if let Some(f) = &m.pod_lookups {
            r.register(
                "pod_lookups",
                "Client lookups by the client's pod (namespace and name, from the container runtime) and verdict; pods past 1024 are counted as other",
                f.clone(),
            );
        }
        m
    }

    /// Counts one finished lookup, its forwarded queries and their latencies.
    pub fn lookup(&self, l: &Lookup) {
        let labels = LookupLabels {
            verdict: l.verdict.as_str(),
            qtype: QTYPES
                .iter()
                .find(|t| l.qtype == **t)
                .copied()
                .unwrap_or(OTHER),
            rcode: l
                .rcode
                .map_or_else(|| "none".to_owned(), |r| r.name().into_owned()),
        };
        self.lookups.get_or_create(&labels).inc();
        if let Some(pod) = l.origin.pod.as_deref() {
            self.pod_lookup(
                pod.namespace.as_deref(),
                pod.name.as_deref(),
                labels.verdict,
            );
        }
        if let (Some(ms), Some(_)) = (l.latency_ms, l.rcode) {
            let server = self.servers.get(&l.server.to_string());
            self.duration
                .get_or_create(&ServerLabels { server })
                .observe(ms / 1e3);
        }
        if l.verdict == Verdict::Unanswered {
            let last_hop = self
                .last_hops
                .get(place(l.last_hop.as_deref().unwrap_or("none")));
            self.unanswered
                .get_or_create(&LastHopLabels { last_hop })
                .inc();
        }
        self.leg(l, 0);
    }

    /// One lookup of a pod, when `--metrics-pods` asked for them; a pod known only by
    /// its UID (no CRI) is not counted here.
    fn pod_lookup(&self, namespace: Option<&str>, name: Option<&str>, verdict: &'static str) {
        let (Some(f), Some(namespace), Some(name)) = (&self.pod_lookups, namespace, name) else {
            return;
        };
        let key = self.pods.get(&format!("{namespace}/{name}"));
        let (namespace, pod) = match key.split_once('/') {
            Some((ns, pod)) => (ns.to_owned(), pod.to_owned()),
            None => (OTHER.to_owned(), OTHER.to_owned()),
        };
        f.get_or_create(&PodLabels {
            namespace,
            pod,
            verdict,
        })
        .inc();
    }

    fn leg(&self, l: &Lookup, depth: usize) {
        if let (Some(ms), Some(_)) = (l.latency_ms, l.rcode) {
            let depth = ["0", "1", "2", "3+"][depth.min(3)];
            self.legs
                .get_or_create(&DepthLabels { depth })
                .observe(ms / 1e3);
        }
        for c in &l.children {
            let to = self.upstreams.get(&c.server.to_string());
            self.upstream_queries
                .get_or_create(&UpstreamLabels { to: to.clone() })
                .inc();
            if let Some(rcode) = c.rcode {
                self.upstream_responses
                    .get_or_create(&UpstreamRcodeLabels {
                        to: to.clone(),
                        rcode: rcode.name().into_owned(),
                    })
                    .inc();
                if let Some(ms) = c.latency_ms {
                    self.upstream_duration
                        .get_or_create(&UpstreamLabels { to })
                        .observe(ms / 1e3);
                }
            }
            self.leg(c, depth + 1);
        }
    }

    /// The correlator's own figures (from the pipeline's tick).
    pub fn correlator(&self, s: &CorrelateStats) {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let delta = s.evicted.saturating_sub(seen.evicted);
        seen.evicted = s.evicted.max(seen.evicted);
        self.lost
            .get_or_create(&StageLabels { stage: "evicted" })
            .inc_by(delta);
        self.live_lookups.set(s.live_lookups as i64);
    }

    /// The tracer's figures (from the capture loop's tick).
    pub fn tracer(&self, t: &Tracer) {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let k = &t.kernel;
        let old = &seen.kernel;
        let up = |now: u64, before: u64| now.saturating_sub(before);
        self.packets.inc_by(up(k.packets, old.packets));
        self.dns_packets.inc_by(up(k.dns_seen, old.dns_seen));
        self.kernel_drops.inc_by(up(k.drops, old.drops));
        for (stage, n) in [
            ("kernel_ring", up(k.ring_full, old.ring_full)),
            ("kernel_copy", up(k.copy_failed, old.copy_failed)),
            ("orphaned", up(k.orphaned, old.orphaned)),
        ] {
            self.lost.get_or_create(&StageLabels { stage }).inc_by(n);
        }
        seen.kernel = *k;
        for (hook, n) in [
            ("interfaces", t.interfaces as i64),
            ("socket_hop", i64::from(t.socket_hop)),
            ("drops", i64::from(t.drops)),
        ] {
            self.attached.get_or_create(&HookLabels { hook }).set(n);
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Binds `addr` and serves `GET /metrics` until the task is dropped; returns the
/// address bound (port 0 picks one).
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics: cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let metrics = metrics.clone();
                    async move { Ok::<_, std::convert::Infallible>(respond(&req, &metrics)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = conn.await {
                    log::debug!("metrics connection: {e}");
                }
            });
        }
    });
    Ok((bound, task))
}

fn respond(req: &Request<hyper::body::Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, kind, body) = match (req.method(), req.uri().path()) {
        (&hyper::Method::GET, "/metrics") => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        (&hyper::Method::GET, _) => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "dnstrace serves /metrics only\n".to_owned(),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "GET /metrics\n".to_owned(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(kind) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_from_traffic_are_capped_and_counters_only_grow() {
        let m = Metrics::new(false);
        let c = Capped::with_max(MAX_VALUES);
        let kept: Vec<String> = (0..MAX_VALUES + 5)
            .map(|i| c.get(&format!("10.0.0.{i}:53")))
            .collect();
        assert_eq!(kept.iter().filter(|v| *v == OTHER).count(), 5);
        assert_eq!(c.get("10.0.0.0:53"), "10.0.0.0:53");
        // Cumulative figures become increments; a smaller one (a restart of a counter)
        // adds nothing instead of wrapping.
        let mut t = Tracer::default();
        t.kernel.packets = 10;
        t.kernel.ring_full = 3;
        m.tracer(&t);
        t.kernel.packets = 25;
        m.tracer(&t);
        t.kernel.packets = 5;
        m.tracer(&t);
        let text = m.encode();
        assert!(text.contains("dnstrace_packets_total 25\n"), "{text}");
        assert!(
            text.contains("dnstrace_events_lost_total{stage=\"kernel_ring\"} 3\n"),
            "{text}"
        );
    }

    #[test]
    fn pod_labels_only_when_asked_and_capped() {
        let off = Metrics::new(false);
        off.pod_lookup(Some("shop"), Some("web-1"), "ok");
        assert!(!off.encode().contains("pod_lookups"));
        let on = Metrics::new(true);
        on.pod_lookup(Some("shop"), Some("web-1"), "ok");
        on.pod_lookup(Some("shop"), Some("web-1"), "ok");
        on.pod_lookup(None, Some("uid-only"), "ok");
        for i in 0..MAX_PODS + 3 {
            on.pod_lookup(Some("load"), Some(&format!("p{i}")), "unanswered");
        }
        let t = on.encode();
        assert!(
            t.contains(
                "dnstrace_pod_lookups_total{namespace=\"shop\",pod=\"web-1\",verdict=\"ok\"} 2\n"
            ),
            "{t}"
        );
        // The shop pod took one of the places: 1023 load pods are named, 4 are other.
        assert!(
            t.contains("dnstrace_pod_lookups_total{namespace=\"other\",pod=\"other\",verdict=\"unanswered\"} 4\n"),
            "{t}"
        );
    }

    #[test]
    fn a_last_hop_label_names_the_place_without_a_cookie() {
        assert_eq!(place("socket-out (netns 126373)"), "socket-out");
        assert_eq!(place("eth0 egress"), "eth0 egress");
    }
}

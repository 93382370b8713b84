//! `--client`, `--qname`, `--verdict`, `--pod` and `--namespace`: which finished lookups
//! are written out (text,
//! JSON, the live view) and which packets go to the pcapng. Lookups are still stitched
//! and counted whatever the filter says: it only selects what is shown, so no lookup
//! loses a packet it needs.
use std::collections::BTreeSet;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use ipnet::IpNet;

use crate::correlate::{Lookup, Verdict};

/// What to show; every part given must match (each part matches any of its values).
#[derive(Clone, Debug, Default)]
pub struct LookupFilter {
    clients: Vec<IpNet>,
    qnames: Option<GlobSet>,
    verdicts: Option<BTreeSet<Verdict>>,
    /// `--pod`: globs over the client pod's "namespace/name".
    pods: Option<GlobSet>,
    /// `--namespace`: the client pod's namespace, exactly.
    namespaces: Vec<String>,
}

impl LookupFilter {
    pub fn new(clients: Vec<IpNet>, qnames: &[QnameGlob], verdicts: Vec<VerdictSet>) -> Self {
        let qnames = (!qnames.is_empty()).then(|| {
            let mut set = GlobSetBuilder::new();
            for q in qnames {
                set.add(q.0.clone());
            }
            // Each glob compiled on its own already; a set of valid globs builds.
            set.build().unwrap_or_else(|_| GlobSet::empty())
        });
        let verdicts = (!verdicts.is_empty()).then(|| {
            verdicts
                .into_iter()
                .flat_map(|v| v.0)
                .collect::<BTreeSet<_>>()
        });
        Self {
            clients,
            qnames,
            verdicts,
            pods: None,
            namespaces: Vec::new(),
        }
    }

    /// Adds `--pod` and `--namespace`: only lookups from a named pod that matches.
    pub fn with_pods(mut self, pods: &[PodGlob], namespaces: Vec<String>) -> Self {
        self.pods = (!pods.is_empty()).then(|| {
            let mut set = GlobSetBuilder::new();
            for p in pods {
                set.add(p.0.clone());
            }
            set.build().unwrap_or_else(|_| GlobSet::empty())
        });
        self.namespaces = namespaces;
        self
    }

    /// Nothing asked: everything is shown.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
            && self.qnames.is_none()
            && self.verdicts.is_none()
            && self.pods.is_none()
            && self.namespaces.is_empty()
    }

    pub fn matches(&self, l: &Lookup) -> bool {
        if self.pods.is_some() || !self.namespaces.is_empty() {
            let Some((ns, name)) = l
                .origin
                .pod
                .as_deref()
                .and_then(|p| Some((p.namespace.as_deref()?, p.name.as_deref()?)))
            else {
                return false;
            };
            if !self.namespaces.is_empty() && !self.namespaces.iter().any(|n| n == ns) {
                return false;
            }
            if let Some(pods) = &self.pods
                && !pods.is_match(format!("{ns}/{name}"))
            {
                return false;
            }
        }
        if let Some(v) = &self.verdicts
            && !v.contains(&l.verdict)
        {
            return false;
        }
        if let Some(q) = &self.qnames
            && !q.is_match(l.qname.trim_end_matches('.'))
        {
            return false;
        }
        if !self.clients.is_empty() {
            let ip = l.client.ip();
            if !self.clients.iter().any(|net| net.contains(&ip)) {
                return false;
            }
        }
        true
    }
}

/// The live view's `/` filter: the same `--client`, `--qname` and `--verdict` as the
/// command line (`--flag VALUE` or `--flag=VALUE`), and any other words, which must each
/// appear in the lookup's name or client (case-insensitive), as before.
#[derive(Clone, Debug, Default)]
pub struct Query {
    pub filter: LookupFilter,
    /// Lowercased words to find in "qname client".
    pub words: Vec<String>,
}

impl Query {
    /// Errors name the flag and what is wrong with its value.
    pub fn parse(text: &str) -> Result<Query, String> {
        let (mut clients, mut qnames, mut verdicts, mut words) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut pods, mut namespaces) = (Vec::new(), Vec::new());
        let mut tokens = text.split_whitespace();
        while let Some(t) = tokens.next() {
            let (flag, inline) = match t.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f, Some(v)),
                _ => (t, None),
            };
            if !matches!(
                flag,
                "--client" | "--qname" | "--verdict" | "--pod" | "--namespace"
            ) {
                words.push(t.to_lowercase());
                continue;
            }
            let value = match inline {
                Some(v) => v,
                None => tokens
                    .next()
                    .ok_or_else(|| format!("{flag} needs a value"))?,
            };
            let err = |e: String| format!("{flag}: {e}");
            match flag {
                "--client" => {
                    for v in value.split(',').filter(|v| !v.is_empty()) {
                        clients.push(parse_client(v).map_err(err)?);
                    }
                }
                "--qname" => qnames.push(parse_qname(value).map_err(err)?),
                "--pod" => {
                    for v in value.split(',').filter(|v| !v.is_empty()) {
                        pods.push(parse_pod(v).map_err(err)?);
                    }
                }
                "--namespace" => {
                    for v in value.split(',').filter(|v| !v.is_empty()) {
                        namespaces.push(parse_namespace(v).map_err(err)?);
                    }
                }
                _ => verdicts.push(parse_verdicts(value).map_err(err)?),
            }
        }
        Ok(Query {
            filter: LookupFilter::new(clients, &qnames, verdicts).with_pods(&pods, namespaces),
            words,
        })
    }

    /// `key` is the lookup's "qname client", lowercased.
    pub fn matches(&self, l: &Lookup, key: &str) -> bool {
        self.filter.matches(l) && self.words.iter().all(|w| key.contains(w.as_str()))
    }
}

/// `--client`: a CIDR (`10.244.0.0/16`, `fd00::/8`) or one address.
pub fn parse_client(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is neither an address nor a CIDR (10.244.0.0/16, fd00::/8)"))
}

/// `--qname`: a name or a glob, without case and without the trailing dot: `*` is any
/// run of characters (dots too), `?` one character, `[ab]` a class.
#[derive(Clone, Debug)]
pub struct QnameGlob(globset::Glob);

pub fn parse_qname(s: &str) -> Result<QnameGlob, String> {
    let pattern = s.trim_end_matches('.');
    if pattern.is_empty() {
        return Err("an empty name; use * for every name".into());
    }
    GlobBuilder::new(pattern)
        .case_insensitive(true)
        .literal_separator(false)
        .build()
        .map(QnameGlob)
        .map_err(|e| format!("{s:?}: {e}"))
}

/// `--pod`: `NAMESPACE/NAME` as `hubble observe --pod` writes it, each part a glob
/// (`shop/web-*`, `*/coredns-*`); a bare `NAME` glob matches in every namespace.
#[derive(Clone, Debug)]
pub struct PodGlob(globset::Glob);

pub fn parse_pod(s: &str) -> Result<PodGlob, String> {
    let pattern = if s.contains('/') {
        s.to_owned()
    } else {
        format!("*/{s}")
    };
    match pattern.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {}
        _ => return Err(format!("{s:?} is not NAMESPACE/NAME or NAME")),
    }
    GlobBuilder::new(&pattern)
        .literal_separator(true)
        .build()
        .map(PodGlob)
        .map_err(|e| format!("{s:?}: {e}"))
}

/// `--namespace`: a Kubernetes namespace name, matched exactly.
pub fn parse_namespace(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a namespace name (lowercase letters, digits and -)"
        ))
    }
}

/// `--verdict`: `problems` (every verdict but `ok`) or verdict names, comma-separated.
#[derive(Clone, Debug)]
pub struct VerdictSet(Vec<Verdict>);

pub fn parse_verdicts(s: &str) -> Result<VerdictSet, String> {
    let mut out = Vec::new();
    for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if name == "problems" {
            out.extend(Verdict::ALL.iter().filter(|v| **v != Verdict::Ok));
            continue;
        }
        let v = Verdict::ALL
            .iter()
            .find(|v| v.as_str() == name || v.short() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Verdict::ALL.iter().map(|v| v.as_str()).collect();
                format!(
                    "unknown verdict {name:?}: use problems or any of {}",
                    names.join(", ")
                )
            })?;
        out.push(*v);
    }
    if out.is_empty() {
        return Err("no verdict given: use problems or a verdict name".into());
    }
    Ok(VerdictSet(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(client: &str, qname: &str, verdict: Verdict) -> Lookup {
        Lookup {
            id: 1,
            client: client.parse().unwrap(),
            server: "169.254.25.10:53".parse().unwrap(),
            qname: qname.into(),
            qtype: "A".into(),
            rcode: None,
            verdict,
            culprit: None,
            last_hop: None,
            hint: None,
            latency_ms: None,
            detail: String::new(),
            hops: Vec::new(),
            children: Vec::new(),
            retries: 0,
            start_ts_ns: 0,
            netns: None,
            hops_omitted: 0,
            children_omitted: 0,
            trail: None,
            origin: Default::default(),
        }
    }

    fn filter(clients: &[&str], qnames: &[&str], verdicts: &[&str]) -> LookupFilter {
        LookupFilter::new(
            clients.iter().map(|c| parse_client(c).unwrap()).collect(),
            &qnames
                .iter()
                .map(|q| parse_qname(q).unwrap())
                .collect::<Vec<_>>(),
            verdicts
                .iter()
                .map(|v| parse_verdicts(v).unwrap())
                .collect(),
        )
    }

    #[test]
    fn every_part_must_match_and_each_part_any_value() {
        let pod = lookup(
            "10.244.0.10:40000",
            "www.Example.test.",
            Verdict::ServerError,
        );
        let pod6 = lookup("[fd00:244::10]:40000", "api.corp.", Verdict::Ok);
        assert!(LookupFilter::default().is_empty());
        assert!(LookupFilter::default().matches(&pod));
        let f = filter(&["10.244.0.0/16", "fd00::/8"], &[], &[]);
        assert!(f.matches(&pod) && f.matches(&pod6));
        assert!(!filter(&["10.245.0.0/16"], &[], &[]).matches(&pod));
        assert!(filter(&["10.244.0.10"], &[], &[]).matches(&pod));
        assert!(filter(&[], &["*.example.test"], &[]).matches(&pod));
        assert!(filter(&[], &["WWW.EXAMPLE.TEST."], &[]).matches(&pod));
        assert!(!filter(&[], &["*.example.test"], &[]).matches(&pod6));
        assert!(filter(&[], &["*.example.test", "api.*"], &[]).matches(&pod6));
        assert!(filter(&[], &[], &["problems"]).matches(&pod));
        assert!(!filter(&[], &[], &["problems"]).matches(&pod6));
        assert!(filter(&[], &[], &["ok,server_error"]).matches(&pod6));
        assert!(filter(&[], &[], &["server-error"]).matches(&pod));
        assert!(!filter(&["10.244.0.0/16"], &["*.corp"], &[]).matches(&pod));
    }

    #[test]
    fn the_live_views_query_takes_the_same_flags_and_plain_words() {
        let pod = lookup(
            "10.244.0.10:40000",
            "www.example.test.",
            Verdict::ServerError,
        );
        let key = "www.example.test. 10.244.0.10:40000";
        let m = |text: &str| Query::parse(text).unwrap().matches(&pod, key);
        assert!(m("") && m("www") && m("WWW 10.244"));
        assert!(!m("www api"));
        assert!(m("--verdict problems") && m("--verdict=server_error"));
        assert!(!m("--verdict ok"));
        assert!(m("--client 10.244.0.0/16 --qname *.example.test www"));
        assert!(!m("--client=10.9.0.0/16"));
        assert!(
            Query::parse("--verdict okay")
                .unwrap_err()
                .starts_with("--verdict: unknown verdict")
        );
        assert_eq!(
            Query::parse("--qname").unwrap_err(),
            "--qname needs a value"
        );
    }

    #[test]
    fn pod_and_namespace_match_the_clients_pod() {
        use crate::correlate::PodRef;
        let named = |ns: &str, name: &str| {
            let mut l = lookup("10.244.0.10:40000", "www.example.test.", Verdict::Ok);
            l.origin.pod = Some(std::sync::Arc::new(PodRef {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                uid: "u".into(),
            }));
            l
        };
        let web = named("shop", "web-7f9c");
        let dns = named("kube-system", "coredns-5d78");
        let node = lookup("10.0.0.1:40000", "www.example.test.", Verdict::Ok);
        let uid_only = {
            let mut l = named("x", "y");
            l.origin.pod = Some(std::sync::Arc::new(PodRef {
                uid: "u".into(),
                ..PodRef::default()
            }));
            l
        };
        let f = |pods: &[&str], ns: &[&str]| {
            LookupFilter::default().with_pods(
                &pods
                    .iter()
                    .map(|p| parse_pod(p).unwrap())
                    .collect::<Vec<_>>(),
                ns.iter().map(|n| parse_namespace(n).unwrap()).collect(),
            )
        };
        assert!(f(&["shop/web-*"], &[]).matches(&web));
        assert!(!f(&["shop/web-*"], &[]).matches(&dns));
        assert!(f(&["coredns-*"], &[]).matches(&dns));
        assert!(f(&["*/coredns-*", "shop/*"], &[]).matches(&web));
        assert!(!f(&["web-*"], &[]).matches(&node));
        assert!(!f(&["*"], &[]).matches(&uid_only));
        assert!(f(&[], &["kube-system"]).matches(&dns));
        assert!(!f(&[], &["kube"]).matches(&dns));
        assert!(!f(&[], &["shop"]).matches(&node));
        assert!(!f(&["shop/web-*"], &["kube-system"]).matches(&web));
        assert!(f(&[], &[]).is_empty() && !f(&[], &["shop"]).is_empty());
        // The live view takes them too.
        let m = |text: &str, l: &Lookup| Query::parse(text).unwrap().matches(l, "");
        assert!(m("--pod shop/web-*", &web) && !m("--pod=shop/web-*", &dns));
        assert!(m("--namespace kube-system,shop", &web));
        assert!(!m("--namespace kube-system", &web));
        assert!(parse_pod("shop/").is_err() && parse_pod("a/b/c").is_err());
        assert!(parse_namespace("Shop").is_err());
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        assert!(parse_client("10.244.0.0/33").unwrap_err().contains("CIDR"));
        assert!(parse_client("pod-a").is_err());
        assert!(
            parse_verdicts("okay")
                .unwrap_err()
                .contains("unknown verdict")
        );
        assert!(parse_verdicts(",").is_err());
        assert!(parse_qname(".").is_err());
        assert!(parse_qname("[a").is_err());
    }
}

//! Per-upstream counters, and the recent answers each forwarder got per question (for
//! disagreement).
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use super::UpstreamStats;
use super::state::Fx;
use crate::decode::dns::Rcode;

/// Upstream addresses tracked; more are counted in `dropped`.
const MAX_UPSTREAMS: usize = 1024;
/// Latency samples kept per upstream for the percentiles.
const LATENCY_SAMPLES: usize = 1024;
/// Distinct (upstream, rcode) results kept per forwarder and question.
const RESULTS_PER_QUESTION: usize = 8;

#[derive(Debug, Default)]
struct Acc {
    queries: u64,
    answered: u64,
    unanswered: u64,
    rcodes: Vec<(Rcode, u64)>,
    latency_ms: Vec<f32>,
    next_sample: usize,
}

/// One server's answer to one question that a forwarder forwarded to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Answer {
    pub upstream: SocketAddr,
    pub rcode: Rcode,
    pub ts: u64,
}

/// Whose answers are compared: one forwarder, by the address it serves on and the netns
/// its queries were first seen in, and one question.
pub(super) type AnswerKey = (SocketAddr, u64, u64);

#[derive(Debug)]
pub(super) struct Upstreams {
    window_ns: u64,
    max_questions: usize,
    by_addr: HashMap<SocketAddr, Acc, Fx>,
    /// (forwarder, question hash) → recent answers from the servers it forwarded to.
    history: HashMap<AnswerKey, Vec<Answer>, Fx>,
    pub dropped: u64,
}

impl Upstreams {
    pub fn new(window_ns: u64, max_questions: usize) -> Self {
        Self {
            window_ns,
            max_questions: max_questions.max(1),
            by_addr: HashMap::default(),
            history: HashMap::default(),
            dropped: 0,
        }
    }

    /// One query that left the node for `upstream`; `reply` is (rcode, latency ns) when it
    /// was answered. Feeds the per-upstream table.
    pub fn record(&mut self, upstream: SocketAddr, reply: Option<(Rcode, u64)>) {
        if !self.by_addr.contains_key(&upstream) && self.by_addr.len() >= MAX_UPSTREAMS {
            self.dropped += 1;
            return;
        }
        let acc = self.by_addr.entry(upstream).or_default();
        acc.queries += 1;
        let Some((rcode, latency_ns)) = reply else {
            acc.unanswered += 1;
            return;
        };
        acc.answered += 1;
        match acc.rcodes.iter_mut().find(|(c, _)| *c == rcode) {
            Some((_, n)) => *n += 1,
            None => acc.rcodes.push((rcode, 1)),
        }
        let ms = latency_ns as f32 / 1e6;
        if acc.latency_ms.len() < LATENCY_SAMPLES {
            acc.latency_ms.push(ms);
        } else {
            acc.latency_ms[acc.next_sample] = ms;
            acc.next_sample = (acc.next_sample + 1) % LATENCY_SAMPLES;
        }
    }

    /// The forwarder of `key` got `rcode` from `server`. Whether the server is on this node
    /// or beyond it does not matter, so disagreement needs no uplink.
    pub fn answer(&mut self, key: AnswerKey, server: SocketAddr, rcode: Rcode, now: u64) {
        if !self.history.contains_key(&key) && self.history.len() >= self.max_questions {
            return;
        }
        let window = self.window_ns;
        let answers = self.history.entry(key).or_default();
        answers.retain(|a| a.ts + window >= now);
        match answers
            .iter_mut()
            .find(|a| a.upstream == server && a.rcode == rcode)
        {
            Some(a) => a.ts = a.ts.max(now),
            None => {
                if answers.len() >= RESULTS_PER_QUESTION {
                    answers.remove(0);
                }
                answers.push(Answer {
                    upstream: server,
                    rcode,
                    ts: now,
                });
            }
        }
    }

    /// The answers one forwarder got for one question within the window, when two of its
    /// servers gave different rcodes.
    pub fn disagreement(&self, key: AnswerKey, now: u64) -> Option<Vec<Answer>> {
        let recent: Vec<Answer> = self
            .history
            .get(&key)?
            .iter()
            .filter(|a| a.ts + self.window_ns >= now)
            .copied()
            .collect();
        let conflict = recent.iter().any(|a| {
            recent
                .iter()
                .any(|b| a.upstream != b.upstream && a.rcode != b.rcode)
        });
        conflict.then_some(recent)
    }

    pub fn prune(&mut self, now: u64) {
        let window = self.window_ns;
        self.history.retain(|_, answers| {
            answers.retain(|a| a.ts + window >= now);
            !answers.is_empty()
        });
    }

    pub fn stats(&self) -> Vec<UpstreamStats> {
        let mut out: Vec<UpstreamStats> = self
            .by_addr
            .iter()
            .map(|(addr, acc)| {
                let mut lat = acc.latency_ms.clone();
                lat.sort_unstable_by(f32::total_cmp);
                UpstreamStats {
                    upstream: addr.to_string(),
                    queries: acc.queries,
                    answered: acc.answered,
                    unanswered: acc.unanswered,
                    rcodes: acc
                        .rcodes
                        .iter()
                        .map(|(c, n)| (c.name().into_owned(), *n))
                        .collect::<BTreeMap<_, _>>(),
                    p50_ms: percentile(&lat, 50),
                    p99_ms: percentile(&lat, 99),
                }
            })
            .collect();
        out.sort_by(|a, b| a.upstream.cmp(&b.upstream));
        out
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[f32], p: usize) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    Some(f64::from(sorted[rank - 1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f32> = (1..=100).map(|i| i as f32).collect();
        assert_eq!(percentile(&v, 50), Some(50.0));
        assert_eq!(percentile(&v, 99), Some(99.0));
        assert_eq!(percentile(&[3.0], 99), Some(3.0));
        assert_eq!(percentile(&[], 50), None);
    }

    #[test]
    fn disagreement_needs_one_forwarder_two_servers_and_two_rcodes_in_the_window() {
        let mut u = Upstreams::new(60, 10);
        let (fwd, other) = (addr("10.244.1.10:53"), addr("10.244.2.10:53"));
        let (a, b) = (addr("203.0.113.53:53"), addr("203.0.113.54:53"));
        u.answer((fwd, 5, 1), a, Rcode::NOERROR, 0);
        u.answer((fwd, 5, 1), a, Rcode::NXDOMAIN, 1);
        assert!(
            u.disagreement((fwd, 5, 1), 1).is_none(),
            "same upstream flapping"
        );
        u.answer((other, 5, 1), b, Rcode::SERVFAIL, 1);
        assert!(
            u.disagreement((fwd, 5, 1), 1).is_none(),
            "another forwarder"
        );
        u.answer((fwd, 5, 1), b, Rcode::NOERROR, 2);
        assert_eq!(u.disagreement((fwd, 5, 1), 2).map(|v| v.len()), Some(3));
        assert!(u.disagreement((fwd, 5, 2), 2).is_none(), "another question");
        assert!(
            u.disagreement((fwd, 5, 1), 200).is_none(),
            "outside the window"
        );
        u.prune(200);
        assert!(u.history.is_empty());
    }

    #[test]
    fn the_table_counts_rcodes_and_unanswered() {
        let mut u = Upstreams::new(60, 10);
        let a = addr("203.0.113.53:53");
        u.record(a, Some((Rcode::NOERROR, 1_000_000)));
        u.record(a, Some((Rcode::NXDOMAIN, 3_000_000)));
        u.record(a, None);
        let s = &u.stats()[0];
        assert_eq!((s.queries, s.answered, s.unanswered), (3, 2, 1));
        assert_eq!(s.rcodes["NXDOMAIN"], 1);
        assert_eq!(s.p99_ms, Some(3.0));
    }
}

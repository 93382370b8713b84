//! JSON lines: one object per packet, `{"type":"packet",...}`, and one
//! `{"type":"summary",...}` at the end. The schema is documented in the README
//! and is a user-facing API: add fields, never rename or remove them. Every record
//! starts with its `type` and a [`Stamp`]: `time`, `node`, `schema`.
use std::io::Write;

use serde::Serialize;

use super::{Names, Stamp};
use crate::decode::{Packet, dns};

pub struct JsonSink<W: Write> {
    out: W,
}

#[derive(Serialize)]
struct PacketRecord<'a> {
    r#type: &'static str,
    #[serde(flatten)]
    stamp: Stamp<'a>,
    ts_ns: u64,
    iface: std::sync::Arc<str>,
    ifindex: u32,
    netns: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    netns_inode: Option<u64>,
    dir: &'static str,
    proto: Option<&'static str>,
    src: Option<String>,
    dst: Option<String>,
    id: Option<u16>,
    qr: Option<bool>,
    opcode: Option<&'a str>,
    rcode: Option<crate::decode::dns::Rcode>,
    flags: Vec<&'static str>,
    qname: Option<&'a str>,
    qtype: Option<&'a str>,
    edns: Option<&'a dns::Edns>,
    answers: &'a [dns::Answer],
    wire_len: u32,
    cap_len: u32,
    tcp_flags: Option<String>,
    pid: Option<u32>,
    comm: Option<&'a str>,
    /// The client's pod (`pod_namespace`, `pod_name`, `pod_uid`): the sender of a
    /// query, the receiver of a response.
    #[serde(flatten)]
    pod: Option<std::sync::Arc<crate::correlate::PodRef>>,
    drop_reason: Option<&'a str>,
    issue: Option<String>,
    /// The overlay tunnel the packet was seen in (`src`/`dst` are the inner packet's).
    #[serde(skip_serializing_if = "Option::is_none")]
    tunnel: Option<&'a crate::decode::tunnel::Tunnel>,
}

#[derive(Serialize)]
struct CoverageRecord<'a> {
    r#type: &'static str,
    #[serde(flatten)]
    stamp: Stamp<'a>,
    #[serde(flatten)]
    change: &'a crate::capture::CoverageChange,
}

#[derive(Serialize)]
struct SummaryRecord<'a, S> {
    r#type: &'static str,
    #[serde(flatten)]
    stamp: Stamp<'a>,
    #[serde(flatten)]
    summary: &'a S,
    lost: u64,
}

impl<W: Write> JsonSink<W> {
    pub fn new(out: W) -> Self {
        Self { out }
    }

    pub fn packet(&mut self, p: &Packet, drop: Option<&str>, names: &Names) -> std::io::Result<()> {
        let m = &p.meta;
        let dns = p.dns.as_ref();
        let q = dns.and_then(|d| d.question.as_ref());
        let ts_ns = names.epoch_ns(m.ts_ns);
        let (netns_inode, pod) = names.packet_origin(p);
        let rec = PacketRecord {
            r#type: "packet",
            stamp: names.stamp(ts_ns),
            ts_ns,
            iface: names.iface(m),
            ifindex: m.ifindex,
            netns: m.netns,
            netns_inode,
            dir: m.point.as_str(),
            proto: p.proto.map(|p| match p {
                crate::decode::Proto::Udp => "udp",
                crate::decode::Proto::Tcp => "tcp",
            }),
            src: p.src.map(|a| a.to_string()),
            dst: p.dst.map(|a| a.to_string()),
            id: dns.map(|d| d.id),
            qr: dns.map(|d| d.qr),
            opcode: dns.map(|d| d.opcode.as_str()),
            rcode: dns.filter(|d| d.qr).map(|d| d.rcode),
            flags: dns.map(|d| flag_names(&d.flags)).unwrap_or_default(),
            qname: q.map(|q| &*q.name),
            qtype: q.map(|q| q.qtype.as_str()),
            edns: dns.and_then(|d| d.edns.as_ref()),
            answers: dns.map(|d| d.answers.as_slice()).unwrap_or(&[]),
            wire_len: m.wire_len,
            cap_len: m.cap_len,
            tcp_flags: p.tcp_flags.map(|f| f.short()),
            pid: (m.pid != 0).then_some(m.pid),
            comm: m.comm.as_deref(),
            pod,
            drop_reason: drop,
            issue: p
                .issue
                .as_ref()
                .map(|i| format!("{}: {}", i.kind.as_str(), i.detail)),
            tunnel: p.tunnel.as_deref(),
        };
        serde_json::to_writer(&mut self.out, &rec)?;
        self.out.write_all(b"\n")
    }

    /// A `{"type":"coverage"}` record: the interfaces watched changed.
    pub fn coverage(
        &mut self,
        change: &crate::capture::CoverageChange,
        stamp: Stamp<'_>,
    ) -> std::io::Result<()> {
        let rec = CoverageRecord {
            r#type: "coverage",
            stamp,
            change,
        };
        serde_json::to_writer(&mut self.out, &rec)?;
        self.out.write_all(b"\n")
    }

    /// Writes the end-of-run record: the run's counters, and the events the kernel lost.
    pub fn summary(
        &mut self,
        summary: &impl Serialize,
        lost: u64,
        stamp: Stamp<'_>,
    ) -> std::io::Result<()> {
        let rec = SummaryRecord {
            r#type: "summary",
            stamp,
            summary,
            lost,
        };
        serde_json::to_writer(&mut self.out, &rec)?;
        self.out.write_all(b"\n")?;
        self.out.flush()
    }

    /// Writes one ready-made JSON line.
    /// Writes bytes made by another JsonSink (whole lines).
    pub fn raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)
    }

    /// What was written, for a sink over a buffer.
    pub fn into_inner(self) -> W {
        self.out
    }

    pub fn line(&mut self, json: &str) -> std::io::Result<()> {
        self.out.write_all(json.as_bytes())?;
        self.out.write_all(b"\n")
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

pub(super) fn flag_names(f: &dns::Flags) -> Vec<&'static str> {
    [
        ("aa", f.aa),
        ("tc", f.tc),
        ("rd", f.rd),
        ("ra", f.ra),
        ("ad", f.ad),
        ("cd", f.cd),
    ]
    .into_iter()
    .filter_map(|(n, set)| set.then_some(n))
    .collect()
}

//! DNS wire format: the only module that touches hickory-proto, so the next
//! breaking hickory release only changes this file.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;

use hickory_proto::op::{self, Query};
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

use super::Detail;
use super::text::printable_string;

/// A name from a fixed table ("A", "IN", "QUERY": no allocation), or one made up for a
/// value the table lacks ("TYPE65"). Reads as a `&str`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Text(Cow<'static, str>);

impl Text {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0.into_owned()
    }
}

impl std::ops::Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<&'static str> for Text {
    fn from(name: &'static str) -> Self {
        Self(Cow::Borrowed(name))
    }
}

impl From<String> for Text {
    fn from(name: String) -> Self {
        Self(Cow::Owned(name))
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for Text {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Bytes in the fixed DNS header.
pub const HEADER_LEN: usize = 12;
/// At most this many answer records are kept per message.
pub const MAX_ANSWERS: usize = 16;
/// Longest `Answer::data`, in characters.
pub const MAX_DATA_CHARS: usize = 200;

/// A decoded DNS message, reduced to what the tracer shows and correlates.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Message {
    pub id: u16,
    pub qr: bool,
    /// "QUERY", "NOTIFY", "UPDATE", … or "OPCODE<n>".
    pub opcode: Text,
    /// "NOERROR", "NXDOMAIN", … or "RCODE<n>"; includes the OPT extended bits when present.
    pub rcode: Rcode,
    pub flags: Flags,
    /// The first question.
    pub question: Option<Question>,
    pub qdcount: u16,
    pub ancount: u16,
    pub nscount: u16,
    pub arcount: u16,
    /// Answer section only, at most [`MAX_ANSWERS`] entries.
    pub answers: Vec<Answer>,
    pub edns: Option<Edns>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize)]
pub struct Flags {
    pub aa: bool,
    pub tc: bool,
    pub rd: bool,
    pub ra: bool,
    pub ad: bool,
    pub cd: bool,
}

impl Flags {
    /// Space-separated names of the set flags, in dig's order, e.g. "rd ra".
    pub fn short(&self) -> String {
        [
            (self.aa, "aa"),
            (self.tc, "tc"),
            (self.rd, "rd"),
            (self.ra, "ra"),
            (self.ad, "ad"),
            (self.cd, "cd"),
        ]
        .iter()
        .filter(|(set, _)| *set)
        .map(|(_, name)| *name)
        .collect::<Vec<_>>()
        .join(" ")
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Question {
    /// Fully qualified, with the trailing dot, in the case seen on the wire. Shared: a
    /// message decoded once for several sightings gives each the same name.
    pub name: Arc<str>,
    /// "A", "AAAA", … or "TYPE<n>".
    pub qtype: Text,
    /// "IN", "CH", … or "CLASS<n>".
    pub qclass: Text,
}

impl Question {
    /// Case-insensitive matching key: lowercased name, type and class.
    pub fn key(&self) -> String {
        format!(
            "{} {} {}",
            self.name.to_ascii_lowercase(),
            self.qtype,
            self.qclass
        )
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Answer {
    pub name: Arc<str>,
    pub rtype: Text,
    pub ttl: u32,
    /// RDATA in presentation format, at most [`MAX_DATA_CHARS`] characters.
    pub data: String,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Edns {
    pub udp_size: u16,
    #[serde(rename = "do")]
    pub dnssec_ok: bool,
    pub version: u8,
    /// One entry per option, in wire order: "COOKIE", "NSID", "ECS 10.0.0.0/24", "OPT65001", …
    pub options: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("only {len} bytes, a DNS header needs 12")]
    ShortHeader { len: usize },
    #[error("{reason}")]
    Malformed { reason: String },
}

/// Parses a DNS message.
///
/// The 12-byte header is read by hand first, so a message that the full parse
/// rejects still comes back (inside the `Err`) with its id, flags, counts and,
/// when it can be read alone, its first question.
#[expect(
    clippy::result_large_err,
    reason = "the Err carries a header-only Message, as large as the Ok one"
)]
pub fn parse(bytes: &[u8]) -> Result<Message, (Option<Message>, DnsError)> {
    parse_with(bytes, Detail::Full)
}

/// [`parse`], keeping the answers only when `detail` asks for them: the same result
/// otherwise, the same error for the same bytes.
#[expect(
    clippy::result_large_err,
    reason = "the Err carries a header-only Message, as large as the Ok one"
)]
pub fn parse_with(bytes: &[u8], detail: Detail) -> Result<Message, (Option<Message>, DnsError)> {
    let Some(header) = Header::read(bytes) else {
        return Err((None, DnsError::ShortHeader { len: bytes.len() }));
    };
    let answers = detail == Detail::Full;
    if let Some(message) = fast_parse(bytes, &header, answers) {
        return Ok(message);
    }
    let reason = match guarded(|| full_parse(bytes, &header, answers)) {
        Some(Ok(message)) => return Ok(message),
        Some(Err(reason)) => reason,
        None => "decoder panicked".to_owned(),
    };
    let question = if header.qdcount > 0 {
        guarded(|| first_question(bytes)).flatten()
    } else {
        None
    };
    let partial = header.into_message(question);
    Err((Some(partial), DnsError::Malformed { reason }))
}

/// The fast path's reading of a message and hickory's (None when hickory panicked), for
/// the fuzzers' differential check; None without a header.
#[cfg(fuzzing)]
#[expect(clippy::type_complexity, reason = "used by one fuzz target only")]
pub fn fast_and_full(bytes: &[u8]) -> Option<(Option<Message>, Option<Result<Message, String>>)> {
    let header = Header::read(bytes)?;
    Some((
        fast_parse(bytes, &header, true),
        guarded(|| full_parse(bytes, &header, true)),
    ))
}

/// Runs `f`, turning a panic into `None`: one hostile packet must not kill the tracer.
fn guarded<T>(f: impl FnOnce() -> T) -> Option<T> {
    // The closures only read their inputs, so a panic cannot leave broken state behind.
    panic::catch_unwind(AssertUnwindSafe(f)).ok()
}

/// The fixed header, read without hickory.
struct Header {
    id: u16,
    qr: bool,
    opcode: u8,
    flags: Flags,
    rcode: u8,
    qdcount: u16,
    ancount: u16,
    nscount: u16,
    arcount: u16,
}

impl Header {
    fn read(bytes: &[u8]) -> Option<Self> {
        let h: &[u8; HEADER_LEN] = bytes.get(..HEADER_LEN)?.try_into().ok()?;
        let be16 = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]);
        Some(Self {
            id: be16(0),
            qr: h[2] & 0x80 != 0,
            opcode: (h[2] >> 3) & 0x0f,
            flags: Flags {
                aa: h[2] & 0x04 != 0,
                tc: h[2] & 0x02 != 0,
                rd: h[2] & 0x01 != 0,
                ra: h[3] & 0x80 != 0,
                ad: h[3] & 0x20 != 0,
                cd: h[3] & 0x10 != 0,
            },
            rcode: h[3] & 0x0f,
            qdcount: be16(4),
            ancount: be16(6),
            nscount: be16(8),
            arcount: be16(10),
        })
    }

    fn into_message(self, question: Option<Question>) -> Message {
        Message {
            id: self.id,
            qr: self.qr,
            opcode: opcode_name(self.opcode),
            rcode: Rcode(u16::from(self.rcode)),
            flags: self.flags,
            question,
            qdcount: self.qdcount,
            ancount: self.ancount,
            nscount: self.nscount,
            arcount: self.arcount,
            answers: Vec::new(),
            edns: None,
        }
    }
}

/// `answers`: keep the answer records (else `answers` stays empty).
fn full_parse(bytes: &[u8], header: &Header, answers: bool) -> Result<Message, String> {
    let parsed = op::Message::from_vec(bytes).map_err(|e| printable_string(e.to_string()))?;
    let edns = parsed.edns.as_ref();
    let rcode = u16::from(header.rcode) | edns.map_or(0, |e| u16::from(e.rcode_high()) << 4);
    Ok(Message {
        id: header.id,
        qr: header.qr,
        opcode: opcode_name(header.opcode),
        rcode: Rcode(rcode),
        flags: header.flags,
        question: parsed.queries.first().map(question),
        qdcount: header.qdcount,
        ancount: header.ancount,
        nscount: header.nscount,
        arcount: header.arcount,
        answers: parsed
            .answers
            .iter()
            .take(if answers { MAX_ANSWERS } else { 0 })
            .map(answer)
            .collect(),
        edns: edns.map(|e| Edns {
            udp_size: e.max_payload(),
            dnssec_ok: e.flags().dnssec_ok,
            version: e.version(),
            options: e
                .options()
                .options
                .iter()
                .map(|(code, option)| edns_option(*code, option))
                .collect(),
        }),
    })
}

/// Messages of the most common shape, read without hickory (which costs about
/// three times as much): a standard query or response with one question
/// whose name is plain letters, digits, `-` and `_`; answers that are all
/// A or AAAA records in class IN, named by a pointer to the question or by a
/// plain name; no authority records; and at most one additional record, an
/// OPT without options. Anything else returns None and takes the full parse,
/// which gives the same [`Message`] for these (tests compare the two).
///
/// `keep`: keep the answers; without it they are checked (so the same messages take
/// this path) but their text is never made.
fn fast_parse(bytes: &[u8], header: &Header, keep: bool) -> Option<Message> {
    if header.opcode != 0
        || header.qdcount != 1
        || header.nscount != 0
        || header.arcount > 1
        || usize::from(header.ancount) > MAX_ANSWERS
    {
        return None;
    }
    let be16 = |at: usize| -> Option<u16> {
        Some(u16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
    };
    let be32 = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    let (qname, mut at) = plain_name(bytes, HEADER_LEN)?;
    let question = Question {
        qtype: type_name(RecordType::from(be16(at)?)),
        qclass: class_name(DNSClass::from(be16(at + 2)?)),
        name: qname,
    };
    at += 4;
    let mut answers = Vec::with_capacity(if keep { usize::from(header.ancount) } else { 0 });
    for _ in 0..header.ancount {
        let pointer = be16(at)? == 0xc000 | HEADER_LEN as u16;
        let name = if pointer {
            at += 2;
            None
        } else if keep {
            let (name, next) = plain_name(bytes, at)?;
            at = next;
            Some(name)
        } else {
            at = plain_name_end(bytes, at)?;
            None
        };
        let (rtype, class, ttl, len) = (be16(at)?, be16(at + 2)?, be32(at + 4)?, be16(at + 8)?);
        at += 10;
        let rdata = bytes.get(at..at + usize::from(len))?;
        at += usize::from(len);
        if !matches!((rtype, class, rdata.len()), (1, 1, 4) | (28, 1, 16)) {
            return None;
        }
        if !keep {
            continue;
        }
        let name = name.unwrap_or_else(|| question.name.clone());
        let data = match (rtype, class, rdata.len()) {
            (1, 1, 4) => {
                super::text::ipv4_string(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(rdata).ok()?))
            }
            (28, 1, 16) => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(rdata).ok()?).to_string(),
            _ => return None,
        };
        answers.push(Answer {
            name,
            rtype: Text::from(if rtype == 1 { "A" } else { "AAAA" }),
            ttl,
            data,
        });
    }
    let mut edns = None;
    let mut rcode = u16::from(header.rcode);
    if header.arcount == 1 {
        // Root name, type OPT, CLASS = payload size, TTL = ext. rcode, version, flags; no options.
        if bytes.get(at) != Some(&0) || be16(at + 1)? != 41 || be16(at + 9)? != 0 {
            return None;
        }
        let (udp_size, ttl) = (be16(at + 3)?, be32(at + 5)?);
        if udp_size < 512 {
            return None;
        }
        at += 11;
        rcode |= ((ttl >> 24) as u16) << 4;
        edns = Some(Edns {
            udp_size,
            dnssec_ok: ttl & 0x8000 != 0,
            version: (ttl >> 16) as u8,
            options: Vec::new(),
        });
    }
    if at != bytes.len() {
        return None;
    }
    Some(Message {
        id: header.id,
        qr: header.qr,
        opcode: opcode_name(header.opcode),
        rcode: Rcode(rcode),
        flags: header.flags,
        question: Some(question),
        qdcount: header.qdcount,
        ancount: header.ancount,
        nscount: header.nscount,
        arcount: header.arcount,
        answers,
        edns,
    })
}

/// The bytes a plain label may hold: ASCII letters, digits, `-` and `_` (one table
/// load per byte rather than three range checks).
static LABEL_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || c == b'-' || c == b'_';
        b += 1;
    }
    table
};

/// Whether `label` is plain: [`LABEL_BYTE`]s, not starting with `-`.
fn plain_label(label: &[u8]) -> bool {
    label.first() != Some(&b'-') && label.iter().all(|&b| LABEL_BYTE[usize::from(b)])
}

/// Where the uncompressed plain name at `at` ends (labels of at most 63 [`LABEL_BYTE`]s,
/// 253 name bytes in all), when it is one.
fn plain_name_end(bytes: &[u8], mut at: usize) -> Option<usize> {
    let mut name_len = 0;
    loop {
        let len = usize::from(*bytes.get(at)?);
        at += 1;
        if len == 0 {
            return Some(at);
        }
        if len > 63 {
            return None;
        }
        name_len += len + 1;
        if name_len > 253 || !plain_label(bytes.get(at..at + len)?) {
            return None;
        }
        at += len;
    }
}

/// An uncompressed name at `at` made of letters, digits, `-` and `_`, as
/// hickory's `to_ascii` writes it (trailing dot), and the offset after it.
fn plain_name(bytes: &[u8], start: usize) -> Option<(Arc<str>, usize)> {
    // Checked first; then the wire form after the first length byte is copied whole, and
    // each later length byte (and the final 0) becomes the dot that ends its label.
    let end = plain_name_end(bytes, start)?;
    if end == start + 1 {
        return Some((".".into(), end));
    }
    // At most 254 bytes (checked above): built on the stack, then one allocation.
    let mut buf = [0u8; 256];
    let name = buf.get_mut(..end - start - 1)?;
    name.copy_from_slice(&bytes[start + 1..end]);
    let mut at = usize::from(bytes[start]);
    while at < name.len() {
        let next = usize::from(name[at]);
        name[at] = b'.';
        at += 1 + next;
    }
    debug_assert!(name.is_ascii());
    // SAFETY: every byte is ASCII: the label bytes passed `LABEL_BYTE` (ASCII only) in
    // `plain_name_end`, and each length byte, the final 0 included, became a dot above.
    // Checking again with `from_utf8` cost 2 % of the collector's instructions.
    let name = unsafe { std::str::from_utf8_unchecked(name) };
    Some((name.into(), end))
}

/// Reads only the first question, for messages whose later sections are broken.
fn first_question(bytes: &[u8]) -> Option<Question> {
    let mut decoder = BinDecoder::new(bytes);
    decoder.read_slice(HEADER_LEN).ok()?;
    Query::read(&mut decoder).ok().map(|q| question(&q))
}

fn question(query: &Query) -> Question {
    Question {
        name: printable_string(query.name().to_ascii()).into(),
        qtype: type_name(query.query_type()),
        qclass: class_name(query.query_class()),
    }
}

fn answer(record: &Record) -> Answer {
    Answer {
        name: printable_string(record.name.to_ascii()).into(),
        rtype: type_name(record.record_type()),
        ttl: record.ttl,
        data: rdata_text(&record.data),
    }
}

fn rdata_text(data: &RData) -> String {
    match data {
        // ASCII (not IDNA-decoded) names, as on the wire.
        RData::CNAME(name) => capped(&name.to_ascii()),
        RData::NS(name) => capped(&name.to_ascii()),
        RData::PTR(name) => capped(&name.to_ascii()),
        // RFC 3597 generic form for types hickory does not know.
        RData::Unknown { rdata, .. } => capped(&Rfc3597(&rdata.anything)),
        RData::Update0(_) => "\\# 0".to_owned(),
        other => capped(other),
    }
}

struct Rfc3597<'a>(&'a [u8]);

impl fmt::Display for Rfc3597<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\\# {} ", self.0.len())?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// Formats `value` with what a terminal acts on escaped (TXT and other record data
/// hold any bytes), stopping after [`MAX_DATA_CHARS`] characters (the last one
/// becomes "…").
fn capped(value: &dyn fmt::Display) -> String {
    let mut out = Capped::default();
    // An error means the cap was reached or the Display impl refused; keep what was written.
    let _ = write!(out, "{value}");
    if out.overflowed {
        out.text.pop();
        out.text.push('…');
    }
    out.text
}

#[derive(Default)]
struct Capped {
    text: String,
    chars: usize,
    overflowed: bool,
}

impl fmt::Write for Capped {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Borrowed, with no copy, unless `s` holds something to escape.
        for c in super::text::printable(s).chars() {
            if self.chars == MAX_DATA_CHARS {
                self.overflowed = true;
                return Err(fmt::Error);
            }
            self.text.push(c);
            self.chars += 1;
        }
        Ok(())
    }
}

fn edns_option(code: EdnsCode, option: &EdnsOption) -> String {
    let code = u16::from(code);
    match option {
        EdnsOption::Subnet(subnet) => {
            let mut text = format!("ECS {}/{}", subnet.addr(), subnet.source_prefix());
            if subnet.scope_prefix() != 0 {
                let _ = write!(text, "/{}", subnet.scope_prefix());
            }
            text
        }
        // Extended DNS Error: the info code says why a SERVFAIL happened.
        EdnsOption::Unknown(15, data) if data.len() >= 2 => {
            format!("EDE {}", u16::from_be_bytes([data[0], data[1]]))
        }
        _ => edns_code_name(code).map_or_else(|| format!("OPT{code}"), str::to_owned),
    }
}

/// IANA "DNS EDNS0 Option Codes (OPT)".
fn edns_code_name(code: u16) -> Option<&'static str> {
    Some(match code {
        1 => "LLQ",
        2 => "UL",
        3 => "NSID",
        5 => "DAU",
        6 => "DHU",
        7 => "N3U",
        8 => "ECS",
        9 => "EXPIRE",
        10 => "COOKIE",
        11 => "KEEPALIVE",
        12 => "PADDING",
        13 => "CHAIN",
        14 => "KEY-TAG",
        15 => "EDE",
        16 => "CLIENT-TAG",
        17 => "SERVER-TAG",
        18 => "REPORT-CHANNEL",
        19 => "ZONEVERSION",
        _ => return None,
    })
}

fn type_name(rtype: RecordType) -> Text {
    match rtype {
        RecordType::Unknown(code) => format!("TYPE{code}").into(),
        known => <&'static str>::from(known).into(),
    }
}

fn class_name(class: DNSClass) -> Text {
    match class {
        DNSClass::Unknown(_) | DNSClass::OPT(_) => format!("CLASS{}", u16::from(class)).into(),
        known => <&'static str>::from(known).into(),
    }
}

fn opcode_name(opcode: u8) -> Text {
    Text::from(match opcode {
        0 => "QUERY",
        1 => "IQUERY",
        2 => "STATUS",
        4 => "NOTIFY",
        5 => "UPDATE",
        6 => "DSO",
        _ => return format!("OPCODE{opcode}").into(),
    })
}

/// A DNS response code, the OPT extended bits included: one type and one name table
/// for the decoder, the correlator and every output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rcode(pub u16);

/// IANA "DNS RCODEs" by value; 16 is BADVERS because the extended bits only come from OPT
/// here (TSIG's BADSIG shares the value).
const RCODE_NAMES: [(u16, &str); 20] = [
    (0, "NOERROR"),
    (1, "FORMERR"),
    (2, "SERVFAIL"),
    (3, "NXDOMAIN"),
    (4, "NOTIMP"),
    (5, "REFUSED"),
    (6, "YXDOMAIN"),
    (7, "YXRRSET"),
    (8, "NXRRSET"),
    (9, "NOTAUTH"),
    (10, "NOTZONE"),
    (11, "DSOTYPENI"),
    (16, "BADVERS"),
    (17, "BADKEY"),
    (18, "BADTIME"),
    (19, "BADMODE"),
    (20, "BADNAME"),
    (21, "BADALG"),
    (22, "BADTRUNC"),
    (23, "BADCOOKIE"),
];

impl Rcode {
    pub const NOERROR: Self = Self(0);
    pub const FORMERR: Self = Self(1);
    pub const SERVFAIL: Self = Self(2);
    pub const NXDOMAIN: Self = Self(3);
    pub const NOTIMP: Self = Self(4);
    pub const REFUSED: Self = Self(5);
    pub const BADVERS: Self = Self(16);

    /// "NXDOMAIN", or "RCODE<n>" for a value without a name.
    pub fn name(self) -> std::borrow::Cow<'static, str> {
        match RCODE_NAMES.iter().find(|(c, _)| *c == self.0) {
            Some((_, n)) => std::borrow::Cow::Borrowed(n),
            None => std::borrow::Cow::Owned(format!("RCODE{}", self.0)),
        }
    }

    /// The inverse of [`Rcode::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        if let Some((c, _)) = RCODE_NAMES.iter().find(|(_, n)| *n == name) {
            return Some(Self(*c));
        }
        name.strip_prefix("RCODE")?.parse().ok().map(Self)
    }

    /// SERVFAIL, REFUSED, NOTIMP: the server could not or would not answer.
    pub fn is_server_error(self) -> bool {
        matches!(self, Self::SERVFAIL | Self::REFUSED | Self::NOTIMP)
    }

    /// What a server that does not understand EDNS0 answers to a query with OPT.
    pub fn is_edns_rejection(self) -> bool {
        matches!(self, Self::FORMERR | Self::BADVERS | Self::NOTIMP)
    }
}

impl std::fmt::Display for Rcode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

impl PartialEq<&str> for Rcode {
    fn eq(&self, other: &&str) -> bool {
        self.name() == *other
    }
}

impl serde::Serialize for Rcode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

/// Hand-written DNS messages, shared with the `decode` tests.
#[cfg(test)]
pub(crate) mod fixtures {
    /// Hex to bytes; whitespace is ignored.
    pub fn hex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        digits
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    const QUESTION: &str = "03 777777 07 6578616d706c65 04 74657374 00  0001 0001";

    /// `www.example.test. A IN`, RD AD, EDNS udp=1232 DO=0 with an 8-byte client COOKIE.
    pub fn query() -> Vec<u8> {
        hex(&format!(
            "1234 0120 0001 0000 0000 0001 {QUESTION}
             00 0029 04d0 00 00 0000 000c  000a 0008 0102030405060708"
        ))
    }

    /// NOERROR answer: `www.example.test. 300 IN A 192.0.2.1`.
    pub fn response_a() -> Vec<u8> {
        hex(&format!(
            "1234 8180 0001 0001 0000 0000 {QUESTION}
             c00c 0001 0001 0000012c 0004 c0000201"
        ))
    }

    /// NXDOMAIN with the zone's SOA in the authority section.
    pub fn nxdomain() -> Vec<u8> {
        hex(&format!(
            "1234 8183 0001 0000 0001 0000 {QUESTION}
             c010 0006 0001 00000e10 0026
             02 6e73 c010  0a 686f73746d6173746572 c010
             00000001 00000e10 00000258 00015180 0000012c"
        ))
    }

    /// TC=1: the answer did not fit, retry over TCP.
    pub fn truncated_response() -> Vec<u8> {
        hex(&format!("1234 8380 0001 0000 0000 0000 {QUESTION}"))
    }

    /// Deterministic pseudo-random bytes (xorshift64).
    pub fn junk(seed: u64, len: usize) -> Vec<u8> {
        let mut state = seed;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    fn malformed(bytes: &[u8]) -> (Option<Message>, String) {
        match parse(bytes) {
            Err((partial, DnsError::Malformed { reason })) => (partial, reason),
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    /// Messages the fast path takes decode exactly as the full parse does them.
    #[test]
    fn fast_path_matches_full_parse() {
        // `_Srv-1.Ex.` AAAA IN; www.example.test. A IN
        let odd = "06 5f5372762d31 02 4578 00 001c 0001";
        let www = "03 777777 07 6578616d706c65 04 74657374 00 0001 0001";
        let fast = [
            response_a(),
            truncated_response(),
            hex(&format!("abcd 0100 0001 0000 0000 0000 {www}")),
            // EDNS without options: udp 4096, DO=1, version 0.
            hex(&format!(
                "abcd 0100 0001 0000 0000 0001 {www} 00 0029 1000 00 00 8000 0000"
            )),
            // Two AAAA answers, one named by a pointer, one spelled out; EDNS with ext. rcode 1 (BADVERS).
            hex(&format!(
                "beef 8580 0001 0002 0000 0001 {odd}
                 c00c 001c 0001 00000000 0010 20010db8000000000000000000000001
                 06 5f5372762d31 02 4578 00 001c 0001 0000003c 0010 fe800000000000000000000000000001
                 00 0029 04d0 01 00 0000 0000"
            )),
            // NXDOMAIN without records.
            hex(&format!("0001 8183 0001 0000 0000 0000 {www}")),
        ];
        for bytes in fast {
            let header = Header::read(&bytes).unwrap();
            let message = fast_parse(&bytes, &header, true).expect("takes the fast path");
            assert_eq!(Ok(message.clone()), full_parse(&bytes, &header, true));
            // Without the answers: the same message less its answers, on the same path.
            let lean = fast_parse(&bytes, &header, false).expect("takes the fast path");
            let without = Message {
                answers: Vec::new(),
                ..message
            };
            assert_eq!(lean, without);
            assert_eq!(Ok(without), full_parse(&bytes, &header, false));
        }
        let full = [
            // EDNS option (COOKIE), authority record (SOA), CNAME answer, compressed question, trailing byte.
            query(),
            nxdomain(),
            hex(&format!(
                "1234 8180 0001 0001 0000 0000 {www} c00c 0005 0001 0000012c 0002 c00c"
            )),
            hex("1234 0100 0001 0000 0000 0000 c00c 0001 0001"),
            hex(&format!("abcd 0100 0001 0000 0000 0000 {www} 00")),
            // A label that starts with `-`, which hickory escapes (found by the dns fuzzer).
            hex("0f3f 0100 0001 0000 0000 0000 02 2d69 00 0010 0001"),
            // The same in an answer's name, which the fast path skips without its answers.
            hex(&format!(
                "1234 8180 0001 0001 0000 0000 {www} 02 2d69 00 0001 0001 0000012c 0004 c0000201"
            )),
            // An A record whose data is not 4 bytes.
            hex(&format!(
                "1234 8180 0001 0001 0000 0000 {www} c00c 0001 0001 0000012c 0003 c00002"
            )),
        ];
        for bytes in full {
            let header = Header::read(&bytes).unwrap();
            assert_eq!(fast_parse(&bytes, &header, true), None, "{bytes:02x?}");
            assert_eq!(fast_parse(&bytes, &header, false), None, "{bytes:02x?}");
        }
    }

    /// One spelling of a name whichever path reads it, so that a query and its reply meet.
    #[test]
    fn leading_dash_is_escaped_as_hickory_does() {
        let m = parse(&hex("0f3f 0100 0001 0000 0000 0000 02 2d69 00 0010 0001")).unwrap();
        assert_eq!(&*m.question.unwrap().name, "\\-i.");
    }

    #[test]
    fn query_with_edns_cookie() {
        let m = parse(&query()).unwrap();
        assert_eq!(m.id, 0x1234);
        assert!(!m.qr);
        assert_eq!(m.opcode, "QUERY");
        assert_eq!(m.rcode, "NOERROR");
        assert_eq!(m.flags.short(), "rd ad");
        assert_eq!((m.qdcount, m.ancount, m.nscount, m.arcount), (1, 0, 0, 1));
        let q = m.question.unwrap();
        assert_eq!(
            (&*q.name, q.qtype.as_str(), q.qclass.as_str()),
            ("www.example.test.", "A", "IN")
        );
        let edns = m.edns.unwrap();
        assert_eq!(
            edns,
            Edns {
                udp_size: 1232,
                dnssec_ok: false,
                version: 0,
                options: vec!["COOKIE".into()]
            }
        );
    }

    #[test]
    fn response_with_a_answer() {
        let m = parse(&response_a()).unwrap();
        assert!(m.qr);
        assert_eq!(m.flags.short(), "rd ra");
        assert_eq!(m.rcode, "NOERROR");
        assert_eq!(m.edns, None);
        assert_eq!(
            m.answers,
            vec![Answer {
                name: "www.example.test.".into(),
                rtype: "A".into(),
                ttl: 300,
                data: "192.0.2.1".into()
            }]
        );
    }

    #[test]
    fn nxdomain_keeps_question_and_skips_authority() {
        let m = parse(&nxdomain()).unwrap();
        assert_eq!(m.rcode, "NXDOMAIN");
        assert_eq!(m.nscount, 1);
        assert!(m.answers.is_empty());
        assert_eq!(&*m.question.unwrap().name, "www.example.test.");
    }

    #[test]
    fn truncated_flag() {
        let m = parse(&truncated_response()).unwrap();
        assert!(m.flags.tc);
        assert_eq!(m.flags.short(), "tc rd ra");
    }

    #[test]
    fn extended_rcode_and_options_from_opt() {
        // Header RCODE 7 + OPT extended RCODE 1 = 23 (BADCOOKIE); DO set; ECS, NSID, EDE and an
        // unassigned option code.
        let bytes = hex("beef 8187 0000 0000 0000 0001
             00 0029 1000 01 00 8000 001a
             0008 0007 0001 18 00 0a0000
             0003 0000
             000f 0002 0009
             fde9 0001 ff");
        let m = parse(&bytes).unwrap();
        assert_eq!(m.rcode, "BADCOOKIE");
        assert_eq!(m.question, None);
        let edns = m.edns.unwrap();
        assert!(edns.dnssec_ok);
        assert_eq!(edns.udp_size, 4096);
        assert_eq!(
            edns.options,
            ["ECS 10.0.0.0/24", "NSID", "EDE 9", "OPT65001"]
        );
    }

    #[test]
    fn unknown_types_and_classes_use_rfc3597_names() {
        // Question `x. TYPE65534 CLASS42`, answer `x. TYPE65534` with 3 bytes of rdata.
        let bytes = hex("0001 8000 0001 0001 0000 0000
             01 78 00 fffe 002a
             c00c fffe 0001 00000000 0003 abcdef");
        let m = parse(&bytes).unwrap();
        let q = m.question.clone().unwrap();
        assert_eq!(
            (q.qtype.as_str(), q.qclass.as_str()),
            ("TYPE65534", "CLASS42")
        );
        assert_eq!(q.key(), "x. TYPE65534 CLASS42");
        assert_eq!(m.answers[0].rtype, "TYPE65534");
        assert_eq!(m.answers[0].data, "\\# 3 abcdef");
    }

    #[test]
    fn question_key_lowercases_the_name_only() {
        let q = Question {
            name: "WwW.ExAmple.TEST.".into(),
            qtype: "AAAA".into(),
            qclass: "IN".into(),
        };
        assert_eq!(q.key(), "www.example.test. AAAA IN");
    }

    #[test]
    fn answers_are_capped() {
        // 20 A records, each `c00c`-compressed.
        let mut bytes = hex("0002 8180 0001 0014 0000 0000 01 78 00 0001 0001");
        for i in 0..20u8 {
            bytes.extend(hex("c00c 0001 0001 0000003c 0004 c0000200"));
            *bytes.last_mut().unwrap() = i;
        }
        let m = parse(&bytes).unwrap();
        assert_eq!(m.ancount, 20);
        assert_eq!(m.answers.len(), MAX_ANSWERS);
        assert_eq!(m.answers[15].data, "192.0.2.15");
    }

    #[test]
    fn long_rdata_is_capped_at_200_chars() {
        // One TXT record holding a 255-byte string of 'a'.
        let mut bytes =
            hex("0003 8180 0001 0001 0000 0000 01 78 00 0010 0001 c00c 0010 0001 00000000 0100 ff");
        bytes.extend([b'a'; 255]);
        let data = &parse(&bytes).unwrap().answers[0].data;
        assert_eq!(data.chars().count(), MAX_DATA_CHARS);
        assert!(data.ends_with("a…"));
    }

    #[test]
    fn short_header() {
        assert_eq!(
            parse(&query()[..7]),
            Err((None, DnsError::ShortHeader { len: 7 }))
        );
        assert_eq!(parse(&[]), Err((None, DnsError::ShortHeader { len: 0 })));
        assert_eq!(
            DnsError::ShortHeader { len: 7 }.to_string(),
            "only 7 bytes, a DNS header needs 12"
        );
    }

    #[test]
    fn compression_loop() {
        // The question name is a pointer to itself (offset 12).
        let (partial, reason) = malformed(&hex("0004 0100 0001 0000 0000 0000 c00c 0001 0001"));
        let partial = partial.unwrap();
        assert_eq!(
            (partial.id, partial.qdcount, partial.question),
            (4, 1, None)
        );
        assert!(!reason.is_empty());
    }

    #[test]
    fn two_pointers_pointing_at_each_other() {
        // The answer name at 29 points to 31, which points back to 29.
        let bytes = hex(
            "0005 8180 0001 0001 0000 0000 01 78 00 0001 0001  c01f c01d 0001 0001 00000000 0000",
        );
        let (partial, _) = malformed(&bytes);
        assert_eq!(&*partial.unwrap().question.unwrap().name, "x.");
    }

    #[test]
    fn pointer_past_end() {
        let (partial, _) = malformed(&hex("0006 0100 0001 0000 0000 0000 c3ff 0001 0001"));
        assert_eq!(partial.unwrap().question, None);
    }

    #[test]
    fn oversized_label() {
        // A length byte of 64 (0x40) is not a valid label type.
        let mut bytes = hex("0007 0100 0001 0000 0000 0000 40");
        bytes.extend([b'a'; 64]);
        bytes.extend(hex("00 0001 0001"));
        malformed(&bytes);
    }

    #[test]
    fn name_longer_than_255_bytes() {
        let mut bytes = hex("0008 0100 0001 0000 0000 0000");
        for _ in 0..5 {
            bytes.push(63);
            bytes.extend([b'a'; 63]);
        }
        bytes.extend(hex("00 0001 0001"));
        malformed(&bytes);
    }

    #[test]
    fn counts_larger_than_records_present() {
        let mut bytes = response_a();
        bytes[7] = 3; // ANCOUNT 3, one answer present
        let (partial, _) = malformed(&bytes);
        let partial = partial.unwrap();
        assert_eq!(partial.ancount, 3);
        assert!(partial.answers.is_empty());
        assert_eq!(partial.rcode, "NOERROR");
        assert!(partial.flags.ra);
        assert_eq!(partial.question.unwrap().key(), "www.example.test. A IN");
    }

    #[test]
    fn random_junk() {
        for seed in 1..=50 {
            let (partial, _) = malformed(&junk(0x9e37_79b9_7f4a_7c15 ^ seed, 200));
            assert!(partial.is_some());
        }
    }

    #[test]
    fn every_prefix_and_bit_flip_of_a_valid_message() {
        let valid = nxdomain();
        for end in 0..valid.len() {
            let _ = parse(&valid[..end]);
        }
        for bit in 0..valid.len() * 8 {
            let mut bytes = valid.clone();
            bytes[bit / 8] ^= 1 << (bit % 8);
            let _ = parse(&bytes);
        }
    }

    #[test]
    fn guarded_turns_a_panic_into_none() {
        assert_eq!(guarded(|| 1), Some(1));
        assert_eq!(guarded(|| -> u8 { panic!("hostile") }), None);
    }

    #[test]
    fn names() {
        assert_eq!(opcode_name(4), "NOTIFY");
        assert_eq!(opcode_name(9), "OPCODE9");
        assert_eq!(Rcode(16).name(), "BADVERS");
        assert_eq!(Rcode(3841).name(), "RCODE3841");
        for name in ["NOERROR", "SERVFAIL", "BADVERS", "RCODE3841"] {
            assert_eq!(
                Rcode::from_name(name).map(Rcode::name).as_deref(),
                Some(name)
            );
        }
        assert_eq!(Flags::default().short(), "");
        let all = Flags {
            aa: true,
            tc: true,
            rd: true,
            ra: true,
            ad: true,
            cd: true,
        };
        assert_eq!(all.short(), "aa tc rd ra ad cd");
    }

    #[test]
    fn serializes_do_for_dnssec_ok() {
        let edns = Edns {
            udp_size: 512,
            dnssec_ok: true,
            version: 0,
            options: vec![],
        };
        let json = serde_json::to_value(&edns).unwrap();
        assert_eq!(json["do"], true);
    }
}

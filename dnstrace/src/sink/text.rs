//! Aligned text, one line per packet.
use std::{fmt::Write as _, io::Write};

use super::Names;
use crate::decode::{Packet, Proto};

pub struct TextSink<W: Write> {
    out: W,
    header_done: bool,
}

/// Answers shown before "(+N more)".
const ANSWERS_SHOWN: usize = 2;

impl<W: Write> TextSink<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            header_done: false,
        }
    }

    pub fn packet(&mut self, p: &Packet, drop: Option<&str>, names: &Names) -> std::io::Result<()> {
        let line = format_line(p, drop, names);
        self.packet_line(line.as_bytes())
    }

    /// A packet line made earlier ([`format_line`]), after the column header the first time.
    pub fn packet_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        if !self.header_done {
            self.header_done = true;
            writeln!(
                self.out,
                "{:<15} {:<15} {:<10} {:<3} {:>23}   {:<23} {:<8} {:<11} QUESTION / RESULT",
                "TIME (UTC)", "IFACE", "DIR", "L4", "SOURCE", "DESTINATION", "ID", "FLAGS",
            )?;
        }
        self.out.write_all(line)
    }

    /// Writes ready-made text.
    pub fn raw(&mut self, text: &str) -> std::io::Result<()> {
        self.out.write_all(text.as_bytes())
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// One packet as a text line (with its newline).
pub fn format_line(p: &Packet, drop: Option<&str>, names: &Names) -> String {
    let m = &p.meta;
    let mut s = String::with_capacity(160);
    let iface = names.iface(m);
    let proto = match p.proto {
        Some(Proto::Udp) => "udp",
        Some(Proto::Tcp) => "tcp",
        None => "?",
    };
    let addr =
        |a: Option<std::net::SocketAddr>| a.map_or_else(|| "?".to_owned(), |a| a.to_string());
    let _ = write!(
        s,
        "{} {:<15} {:<10} {:<3} {:>23} → {:<23}",
        clock(names.epoch_ns(m.ts_ns)),
        iface,
        m.point.as_str(),
        proto,
        addr(p.src),
        addr(p.dst)
    );
    match &p.dns {
        Some(d) => {
            let kind = if d.qr { 'R' } else { 'Q' };
            let _ = write!(s, " {kind} {:04x} {:<11}", d.id, d.flags.short());
            if d.opcode != "QUERY" {
                let _ = write!(s, " {}", d.opcode);
            }
            match &d.question {
                Some(q) => {
                    let _ = write!(s, " {} {}", q.qtype, q.name);
                }
                None => s.push_str(" (no question)"),
            }
            if d.qr {
                let _ = write!(s, "  {}", d.rcode);
                for a in d.answers.iter().take(ANSWERS_SHOWN) {
                    let _ = write!(s, " {} {}", a.rtype, a.data);
                }
                if d.answers.len() > ANSWERS_SHOWN {
                    let _ = write!(s, " (+{} more)", d.answers.len() - ANSWERS_SHOWN);
                } else if d.answers.is_empty() && d.ancount > 0 {
                    let _ = write!(s, " ({} answers)", d.ancount);
                }
            }
            if let Some(e) = &d.edns {
                let _ = write!(s, "  edns udp={} do={}", e.udp_size, u8::from(e.dnssec_ok));
                if !e.options.is_empty() {
                    let _ = write!(s, " [{}]", e.options.join(","));
                }
            }
        }
        None => {
            if let Some(f) = p.tcp_flags {
                let _ = write!(s, " tcp [{}]", f.short());
            }
        }
    }
    if let Some(t) = &p.tunnel {
        let _ = write!(s, "  [{t}]");
    }
    if m.cap_len < m.wire_len {
        let _ = write!(s, "  (captured {}/{} bytes)", m.cap_len, m.wire_len);
    }
    if let Some(reason) = drop {
        let _ = write!(s, "  DROPPED by the kernel: {reason}");
    }
    if m.pid != 0 {
        let _ = write!(s, "  [pid {} {}]", m.pid, m.comm.as_deref().unwrap_or("?"));
    }
    if let (_, Some(pod)) = names.packet_origin(p) {
        let _ = write!(s, "  [pod {}]", pod.label());
    }
    if let Some(i) = &p.issue {
        let _ = write!(s, "  !! {}: {}", i.kind.as_str(), i.detail);
    }
    s.push('\n');
    s
}

/// HH:MM:SS.micro (UTC) of a Unix-epoch nanosecond timestamp.
pub(crate) fn clock(epoch_ns: u64) -> String {
    let secs = epoch_ns / 1_000_000_000;
    let micros = (epoch_ns % 1_000_000_000) / 1_000;
    let day = secs % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{micros:06}",
        day / 3600,
        day % 3600 / 60,
        day % 60
    )
}

/// HH:MM:SS.milli (UTC) of a Unix-epoch nanosecond timestamp: the start of a text lookup line.
pub(crate) fn clock_ms(epoch_ns: u64) -> String {
    let mut s = String::with_capacity(12);
    push_clock_ms(&mut s, epoch_ns);
    s
}

/// Appends [`clock_ms`]'s text, digit by digit (no formatter).
pub(crate) fn push_clock_ms(s: &mut String, epoch_ns: u64) {
    let secs = epoch_ns / 1_000_000_000;
    let millis = (epoch_ns % 1_000_000_000 / 1_000_000) as u32;
    let day = (secs % 86_400) as u32;
    let digit = |n: u32| char::from(b'0' + (n % 10) as u8);
    for (i, n) in [day / 3600, day % 3600 / 60, day % 60]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            s.push(':');
        }
        s.push(digit(n / 10));
        s.push(digit(n));
    }
    s.push('.');
    s.push(digit(millis / 100));
    s.push(digit(millis / 10));
    s.push(digit(millis));
}

#[cfg(test)]
mod tests {
    use super::{clock, clock_ms};

    #[test]
    fn clock_is_utc_time_of_day() {
        // 2026-11-23T19:20:05.123456789Z
        assert_eq!(clock(1_795_461_605_123_456_789), "19:20:05.123456");
        assert_eq!(clock(0), "00:00:00.000000");
        assert_eq!(clock_ms(1_795_461_605_123_456_789), "19:20:05.123");
        assert_eq!(clock_ms(86_399_999_999_999), "23:59:59.999");
        // The same text as the microsecond clock cut short, across a day's seconds.
        for ns in (0..86_400_000_000_000u64)
            .step_by(7_777_777_777)
            .chain([1_795_461_605_000_999_999, 1_795_461_605_999_000_000])
        {
            let micro = clock(ns);
            assert_eq!(clock_ms(ns), micro[..micro.len() - 3], "{ns}");
        }
    }
}

//! Text for people: IPv4 addresses written by hand (the hot path writes one per
//! answer record and two per lookup, and `Display` for addresses costs several
//! times as much: it formats through `fmt` and pads), and [`printable`], which
//! every string read from a packet or a file goes through before a terminal can
//! see it.
use std::{
    borrow::Cow,
    net::{Ipv4Addr, SocketAddr},
};

/// Characters a terminal acts on or that reorder or hide text: C0 and C1 controls
/// (ESC, CSI), DEL, and the Unicode bidi, zero-width and line-separator characters.
fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{180e}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{206f}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
        )
}

/// Appends `c`, written as `\x1b` or `\u{202e}` when [`hidden`].
fn push_printable(out: &mut String, c: char) {
    use std::fmt::Write as _;
    if !hidden(c) {
        out.push(c);
    } else if u32::from(c) < 0x100 {
        let _ = write!(out, "\\x{:02x}", u32::from(c));
    } else {
        let _ = write!(out, "\\u{{{:04x}}}", u32::from(c));
    }
}

/// `s` with every character a terminal would act on written as an escape (see
/// [`push_printable`]); borrowed when there is none, which is almost always.
pub fn printable(s: &str) -> Cow<'_, str> {
    if printable_ascii(s.as_bytes()) || !s.chars().any(hidden) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        push_printable(&mut out, c);
    }
    Cow::Owned(out)
}

/// Printable ASCII only (almost every name and comment), which hides nothing: checked
/// 32 bytes at a time without a branch per byte (the compiler makes it a vector compare),
/// rather than a character decode and a set of ranges per character.
fn printable_ascii(s: &[u8]) -> bool {
    s.chunks(32).all(|chunk| {
        chunk
            .iter()
            .fold(true, |ok, &b| ok & (b.wrapping_sub(0x20) < 0x5f))
    })
}

/// [`printable`], owned.
pub fn printable_string(s: String) -> String {
    match printable(&s) {
        Cow::Borrowed(_) => s,
        Cow::Owned(o) => o,
    }
}

/// Where ASCII text is appended: a `String`, or a JSON record's bytes.
pub trait AsciiOut {
    /// `b` is ASCII.
    fn push_ascii(&mut self, b: u8);
    fn push_ascii_str(&mut self, s: &str);
}

impl AsciiOut for String {
    fn push_ascii(&mut self, b: u8) {
        debug_assert!(b.is_ascii());
        self.push(char::from(b));
    }
    fn push_ascii_str(&mut self, s: &str) {
        self.push_str(s);
    }
}

impl AsciiOut for Vec<u8> {
    fn push_ascii(&mut self, b: u8) {
        debug_assert!(b.is_ascii());
        self.push(b);
    }
    fn push_ascii_str(&mut self, s: &str) {
        self.extend_from_slice(s.as_bytes());
    }
}

fn push_decimal(out: &mut impl AsciiOut, n: u32) {
    // Ports and octets: a few digits pushed one by one cost less than a copy call.
    if n < 100_000 {
        let mut started = false;
        for div in [10_000, 1000, 100, 10] {
            let d = n / div % 10;
            started |= d != 0;
            if started {
                out.push_ascii(b'0' + d as u8);
            }
        }
        out.push_ascii(b'0' + (n % 10) as u8);
        return;
    }
    out.push_ascii_str(itoa::Buffer::new().format(n));
}

fn push_ipv4(out: &mut impl AsciiOut, ip: Ipv4Addr) {
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push_ascii(b'.');
        }
        push_decimal(out, u32::from(octet));
    }
}

/// Appends an IPv4 socket address as `Display` writes it ("10.96.0.10:53").
pub fn push_socket_addr_v4(out: &mut impl AsciiOut, addr: &std::net::SocketAddrV4) {
    push_ipv4(out, *addr.ip());
    out.push_ascii(b':');
    push_decimal(out, u32::from(addr.port()));
}

/// Same text as `ip.to_string()`.
pub fn ipv4_string(ip: Ipv4Addr) -> String {
    let mut out = String::with_capacity(15);
    push_ipv4(&mut out, ip);
    out
}

/// Appends `addr.to_string()`, without the formatter for IPv4.
pub fn push_socket_addr(out: &mut String, addr: &SocketAddr) {
    match addr {
        SocketAddr::V4(v4) => push_socket_addr_v4(out, v4),
        SocketAddr::V6(_) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{addr}");
        }
    }
}

/// Writes an address as serde's own `Serialize` does (its `Display` text in a
/// human-readable format), IPv4 without the formatter: serde formats each address through
/// `Display`, which took more instructions than all the rest of a healthy lookup's JSON
/// record. A test holds the two to the same output.
pub fn serialize_socket_addr<S: serde::Serializer>(
    addr: &SocketAddr,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::Serialize as _;
    if !s.is_human_readable() || addr.is_ipv6() {
        return addr.serialize(s);
    }
    let mut text = String::with_capacity(21);
    push_socket_addr(&mut text, addr);
    s.serialize_str(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket_addr_string(addr: &SocketAddr) -> String {
        let mut out = String::new();
        push_socket_addr(&mut out, addr);
        out
    }

    #[test]
    fn push_decimal_matches_to_string() {
        let mut values: Vec<u32> = (0..=70_000).collect();
        values.extend([99_999, 100_000, 100_001, 4_294_967_295]);
        for n in values {
            let mut s = String::from("x");
            push_decimal(&mut s, n);
            assert_eq!(s, format!("x{n}"));
        }
        for addr in [
            "0.0.0.0:0",
            "10.244.0.10:44831",
            "255.255.255.255:65535",
            "[::1]:53",
        ] {
            let a: SocketAddr = addr.parse().unwrap();
            assert_eq!(socket_addr_string(&a), a.to_string());
        }
    }

    #[test]
    fn printable_escapes_what_a_terminal_acts_on() {
        // The byte pass's premise: no printable ASCII character is hidden, every other
        // ASCII one is.
        for b in 0u8..0x80 {
            assert_eq!(hidden(char::from(b)), !(0x20..0x7f).contains(&b), "{b:#x}");
        }
        for b in 0u8..=0xff {
            let mut long = vec![b'a'; 70];
            assert!(printable_ascii(&long));
            long[41] = b;
            assert_eq!(printable_ascii(&long), (0x20..0x7f).contains(&b), "{b:#x}");
        }
        let comment = "point=tc-ingress iface=dtbco2pod0 netns=4026532400 lookup=17 verdict=ok";
        assert!(matches!(printable(comment), Cow::Borrowed(c) if c == comment));
        assert!(matches!(printable("www.example.com."), Cow::Borrowed(_)));
        assert!(matches!(printable("ünïcode ok ✓"), Cow::Borrowed(_)));
        assert_eq!(printable("\x1b[2Jx"), "\\x1b[2Jx");
        assert_eq!(
            printable("a\u{9b}31mb\x7f\r\n\t"),
            "a\\x9b31mb\\x7f\\x0d\\x0a\\x09"
        );
        assert_eq!(
            printable("abc\u{202e}fed\u{2066}"),
            "abc\\u{202e}fed\\u{2066}"
        );
        assert_eq!(printable("zero\u{200b}width"), "zero\\u{200b}width");
        for s in ["\x1b]0;title\x07", "\u{202e}", "\u{feff}"] {
            assert!(!printable(s).chars().any(hidden), "{s:?}");
        }
    }

    #[test]
    fn an_address_serializes_as_serde_writes_it() {
        #[derive(serde::Serialize)]
        struct Ours(#[serde(serialize_with = "serialize_socket_addr")] SocketAddr);
        for text in [
            "0.0.0.0:0",
            "10.96.0.10:53",
            "255.255.255.255:65535",
            "1.20.199.100:1024",
            "[::1]:53",
            "[fe80::1%2]:5353",
            "[2001:db8::a:b:c:d]:65535",
        ] {
            let addr: SocketAddr = text.parse().unwrap();
            assert_eq!(
                serde_json::to_string(&Ours(addr)).unwrap(),
                serde_json::to_string(&addr).unwrap(),
                "{text}"
            );
        }
    }

    #[test]
    fn same_text_as_display() {
        for ip in [
            Ipv4Addr::new(0, 0, 0, 0),
            Ipv4Addr::new(10, 96, 0, 10),
            Ipv4Addr::new(255, 255, 255, 255),
            Ipv4Addr::new(1, 20, 199, 100),
        ] {
            assert_eq!(ipv4_string(ip), ip.to_string());
            for port in [0, 9, 53, 1024, 65535] {
                let addr = SocketAddr::from((ip, port));
                assert_eq!(socket_addr_string(&addr), addr.to_string());
            }
        }
        let v6: SocketAddr = "[fd00::1]:53".parse().unwrap();
        assert_eq!(socket_addr_string(&v6), "[fd00::1]:53");
    }
}

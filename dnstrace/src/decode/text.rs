//! Text forms of IPv4 addresses written by hand: the hot path writes one per
//! answer record and two per lookup, and `Display` for addresses costs
//! several times as much (it formats through `fmt` and pads).
use std::net::{Ipv4Addr, SocketAddr};

fn push_decimal(out: &mut String, n: u32) {
    out.push_str(itoa::Buffer::new().format(n));
}

fn push_ipv4(out: &mut String, ip: Ipv4Addr) {
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        push_decimal(out, u32::from(octet));
    }
}

/// Same text as `ip.to_string()`.
pub fn ipv4_string(ip: Ipv4Addr) -> String {
    let mut out = String::with_capacity(15);
    push_ipv4(&mut out, ip);
    out
}

/// Same text as `addr.to_string()`.
pub fn socket_addr_string(addr: &SocketAddr) -> String {
    match addr {
        SocketAddr::V4(v4) => {
            let mut out = String::with_capacity(21);
            push_ipv4(&mut out, *v4.ip());
            out.push(':');
            push_decimal(&mut out, u32::from(v4.port()));
            out
        }
        SocketAddr::V6(_) => addr.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

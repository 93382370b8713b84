//! The kernel ↔ userspace ABI of dnstrace.
//!
//! Only fixed-width integers and byte arrays, with padding written out and
//! sizes asserted at compile time. Userspace converts these `Raw*` types into
//! domain types in `dnstrace::capture` and nowhere else.
#![no_std]

/// Name of the BPF ring buffer map that carries [`RawEventHeader`] + packet bytes.
pub const MAP_EVENTS: &str = "EVENTS";
/// Name of the per-CPU array of [`Counter`] values.
pub const MAP_COUNTERS: &str = "COUNTERS";
/// Name of the per-CPU array of recently copied DNS payloads (kernel-private layout,
/// [`dedup::SLOTS`] entries).
pub const MAP_DEDUP: &str = "DEDUP";
/// Name of the read-only global holding [`RawConfig`].
pub const GLOBAL_CONFIG: &str = "CONFIG";

/// tc classifiers for devices with an Ethernet header, one per direction.
pub const PROG_TC_ETH_IN: &str = "dt_tc_eth_in";
pub const PROG_TC_ETH_OUT: &str = "dt_tc_eth_out";
/// tc classifiers for L2-less devices (tun, wireguard, ipip…): data starts at the IP header.
pub const PROG_TC_RAW_IN: &str = "dt_tc_raw_in";
pub const PROG_TC_RAW_OUT: &str = "dt_tc_raw_out";
/// cgroup_skb ingress: packets delivered to local sockets (any netns).
pub const PROG_SOCK_IN: &str = "dt_sock_in";
/// cgroup_skb egress: packets sent by local sockets (any netns).
pub const PROG_SOCK_OUT: &str = "dt_sock_out";
/// tp_btf on skb:kfree_skb: DNS packets the kernel dropped, with the reason.
pub const PROG_DROP: &str = "dt_drop";
/// The tracepoint `PROG_DROP` attaches to.
pub const DROP_TRACEPOINT: &str = "kfree_skb";

/// Largest number of packet bytes one event can carry.
pub const MAX_SNAPLEN: u32 = 2048;
/// Size classes for ring buffer reservations; an event uses the smallest one that fits.
pub const SNAP_CLASSES: [u32; 4] = [256, 512, 1024, MAX_SNAPLEN];
/// Most DNS ports the kernel filter matches on.
pub const MAX_PORTS: usize = 8;
/// IPv6 extension headers skipped before giving up on finding UDP/TCP.
pub const MAX_IPV6_EXT: usize = 6;

/// UDP destination ports of the overlay tunnels whose inner packets the programs look at.
pub mod tunnel {
    /// VXLAN's IANA port (RFC 7348).
    pub const VXLAN_PORT: u16 = 4789;
    /// The Linux kernel's first VXLAN port, still flannel's and Cilium's default.
    pub const VXLAN_LINUX_PORT: u16 = 8472;
    /// Geneve (RFC 8926).
    pub const GENEVE_PORT: u16 = 6081;
}

/// Sending a UDP DNS payload once: the same message seen again at another hop on the
/// same CPU, byte for byte, travels as a compact record (its own headers only).
pub mod dedup {
    /// [`RawEventHeader::dedup`]: a full record, nothing remembered.
    pub const NONE: u8 = 0;
    /// A full record whose payload the kernel kept as (`msg_slot`, `msg_seq`).
    pub const FULL: u8 = 1;
    /// The packet's bytes up to the end of its UDP header (`cap_len` = `payload_off`);
    /// its payload is that of the full record (`msg_slot`, `msg_seq`), byte for byte.
    pub const COMPACT: u8 = 2;
    /// Remembered payloads per CPU.
    pub const SLOTS: u32 = 64;
    /// Longest payload remembered; longer ones are always copied.
    pub const MAX_PAYLOAD: u32 = 512;
    /// Shortest payload remembered (a DNS header).
    pub const MIN_PAYLOAD: u32 = 12;
    /// A remembered payload is matched only this long after it was copied.
    pub const WINDOW_NS: u64 = 1_000_000_000;
    /// CPUs at or above this one copy every payload (`msg_slot` = cpu × SLOTS + slot is a u16).
    pub const MAX_CPUS: u32 = (u16::MAX as u32 + 1) / SLOTS;
}

/// Where an event was captured.
pub mod point {
    pub const TC_INGRESS: u8 = 0;
    pub const TC_EGRESS: u8 = 1;
    pub const SOCKET_IN: u8 = 2;
    pub const SOCKET_OUT: u8 = 3;
    /// skb:kfree_skb with a drop reason; data starts at the network header.
    pub const DROP: u8 = 4;
}

/// How to read the first byte of the captured data.
pub mod link {
    /// Ethernet header first.
    pub const ETHERNET: u8 = 0;
    /// IPv4 or IPv6 header first (L2-less device, or the socket hop).
    pub const RAW_IP: u8 = 1;
}

/// Index of each per-CPU counter in [`MAP_COUNTERS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Packets the programs ran on, DNS or not.
    Packets = 0,
    /// Packets that matched the DNS port filter.
    DnsSeen = 1,
    /// Events submitted to the ring buffer.
    Emitted = 2,
    /// Events lost because the ring buffer was full.
    RingFull = 3,
    /// Events whose copy was cut at the snaplen.
    Truncated = 4,
    /// Events lost because copying the packet bytes failed.
    CopyFailed = 5,
    /// DNS packets dropped by the kernel (skb:kfree_skb with a drop reason).
    Drops = 6,
    /// Events sent as compact records (a payload the same CPU had just copied).
    Compact = 7,
}

impl Counter {
    pub const ALL: [Counter; 8] = [
        Counter::Packets,
        Counter::DnsSeen,
        Counter::Emitted,
        Counter::RingFull,
        Counter::Truncated,
        Counter::CopyFailed,
        Counter::Drops,
        Counter::Compact,
    ];
    pub const COUNT: u32 = Self::ALL.len() as u32;
}

/// Loader-set configuration, read by every program.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawConfig {
    /// DNS ports in host byte order, each once; the slots after the last repeat it, so
    /// that a program finds the end of the list without a count (see [`Self::set_ports`]).
    pub ports: [u16; MAX_PORTS],
    /// Bytes to copy per packet, 1..=MAX_SNAPLEN.
    pub snaplen: u32,
    /// Where the drop program finds things in kernel structs (read from BTF).
    pub skb: RawSkbOffsets,
    /// Non-zero: send a UDP payload seen again as a compact record (see [`dedup`]).
    pub dedup: u32,
    pub _pad: [u32; 2],
}

/// Byte offsets of kernel struct fields, resolved from the running kernel's
/// BTF by userspace (Rust eBPF has no CO-RE relocations).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawSkbOffsets {
    /// Non-zero when the offsets below are valid and drops should be traced.
    pub enabled: u32,
    /// `enum skb_drop_reason` values up to this one are not drops (NOT_DROPPED_YET, CONSUMED).
    pub not_a_drop_max: u32,
    /// `struct sk_buff` fields.
    pub head: u32,
    pub network_header: u32,
    pub tail: u32,
    pub len: u32,
    pub dev: u32,
    /// `struct net_device` fields.
    pub dev_ifindex: u32,
    pub dev_nd_net: u32,
    /// `struct net` field.
    pub net_cookie: u32,
}

impl RawSkbOffsets {
    pub const DISABLED: Self = Self {
        enabled: 0,
        not_a_drop_max: 1,
        head: 0,
        network_header: 0,
        tail: 0,
        len: 0,
        dev: 0,
        dev_ifindex: 0,
        dev_nd_net: 0,
        net_cookie: 0,
    };
}

impl RawConfig {
    pub const fn empty() -> Self {
        Self {
            ports: [53; MAX_PORTS],
            snaplen: 512,
            skb: RawSkbOffsets::DISABLED,
            dedup: 1,
            _pad: [0; 2],
        }
    }

    /// Writes `ports` into the table as the programs read it: each port once, in the
    /// order given, the first [`MAX_PORTS`] distinct ones; every slot after the last holds
    /// the last again, so the first repeated port ends the list. Port 0, which no
    /// DNS traffic uses, is left out. Returns how many ports the table holds; with none,
    /// it is left as it was.
    pub fn set_ports(&mut self, ports: &[u16]) -> usize {
        let mut table = [0u16; MAX_PORTS];
        let mut n = 0;
        for &p in ports {
            if n == MAX_PORTS {
                break;
            }
            if p != 0 && !table[..n].contains(&p) {
                table[n] = p;
                n += 1;
            }
        }
        if n > 0 {
            let last = table[n - 1];
            table[n..].fill(last);
            self.ports = table;
        }
        n
    }
}

/// Fixed header in front of the copied packet bytes in every ring buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawEventHeader {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// `bpf_get_netns_cookie()` of the packet's netns; 0 when the hook cannot tell.
    pub netns_cookie: u64,
    /// Device the packet was seen on (tc) or arrived on (socket hop); 0 if unknown.
    pub ifindex: u32,
    /// Length of the packet as seen by the hook.
    pub wire_len: u32,
    /// Bytes of packet that follow this header.
    pub cap_len: u32,
    /// Thread group id of the sending task (socket egress only), else 0.
    pub pid: u32,
    /// One of [`point`].
    pub point: u8,
    /// One of [`link`].
    pub link: u8,
    /// One of [`dedup`].
    pub dedup: u8,
    pub _pad: u8,
    /// `enum skb_drop_reason` value for [`point::DROP`] events, else 0.
    pub drop_reason: u32,
    /// Command name of the sending task (socket egress only), NUL padded.
    pub comm: [u8; 16],
    /// [`dedup::FULL`] and [`dedup::COMPACT`]: names the full record in its slot: the low
    /// 32 bits of its `ts_ns` (1 for 0).
    pub msg_seq: u32,
    /// [`dedup::FULL`] and [`dedup::COMPACT`]: cpu × [`dedup::SLOTS`] + the slot it is kept in.
    pub msg_slot: u16,
    /// [`dedup::FULL`] and [`dedup::COMPACT`]: where the UDP payload starts in the packet.
    pub payload_off: u16,
}

pub const HEADER_LEN: usize = core::mem::size_of::<RawEventHeader>();

const _: () = assert!(HEADER_LEN == 64);
const _: () = assert!(core::mem::size_of::<RawConfig>() == 72);
const _: () = assert!(HEADER_LEN.is_multiple_of(8));
const _: () = assert!(dedup::SLOTS.is_power_of_two() && dedup::MAX_PAYLOAD.is_power_of_two());

/// One ring buffer record: header followed by `N` bytes of packet data (of which
/// `header.cap_len` are valid).
#[repr(C)]
pub struct RawEvent<const N: usize> {
    pub header: RawEventHeader,
    pub data: [u8; N],
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the table, read as the programs read it (`dns_port`), holds `port`.
    fn holds(c: &RawConfig, port: u16) -> bool {
        let mut last = c.ports[0];
        if last == port {
            return true;
        }
        for &p in &c.ports[1..] {
            if p == last {
                return false;
            }
            if p == port {
                return true;
            }
            last = p;
        }
        false
    }

    #[test]
    fn the_port_table_ends_at_its_first_repeat() {
        let mut c = RawConfig::empty();
        assert!(holds(&c, 53) && !holds(&c, 5353) && !holds(&c, 0));
        assert_eq!(c.set_ports(&[5353, 53, 5353, 0, 853]), 3);
        assert_eq!(c.ports, [5353, 53, 853, 853, 853, 853, 853, 853]);
        for p in [53, 853, 5353] {
            assert!(holds(&c, p), "{p}");
        }
        for p in [0, 1, 54, 9] {
            assert!(!holds(&c, p), "{p}");
        }
        // Every port from 1 to 9 fits but one: the table keeps the first eight.
        assert_eq!(c.set_ports(&[1, 2, 3, 4, 5, 6, 7, 8, 9]), MAX_PORTS);
        assert!((1..=8).all(|p| holds(&c, p)) && !holds(&c, 9));
        // Nothing to hold: the table is left as it was.
        assert_eq!(c.set_ports(&[0]), 0);
        assert!((1..=8).all(|p| holds(&c, p)));
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, repr(C), padding written out.
    unsafe impl aya::Pod for super::RawConfig {}
}

//! The kernel programs (compiled for bpfel-unknown-none only).
//!
//! Every program parses at most the L2/L3/L4 headers with direct packet access,
//! and for DNS-port traffic copies a prefix of the packet into the ring buffer.
//! Every path hands the packet on unchanged: tc programs return
//! `TC_ACT_UNSPEC` (tcx: next), cgroup programs return 1 (allow).
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{
    Global,
    bindings::{__sk_buff, TC_ACT_UNSPEC},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_netns_cookie,
        bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_skb_load_bytes,
        generated::bpf_probe_read_kernel as probe_read_raw,
    },
    macros::{btf_tracepoint, cgroup_skb, classifier, map},
    maps::{PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, SkBuffContext, TcContext},
};
use dnstrace_common::{
    Counter, MAX_IPV6_EXT, MAX_PORTS, MAX_SNAPLEN, RawConfig, RawEvent, RawEventHeader, dedup,
    link, point,
    tunnel::{GENEVE_PORT, VXLAN_LINUX_PORT, VXLAN_PORT},
};

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// A payload this CPU copied into the ring lately.
#[repr(C)]
pub struct Slot {
    /// The name of the record that carried the payload; 0 while the slot is being
    /// written (or never was).
    seq: u32,
    len: u32,
    ts_ns: u64,
    data: [u64; dedup::MAX_PAYLOAD as usize / 8],
}

#[map(name = "DEDUP")]
static DEDUP: PerCpuArray<Slot> = PerCpuArray::with_max_entries(dedup::SLOTS, 0);

#[unsafe(no_mangle)]
static CONFIG: Global<RawConfig> = Global::new(RawConfig::empty());

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// Geneve's protocol type for an inner Ethernet frame.
const ETH_P_TEB: u16 = 0x6558;
/// VXLAN flags: the VNI is valid.
const VXLAN_I: u8 = 0x08;
/// The event header in 8-byte words.
const HEADER_WORDS: usize = core::mem::size_of::<RawEventHeader>() / 8;
// bpf_ringbuf_submit flags and bpf_ringbuf_query selectors.
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_RING_SIZE: u64 = 1;

#[classifier]
pub fn dt_tc_eth_in(ctx: TcContext) -> i32 {
    let _ = on_packet(ctx.skb.skb, true, point::TC_INGRESS);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn dt_tc_eth_out(ctx: TcContext) -> i32 {
    let _ = on_packet(ctx.skb.skb, true, point::TC_EGRESS);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn dt_tc_raw_in(ctx: TcContext) -> i32 {
    let _ = on_packet(ctx.skb.skb, false, point::TC_INGRESS);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn dt_tc_raw_out(ctx: TcContext) -> i32 {
    let _ = on_packet(ctx.skb.skb, false, point::TC_EGRESS);
    TC_ACT_UNSPEC
}

/// Returns at once. dnstrace never attaches it: `dnstrace bench-noop` does, as
/// the baseline that `cargo xtask bench` measures per-packet cost against.
#[classifier]
pub fn dt_tc_noop(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[cgroup_skb]
pub fn dt_sock_in(ctx: SkBuffContext) -> i32 {
    let _ = on_packet(ctx.skb.skb, false, point::SOCKET_IN);
    1
}

#[cgroup_skb]
pub fn dt_sock_out(ctx: SkBuffContext) -> i32 {
    let _ = on_packet(ctx.skb.skb, false, point::SOCKET_OUT);
    1
}

/// skb:kfree_skb(skb, location, reason, …): observes drops, never causes one.
#[btf_tracepoint(function = "kfree_skb")]
pub fn dt_drop(ctx: BtfTracePointContext) -> i32 {
    let _ = on_drop(&ctx);
    0
}

#[inline(always)]
fn count(c: Counter) {
    if let Some(v) = COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *v += 1 };
    }
}

/// `L` bytes at `off`, bounds-checked for direct packet access.
///
/// The offset goes through a volatile read so that LLVM cannot merge this
/// check with a neighbouring one on a differently derived pointer, which the
/// verifier would reject; the check and the reads then use the same pointer.
#[inline(always)]
fn bytes<const L: usize>(data: usize, end: usize, off: usize) -> Option<[u8; L]> {
    // SAFETY: reading a local.
    let off = unsafe { core::ptr::read_volatile(&off) };
    let p = data + off;
    if p + L > end {
        return None;
    }
    // SAFETY: p..p+L lies inside the packet, checked just above.
    Some(unsafe { *(p as *const [u8; L]) })
}

#[inline(always)]
fn byte(data: usize, end: usize, off: usize) -> Option<u8> {
    bytes::<1>(data, end, off).map(|[b]| b)
}

#[inline(always)]
fn be16(data: usize, end: usize, off: usize) -> Option<u16> {
    bytes::<2>(data, end, off).map(u16::from_be_bytes)
}

#[inline(always)]
fn on_packet(skb: *mut __sk_buff, ethernet: bool, at: u8) -> Option<()> {
    count(Counter::Packets);
    // SAFETY: the context pointer is valid for the program's lifetime.
    let (data, end) = unsafe { ((*skb).data as usize, (*skb).data_end as usize) };
    let fast = if ethernet {
        ipv4_fast::<14, 38>(data, end)
    } else {
        ipv4_fast::<0, 24>(data, end)
    };
    // The UDP payload's offset in IPv4 UDP without options (found by the fast path) or
    // plain IPv6 UDP (looked for below); only these go through the payload cache.
    let (sport, dport, mut udp_payload) = match fast {
        Fast::Ports(sport, dport, udp) => {
            (sport, dport, udp.then_some(if ethernet { 42 } else { 28 }))
        }
        Fast::Skip => return None,
        Fast::Slow => {
            let (sport, dport) = ports(data, end, ethernet)?;
            (sport, dport, None)
        }
    };
    if !dns_port(sport, dport) {
        // Pod-to-pod DNS across nodes rides inside an overlay tunnel: only a datagram to
        // a tunnel port costs more than these three compares.
        if !tunnel_port(dport) {
            return None;
        }
        let (sport, dport) = tunneled_ports(data, end, ethernet, dport)?;
        if !dns_port(sport, dport) {
            return None;
        }
        // A tunnelled message is always copied in full.
        udp_payload = None;
    } else if udp_payload.is_none() {
        // Looked for only once the ports said DNS, and without a flag carried from the
        // fast path (which made LLVM spill one on it): non-DNS packets pay nothing for it,
        // IPv4 TCP DNS a bounds check and a compare.
        udp_payload = if ethernet {
            ipv6_udp::<14, 21>(data, end)
        } else {
            ipv6_udp::<0, 7>(data, end)
        };
    }
    count(Counter::DnsSeen);

    // SAFETY: the context pointer is valid for the program's lifetime.
    let wire_len = unsafe { (*skb).len };
    let cap = wire_len.min(snaplen());
    if cap < wire_len {
        count(Counter::Truncated);
    }
    let mut header = RawEventHeader {
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        netns_cookie: 0,
        // SAFETY: the context pointer is valid for the program's lifetime.
        ifindex: unsafe { (*skb).ifindex },
        wire_len,
        cap_len: 0,
        pid: 0,
        point: at,
        link: if ethernet {
            link::ETHERNET
        } else {
            link::RAW_IP
        },
        dedup: dedup::NONE,
        _pad: 0,
        drop_reason: 0,
        comm: [0; 16],
        msg_seq: 0,
        msg_slot: 0,
        payload_off: 0,
    };
    let socket = (at == point::SOCKET_IN || at == point::SOCKET_OUT).then_some(skb);
    // SAFETY (closure): `emit` passes a destination with room for `len` bytes.
    let copy = |dst: *mut core::ffi::c_void, len: u32| unsafe {
        bpf_skb_load_bytes(skb.cast(), 0, dst, len)
    };
    let cached = match udp_payload {
        Some(off) if cap == wire_len => cached(data, end, off, wire_len, header.ts_ns),
        _ => None,
    };
    match cached {
        None => emit_sized(header, cap, socket, copy, || {}),
        Some(Cached::Again { key, seq, off }) => {
            header.dedup = dedup::COMPACT;
            header.msg_slot = key;
            header.msg_seq = seq;
            header.payload_off = off as u16;
            // off <= 62 (see `cached`): the headers fit the smallest record.
            emit::<64>(header, off as u32, socket, copy, || {})?;
            count(Counter::Compact);
            Some(())
        }
        Some(Cached::New {
            slot,
            key,
            seq,
            off,
            len,
        }) => {
            header.dedup = dedup::FULL;
            header.msg_slot = key;
            header.msg_seq = seq;
            header.payload_off = off as u16;
            let ts = header.ts_ns;
            // Kept only once its full record is in the ring: a compact record always
            // comes after the record that carries its payload.
            emit_sized(header, cap, socket, copy, || {
                remember(skb, slot, seq, off, len, ts)
            })
        }
    }
}

/// What the payload cache made of a UDP DNS packet copied whole.
enum Cached {
    /// This CPU copied the same payload, byte for byte, within [`dedup::WINDOW_NS`]:
    /// send only the headers and name it.
    Again { key: u16, seq: u32, off: usize },
    /// Copy it in full, and keep it in `slot` as `seq`.
    New {
        slot: *mut Slot,
        key: u16,
        seq: u32,
        off: usize,
        len: u32,
    },
}

/// Looks up the UDP payload at `off` (the rest of the packet) in this CPU's cache.
/// None when it is not to be kept: cut, not all in the linear data, too short or long.
///
/// `off` is 42 or 28 (IPv4 without options, Ethernet or not) or 62 or 48 (IPv6 without
/// extension headers): a compact record copies `off` bytes into a 64-byte record. IPv4
/// options, IPv6 extension headers, VLAN tags, tunnels and TCP are always copied in full.
#[inline(always)]
fn cached(data: usize, end: usize, off: usize, wire_len: u32, ts: u64) -> Option<Cached> {
    // SAFETY: `config()` points at the global, valid for the program's lifetime.
    if unsafe { read_volatile(addr_of!((*config()).dedup)) } == 0 {
        return None;
    }
    if end.wrapping_sub(data) != wire_len as usize {
        return None;
    }
    let len = wire_len.checked_sub(off as u32)?;
    if !(dedup::MIN_PAYLOAD..=dedup::MAX_PAYLOAD).contains(&len) {
        return None;
    }
    // SAFETY: helper without preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    if cpu >= dedup::MAX_CPUS {
        return None;
    }
    // The DNS ID and the length pick the slot; only the bytes decide a match.
    let id = u32::from(be16(data, end, off)?);
    let index =
        (id ^ (len << 16)).wrapping_mul(0x9e37_79b1) >> (32 - dedup::SLOTS.trailing_zeros());
    let slot = DEDUP.get_ptr_mut(index)?;
    let key = (cpu * dedup::SLOTS + index) as u16;
    // SAFETY: a per-CPU map value, valid for the program's lifetime. A program that
    // interrupts this one on this CPU may rewrite it: `remember` zeroes `seq` first and
    // sets it last, so a match needs the same non-zero `seq` before and after.
    unsafe {
        let seq = read_volatile(addr_of!((*slot).seq));
        if seq != 0
            && read_volatile(addr_of!((*slot).len)) == len
            && ts.wrapping_sub(read_volatile(addr_of!((*slot).ts_ns))) <= dedup::WINDOW_NS
            && same_payload(data, end, off, len, slot)
            && read_volatile(addr_of!((*slot).seq)) == seq
        {
            return Some(Cached::Again { key, seq, off });
        }
    }
    // The record's own time names it: two records of one slot and CPU a whole number of
    // 2³² ns apart are told apart by their order in the ring (userspace keeps the last),
    // and an exact tie by userspace too (it then holds neither).
    let seq = (ts as u32).max(1);
    Some(Cached::New {
        slot,
        key,
        seq,
        off,
        len,
    })
}

/// The packet's `len` bytes at `off` equal the slot's, compared 8 bytes at a time.
///
/// # Safety
/// `slot` points at a map value; 8 <= len <= [`dedup::MAX_PAYLOAD`].
#[inline(always)]
unsafe fn same_payload(data: usize, end: usize, off: usize, len: u32, slot: *const Slot) -> bool {
    let len = len as usize;
    let words = len / 8;
    for i in 0..dedup::MAX_PAYLOAD as usize / 8 {
        if i >= words {
            break;
        }
        let Some(a) = word(data, end, off + i * 8) else {
            return false;
        };
        // SAFETY: i < the slot's words.
        if a != unsafe { read_volatile(addr_of!((*slot).data[i])) } {
            return false;
        }
    }
    if len % 8 != 0 {
        // The last 8 bytes, overlapping the last whole word.
        // SAFETY: reading a local.
        let at = unsafe { read_volatile(&len) }.wrapping_sub(8) & (dedup::MAX_PAYLOAD as usize - 1);
        if at > dedup::MAX_PAYLOAD as usize - 8 {
            return false;
        }
        let Some(a) = word(data, end, off + at) else {
            return false;
        };
        // SAFETY: at + 8 <= the slot's bytes, checked above.
        let b = unsafe {
            addr_of!((*slot).data)
                .cast::<u8>()
                .add(at)
                .cast::<u64>()
                .read_unaligned()
        };
        if a != b {
            return false;
        }
    }
    true
}

/// 8 packet bytes at `off` as one load, bounds-checked like [`bytes`].
#[inline(always)]
fn word(data: usize, end: usize, off: usize) -> Option<u64> {
    // SAFETY: reading a local.
    let off = unsafe { core::ptr::read_volatile(&off) };
    let p = data + off;
    if p + 8 > end {
        return None;
    }
    // SAFETY: p..p+8 lies inside the packet, checked just above. The verifier allows
    // a misaligned packet load, and the JIT emits one plain load for it.
    Some(unsafe { read_volatile(p as *const u64) })
}

/// Keeps the payload just copied into the ring (`len` bytes at `off`) in `slot` as `seq`.
#[inline(always)]
fn remember(skb: *mut __sk_buff, slot: *mut Slot, seq: u32, off: usize, len: u32, ts: u64) {
    // 1..=MAX_PAYLOAD, in a form the verifier can see.
    let n = (len.wrapping_sub(1) & (dedup::MAX_PAYLOAD - 1)) + 1;
    // SAFETY: `slot` is a per-CPU map value with room for MAX_PAYLOAD bytes; see `cached`
    // for why `seq` is zeroed first and set last.
    unsafe {
        write_volatile(addr_of_mut!((*slot).seq), 0);
        write_volatile(addr_of_mut!((*slot).len), len);
        write_volatile(addr_of_mut!((*slot).ts_ns), ts);
        let dst = addr_of_mut!((*slot).data).cast();
        if bpf_skb_load_bytes(skb.cast(), off as u32, dst, n) == 0 {
            write_volatile(addr_of_mut!((*slot).seq), seq);
        }
    }
}

/// What the fast path made of a packet.
enum Fast {
    /// IPv4 UDP or TCP (first fragment): its ports, and whether it is UDP.
    Ports(u16, u16, bool),
    /// IPv4 that cannot be DNS (another protocol, or a later fragment).
    Skip,
    /// Anything else (IPv6, VLAN tags, IPv4 options, short packets): parse fully.
    Slow,
}

/// The UDP payload's offset (`L2` + 48) in a plain IPv6 UDP packet after `L2` bytes of
/// Ethernet header (or none), read with a single bounds check (`N` = L2 + 7); None for
/// anything else: IPv4, a VLAN tag, an extension header (a fragment included), TCP. Runs
/// only on DNS-port packets; when it says yes, [`ports`] read this UDP header's ports.
#[inline(always)]
fn ipv6_udp<const L2: usize, const N: usize>(data: usize, end: usize) -> Option<usize> {
    if data + N > end {
        return None;
    }
    // SAFETY: data..data+N lies inside the packet, checked just above.
    let h = unsafe { &*(data as *const [u8; N]) };
    if (L2 != 0 && (h[L2 - 2] != 0x86 || h[L2 - 1] != 0xdd))
        || h[L2] >> 4 != 6
        || h[L2 + 6] != IPPROTO_UDP
    {
        return None;
    }
    Some(L2 + 48)
}

/// The common case, IPv4 without options after `L2` bytes of Ethernet
/// header (or none), read with a single bounds check. `N` = L2 + 24.
///
/// Every packet on a traced interface comes this way, so it reads words, not bytes:
/// the ethertype with the version and header length, the fragment field, each port.
#[inline(always)]
fn ipv4_fast<const L2: usize, const N: usize>(data: usize, end: usize) -> Fast {
    if data + N > end {
        return Fast::Slow;
    }
    // SAFETY (every `at` below): data..data+N lies inside the packet, checked just
    // above, and each read ends by L2 + 24 = N.
    let plain = if L2 != 0 {
        // 08 00 45 (ethertype IPv4, version 4, 20-byte header), the TOS byte masked off.
        (unsafe { at::<u32>(data, L2 - 2) } & 0x00ff_ffff) == 0x0045_0008
    } else {
        (unsafe { at::<u8>(data, 0) }) == 0x45
    };
    if !plain {
        return Fast::Slow;
    }
    // Only the first fragment carries the L4 header: the 13-bit offset, read as the
    // little-endian word of its two bytes, is zero.
    if (unsafe { at::<u16>(data, L2 + 6) } & 0xff1f) != 0 {
        return Fast::Skip;
    }
    let proto = unsafe { at::<u8>(data, L2 + 9) };
    if proto != IPPROTO_UDP && proto != IPPROTO_TCP {
        return Fast::Skip;
    }
    Fast::Ports(
        u16::from_be(unsafe { at::<u16>(data, L2 + 20) }),
        u16::from_be(unsafe { at::<u16>(data, L2 + 22) }),
        proto == IPPROTO_UDP,
    )
}

// `ipv4_fast` reads header fields as little-endian words (bpfel, the one target built).
const _: () = assert!(cfg!(target_endian = "little"));

/// The `T` at `data + off` as one load, as the packet's bytes lie (no byte order applied).
///
/// # Safety
/// `data + off .. data + off + size_of::<T>()` lies inside the packet, checked against
/// its end on the same `data`. The verifier allows a misaligned packet load, and the JIT
/// emits one plain load for it (see [`word`]).
#[inline(always)]
unsafe fn at<T: Copy>(data: usize, off: usize) -> T {
    // SAFETY: as the caller promises.
    unsafe { read_volatile((data + off) as *const T) }
}

/// Source and destination port of any UDP or TCP packet dnstrace parses
/// (VLAN tags, IPv4 options, IPv6 extension headers), or None.
#[inline(always)]
fn ports(data: usize, end: usize, ethernet: bool) -> Option<(u16, u16)> {
    let (proto, l4) = transport(data, end, ethernet)?;
    l4_ports(data, end, proto, l4)
}

/// The IP protocol and L4 offset of a packet starting with Ethernet or with IP.
#[inline(always)]
fn transport(data: usize, end: usize, ethernet: bool) -> Option<(u8, usize)> {
    let (ethertype, off) = if ethernet {
        l3(data, end, 0)?
    } else {
        match byte(data, end, 0)? >> 4 {
            4 => (ETH_P_IP, 0usize),
            6 => (ETH_P_IPV6, 0usize),
            _ => return None,
        }
    };
    ip_transport(data, end, ethertype, off)
}

/// The ethertype and L3 offset of the Ethernet frame at `eth` (one VLAN tag skipped).
#[inline(always)]
fn l3(data: usize, end: usize, eth: usize) -> Option<(u16, usize)> {
    let outer = be16(data, end, eth + 12)?;
    if outer == ETH_P_8021Q || outer == ETH_P_8021AD {
        Some((be16(data, end, eth + 16)?, eth + 18))
    } else {
        Some((outer, eth + 14))
    }
}

/// The IP protocol and L4 offset of the IP header at `off` (first fragments only).
#[inline(always)]
fn ip_transport(data: usize, end: usize, ethertype: u16, off: usize) -> Option<(u8, usize)> {
    if ethertype == ETH_P_IP {
        let vihl = byte(data, end, off)?;
        let ihl = ((vihl & 0x0f) as usize) * 4;
        if ihl < 20 {
            return None;
        }
        // Only the first fragment carries the L4 header.
        if be16(data, end, off + 6)? & 0x1fff != 0 {
            return None;
        }
        Some((byte(data, end, off + 9)?, off + ihl))
    } else if ethertype == ETH_P_IPV6 {
        let mut next = byte(data, end, off + 6)?;
        let mut l4 = off + 40;
        for _ in 0..MAX_IPV6_EXT {
            match next {
                // hop-by-hop, routing, destination options
                0 | 43 | 60 => {
                    let [nh, len] = bytes::<2>(data, end, l4)?;
                    next = nh;
                    l4 += (len as usize + 1) * 8;
                }
                // authentication header
                51 => {
                    let [nh, len] = bytes::<2>(data, end, l4)?;
                    next = nh;
                    l4 += (len as usize + 2) * 4;
                }
                // fragment
                44 => {
                    let [nh, _, off_hi, off_lo] = bytes::<4>(data, end, l4)?;
                    if u16::from_be_bytes([off_hi, off_lo]) & 0xfff8 != 0 {
                        return None;
                    }
                    next = nh;
                    l4 += 8;
                }
                _ => break,
            }
        }
        Some((next, l4))
    } else {
        None
    }
}

#[inline(always)]
fn l4_ports(data: usize, end: usize, proto: u8, l4: usize) -> Option<(u16, u16)> {
    if proto != IPPROTO_UDP && proto != IPPROTO_TCP {
        return None;
    }
    let [s0, s1, d0, d1] = bytes::<4>(data, end, l4)?;
    Some((u16::from_be_bytes([s0, s1]), u16::from_be_bytes([d0, d1])))
}

/// The ports of the UDP or TCP packet inside a VXLAN or Geneve datagram sent to `dport`
/// (an Ethernet frame after the tunnel header and, for Geneve, its options), or None.
#[inline(always)]
fn tunneled_ports(data: usize, end: usize, ethernet: bool, dport: u16) -> Option<(u16, u16)> {
    let (proto, udp) = transport(data, end, ethernet)?;
    if proto != IPPROTO_UDP {
        return None;
    }
    let tunnel = udp + 8;
    let [flags, _, p0, p1] = bytes::<4>(data, end, tunnel)?;
    let frame = if dport == GENEVE_PORT {
        // Version 0, an Ethernet frame inside, options in 4-byte words.
        if flags >> 6 != 0 || u16::from_be_bytes([p0, p1]) != ETH_P_TEB {
            return None;
        }
        tunnel + 8 + ((flags & 0x3f) as usize) * 4
    } else {
        if flags & VXLAN_I == 0 {
            return None;
        }
        tunnel + 8
    };
    let (ethertype, off) = l3(data, end, frame)?;
    let (proto, l4) = ip_transport(data, end, ethertype, off)?;
    l4_ports(data, end, proto, l4)
}

/// Reads a `T` at `base + off` in kernel memory.
#[inline(always)]
fn kread<T>(base: u64, off: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel copes with any address.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }.ok()
}

#[inline(always)]
fn on_drop(ctx: &BtfTracePointContext) -> Option<()> {
    let cfg = config();
    // SAFETY: `cfg` points at the global, valid for the program's lifetime.
    let (enabled, not_a_drop_max) = unsafe {
        (
            read_volatile(addr_of!((*cfg).skb.enabled)),
            read_volatile(addr_of!((*cfg).skb.not_a_drop_max)),
        )
    };
    if enabled == 0 {
        return None;
    }
    let skb: u64 = ctx.arg(0);
    let reason = ctx.arg::<u64>(2) as u32;
    if reason <= not_a_drop_max {
        return None;
    }
    // SAFETY: as above.
    let o = unsafe { read_volatile(addr_of!((*cfg).skb)) };
    count(Counter::Packets);
    let head: u64 = kread(skb, o.head)?;
    let nh: u16 = kread(skb, o.network_header)?;
    let tail: u32 = kread(skb, o.tail)?;
    if nh == 0xffff || head == 0 {
        return None;
    }
    let l3 = head + nh as u64;
    let hdr: [u8; 64] = kread(l3, 0)?;
    let (proto, l4) = match hdr[0] >> 4 {
        4 => (hdr[9], ((hdr[0] & 0x0f) as usize) * 4),
        6 => (hdr[6], 40usize),
        _ => return None,
    };
    if (proto != IPPROTO_UDP && proto != IPPROTO_TCP) || !(20..=60).contains(&l4) {
        return None;
    }
    let sport = u16::from_be_bytes([hdr[l4 & 63], hdr[(l4 + 1) & 63]]);
    let dport = u16::from_be_bytes([hdr[(l4 + 2) & 63], hdr[(l4 + 3) & 63]]);
    if !dns_port(sport, dport) {
        // A dropped overlay datagram (a firewall on the tunnel port) with DNS inside.
        if proto != IPPROTO_UDP || !tunnel_port(dport) {
            return None;
        }
        let (sport, dport) = dropped_tunneled_ports(l3 + l4 as u64, dport)?;
        if !dns_port(sport, dport) {
            return None;
        }
    }
    count(Counter::DnsSeen);
    count(Counter::Drops);
    let linear = tail.saturating_sub(nh as u32);
    let wire_len: u32 = kread(skb, o.len).unwrap_or(linear);
    let cap = linear.min(snaplen());
    if cap < wire_len {
        count(Counter::Truncated);
    }
    let dev: u64 = kread(skb, o.dev).unwrap_or(0);
    let (ifindex, netns_cookie) = if dev == 0 {
        (0, 0)
    } else {
        let ifindex: u32 = kread(dev, o.dev_ifindex).unwrap_or(0);
        let net: u64 = kread(dev, o.dev_nd_net).unwrap_or(0);
        let cookie: u64 = if net == 0 {
            0
        } else {
            kread(net, o.net_cookie).unwrap_or(0)
        };
        (ifindex, cookie)
    };
    let header = RawEventHeader {
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        netns_cookie,
        ifindex,
        wire_len,
        cap_len: 0,
        pid: 0,
        point: point::DROP,
        link: link::RAW_IP,
        dedup: dedup::NONE,
        _pad: 0,
        drop_reason: reason,
        comm: [0; 16],
        msg_seq: 0,
        msg_slot: 0,
        payload_off: 0,
    };
    // SAFETY (closure): `emit` passes a destination with room for `len` bytes.
    emit_sized(
        header,
        cap,
        None,
        |dst, len| unsafe { probe_read_raw(dst, len, l3 as *const _) },
        || {},
    )
}

#[inline(always)]
fn tunnel_port(dport: u16) -> bool {
    dport == VXLAN_PORT || dport == VXLAN_LINUX_PORT || dport == GENEVE_PORT
}

/// [`tunneled_ports`] for the drop program, which reads kernel memory: the UDP header at
/// `udp`, then the tunnel header and the frame inside (no VLAN tag, no IPv6 extension).
#[inline(always)]
fn dropped_tunneled_ports(udp: u64, dport: u16) -> Option<(u16, u16)> {
    let [flags, _, p0, p1]: [u8; 4] = kread(udp, 8)?;
    let frame = if dport == GENEVE_PORT {
        if flags >> 6 != 0 || u16::from_be_bytes([p0, p1]) != ETH_P_TEB {
            return None;
        }
        udp + 16 + ((flags & 0x3f) as u64) * 4
    } else {
        if flags & VXLAN_I == 0 {
            return None;
        }
        udp + 16
    };
    // Small reads, a few helper calls: a dropped datagram to a tunnel port is rare, and
    // the stack is shared with the rest of the program.
    let ip = frame + 14;
    let (proto, l4) = match u16::from_be_bytes(kread(frame, 12)?) {
        ETH_P_IP => {
            let h: [u8; 10] = kread(ip, 0)?;
            // Only the first fragment carries the L4 header.
            if u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 || h[0] & 0x0f < 5 {
                return None;
            }
            (h[9], ip + ((h[0] & 0x0f) as u64) * 4)
        }
        ETH_P_IPV6 => (kread::<u8>(ip, 6)?, ip + 40),
        _ => return None,
    };
    if proto != IPPROTO_UDP && proto != IPPROTO_TCP {
        return None;
    }
    let [s0, s1, d0, d1]: [u8; 4] = kread(l4, 0)?;
    Some((u16::from_be_bytes([s0, s1]), u16::from_be_bytes([d0, d1])))
}

/// The settings userspace wrote at load time. Read field by field through
/// this pointer: `CONFIG.load()` would copy all of it onto the stack for
/// every packet.
#[inline(always)]
fn config() -> *const RawConfig {
    // Global<T> is a transparent wrapper of T.
    (&raw const CONFIG).cast()
}

/// Whether either port is one of the configured DNS ports. The table ends at its first
/// repeated port ([`RawConfig::set_ports`]); nearly every node traces one, so the usual
/// packet costs two loads and three compares.
#[inline(always)]
fn dns_port(sport: u16, dport: u16) -> bool {
    let cfg = config();
    // SAFETY (each read): `cfg` points at the global, valid for the program's lifetime;
    // every index is below MAX_PORTS.
    let mut last = unsafe { read_volatile(addr_of!((*cfg).ports[0])) };
    if last == sport || last == dport {
        return true;
    }
    for i in 1..MAX_PORTS {
        let p = unsafe { read_volatile(addr_of!((*cfg).ports[i])) };
        if p == last {
            break;
        }
        if p == sport || p == dport {
            return true;
        }
        last = p;
    }
    false
}

#[inline(always)]
fn snaplen() -> u32 {
    // SAFETY: `config()` points at the global, valid for the program's lifetime.
    let snaplen = unsafe { read_volatile(addr_of!((*config()).snaplen)) };
    if snaplen == 0 || snaplen > MAX_SNAPLEN {
        MAX_SNAPLEN
    } else {
        snaplen
    }
}

/// Picks the smallest ring buffer size class that holds `cap` bytes.
/// `socket` is the cgroup_skb context, which can tell the netns and sender.
#[inline(always)]
fn emit_sized(
    header: RawEventHeader,
    cap: u32,
    socket: Option<*mut __sk_buff>,
    copy: impl Fn(*mut core::ffi::c_void, u32) -> i64,
    then: impl Fn(),
) -> Option<()> {
    if cap == 0 {
        return None;
    }
    if cap <= 256 {
        emit::<256>(header, cap, socket, copy, then)
    } else if cap <= 512 {
        emit::<512>(header, cap, socket, copy, then)
    } else if cap <= 1024 {
        emit::<1024>(header, cap, socket, copy, then)
    } else {
        emit::<{ MAX_SNAPLEN as usize }>(header, cap, socket, copy, then)
    }
}

/// Reserves a record with room for `N` packet bytes, fills the header and
/// copies `cap` (0 < cap <= N) bytes with `copy(dst, len)`, then calls `then` before
/// submitting it.
#[inline(always)]
fn emit<const N: usize>(
    mut header: RawEventHeader,
    cap: u32,
    socket: Option<*mut __sk_buff>,
    copy: impl Fn(*mut core::ffi::c_void, u32) -> i64,
    then: impl Fn(),
) -> Option<()> {
    let Some(mut entry) = EVENTS.reserve::<RawEvent<N>>(0) else {
        count(Counter::RingFull);
        return None;
    };
    let ev = entry.as_mut_ptr();
    if let Some(skb) = socket {
        // The socket hop sees every netns; say which one.
        // SAFETY: cgroup_skb programs may ask for the skb's netns cookie.
        header.netns_cookie = unsafe { bpf_get_netns_cookie(skb.cast()) };
        if header.point == point::SOCKET_OUT {
            // Egress runs in the sender's context (best effort: TCP ACKs may not).
            header.pid = (bpf_get_current_pid_tgid() >> 32) as u32;
            if let Ok(comm) = bpf_get_current_comm() {
                header.comm = comm;
            }
        }
    }
    // N is a power of two and 0 < cap <= N, so this is `cap`; written this way
    // (and hidden from the optimiser) the verifier can see that it lies in 1..=N.
    // SAFETY: reading a local.
    let cap = unsafe { core::ptr::read_volatile(&cap) };
    let len = (cap.wrapping_sub(1) & (N as u32 - 1)) + 1;
    header.cap_len = len;
    // The header goes out as whole words: written field by field, LLVM turns
    // its zeroed tail (comm, padding) into a byte-by-byte memset loop.
    // SAFETY: RawEventHeader is plain data of HEADER_WORDS × 8 bytes.
    let words: [u64; HEADER_WORDS] = unsafe { core::mem::transmute(header) };
    // SAFETY: `ev` points at a reserved, 8-byte aligned record of
    // size_of::<RawEvent<N>>() bytes, which starts with the header; 0 < len <= N
    // bytes are copied into its data array.
    let ret = unsafe {
        let dst = addr_of_mut!((*ev).header).cast::<u64>();
        for (i, word) in words.iter().enumerate() {
            dst.add(i).write_volatile(*word);
        }
        copy(addr_of_mut!((*ev).data).cast(), len)
    };
    if ret != 0 {
        entry.discard(0);
        count(Counter::CopyFailed);
        return None;
    }
    then();
    // Wake the reader only once a quarter of the ring is waiting: a wake-up
    // per event (an irq_work, an IPI: a VM exit on a VM) costs more than all
    // the rest of this path. The reader also drains the ring on a timer.
    let waiting = EVENTS.query(BPF_RB_AVAIL_DATA);
    let wake = if waiting.saturating_mul(4) >= EVENTS.query(BPF_RB_RING_SIZE) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(wake);
    count(Counter::Emitted);
    Some(())
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

//! What the drop program needs from the running kernel's BTF: field offsets
//! (Rust eBPF has no CO-RE relocations) and the names of `enum skb_drop_reason`.
use std::collections::HashMap;

use btf_rs::{Btf, BtfType, Type};
use dnstrace_common::RawSkbOffsets;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Offsets for the drop program, and drop reason value → name.
pub struct DropInfo {
    pub offsets: RawSkbOffsets,
    pub reasons: HashMap<u32, String>,
}

pub fn resolve() -> Result<DropInfo, String> {
    let btf = Btf::from_file(VMLINUX_BTF)
        .map_err(|e| format!("reading {VMLINUX_BTF}: {e} (needs CONFIG_DEBUG_INFO_BTF)"))?;
    let field = |s: &str, f: &str| {
        member_offset(&btf, s, f)
            .ok_or_else(|| format!("struct {s} has no field {f} in this kernel's BTF"))
    };
    let mut reasons = HashMap::new();
    let mut not_a_drop_max = 0;
    for t in btf
        .resolve_types_by_name("skb_drop_reason")
        .map_err(|e| format!("enum skb_drop_reason not in BTF: {e}"))?
    {
        let Type::Enum(e) = t else { continue };
        for m in &e.members {
            let name = btf.resolve_name(m).unwrap_or_default();
            let short = name
                .strip_prefix("SKB_DROP_REASON_")
                .unwrap_or(&name)
                .to_owned();
            if name == "SKB_NOT_DROPPED_YET" || name == "SKB_CONSUMED" {
                not_a_drop_max = not_a_drop_max.max(m.val());
            }
            reasons.insert(m.val(), short);
        }
    }
    if reasons.is_empty() {
        return Err("enum skb_drop_reason not in BTF (kernel older than 5.17?)".into());
    }
    let offsets = RawSkbOffsets {
        enabled: 1,
        not_a_drop_max,
        head: field("sk_buff", "head")?,
        network_header: field("sk_buff", "network_header")?,
        tail: field("sk_buff", "tail")?,
        len: field("sk_buff", "len")?,
        dev: field("sk_buff", "dev")?,
        dev_ifindex: field("net_device", "ifindex")?,
        dev_nd_net: field("net_device", "nd_net")?,
        net_cookie: field("net", "net_cookie")?,
    };
    Ok(DropInfo { offsets, reasons })
}

/// Byte offset of `field` in `struct name`, looking inside anonymous members.
fn member_offset(btf: &Btf, name: &str, field: &str) -> Option<u32> {
    btf.resolve_types_by_name(name)
        .ok()?
        .into_iter()
        .find_map(|t| match t {
            Type::Struct(s) if !s.members.is_empty() => find_in(btf, &s, field, 0),
            _ => None,
        })
}

fn find_in(btf: &Btf, s: &btf_rs::Struct, field: &str, base: u32) -> Option<u32> {
    for m in &s.members {
        let off = base + m.bit_offset() / 8;
        let name = if m.get_name_offset().unwrap_or(0) == 0 {
            String::new()
        } else {
            btf.resolve_name(m).unwrap_or_default()
        };
        if name == field {
            return Some(off);
        }
        if name.is_empty() {
            let mut t = btf.resolve_chained_type(m).ok()?;
            // Skip qualifiers and typedefs down to the struct or union.
            for _ in 0..8 {
                match t {
                    Type::Struct(ref inner) | Type::Union(ref inner) => {
                        if let Some(o) = find_in(btf, inner, field, off) {
                            return Some(o);
                        }
                        break;
                    }
                    Type::Typedef(ref x) => t = btf.resolve_chained_type(x).ok()?,
                    Type::Const(ref x) => t = btf.resolve_chained_type(x).ok()?,
                    Type::Volatile(ref x) => t = btf.resolve_chained_type(x).ok()?,
                    _ => break,
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the running kernel's BTF, which every supported kernel has.
    #[test]
    fn resolves_this_kernels_skb_layout_and_reasons() {
        if !std::path::Path::new(VMLINUX_BTF).exists() {
            eprintln!("skipped: {VMLINUX_BTF} absent");
            return;
        }
        let info = resolve().expect("resolves");
        let o = info.offsets;
        // Fields are distinct and inside a plausible sk_buff (< 512 bytes).
        let mut v = vec![o.head, o.network_header, o.tail, o.len, o.dev];
        v.sort_unstable();
        v.dedup();
        assert_eq!(v.len(), 5);
        assert!(v.iter().all(|&x| x < 512), "{o:?}");
        assert!(info.reasons.values().any(|n| n == "NETFILTER_DROP"));
        assert!(info.reasons.values().any(|n| n == "NO_SOCKET"));
        assert!(o.not_a_drop_max >= 1);
    }
}

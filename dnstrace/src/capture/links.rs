//! Interfaces of the current network namespace, read over rtnetlink.
use futures::TryStreamExt as _;
use rtnetlink::packet_route::link::{
    InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkLayerType, LinkMessage,
};

/// What the tc program has to expect at the start of a frame on this device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// Ethernet header first (also loopback and ifb).
    Ethernet,
    /// IP header first (tun, wireguard, ipip, sit…).
    RawIp,
    /// Something dnstrace cannot parse (e.g. GRE with its own header, CAN).
    Unsupported,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// Driver kind from IFLA_INFO_KIND ("veth", "ifb", "bridge"…), empty for physical devices.
    pub kind: String,
    pub framing: Framing,
    pub up: bool,
}

/// `--auto`'s rule, at start and for interfaces that appear later: every interface
/// whose frames dnstrace can parse.
pub fn auto_selects(link: &Link) -> bool {
    link.framing != Framing::Unsupported
}

/// The index of the interface called `name` in this netns, if there is one.
pub(super) fn index_of(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated string; the call only reads it.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// Lists the links of the calling thread's network namespace.
pub async fn list() -> std::io::Result<Vec<Link>> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    let task = tokio::spawn(conn);
    let mut stream = handle.link().get().execute();
    let mut links = Vec::new();
    while let Some(msg) = stream.try_next().await.map_err(std::io::Error::other)? {
        links.push(from_message(msg));
    }
    task.abort();
    links.sort_by_key(|l| l.index);
    Ok(links)
}

/// The link an RTM_NEWLINK (a dump's answer or a notification) describes.
pub(super) fn from_message(msg: LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        kind: String::new(),
        framing: framing(msg.header.link_layer_type),
        up: msg.header.flags.contains(LinkFlags::Up),
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(name) => link.name = name,
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        link.kind = kind_name(&kind);
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn framing(t: LinkLayerType) -> Framing {
    match t {
        LinkLayerType::Ether | LinkLayerType::Loopback => Framing::Ethernet,
        LinkLayerType::None
        | LinkLayerType::Tunnel
        | LinkLayerType::Tunnel6
        | LinkLayerType::Sit
        | LinkLayerType::Ppp => Framing::RawIp,
        _ => Framing::Unsupported,
    }
}

fn kind_name(kind: &InfoKind) -> String {
    match kind {
        InfoKind::Other(s) => s.clone(),
        k => format!("{k}").to_lowercase(),
    }
}

/// The node's uplinks, found from its routes (IPv4 and IPv6, every routing table but
/// `local`): the interfaces that hold a default route, in any table (policy routing,
/// VRFs), and those that hold a route via a gateway, which leads off the node too (a node
/// without a default route, upstreams on a management network, several uplinks). A
/// gateway that is the route's own source address (Cilium's `cilium_host`) is not
/// another machine. Also says which rules found them.
pub async fn uplink_ifaces() -> std::io::Result<(Vec<String>, &'static str)> {
    use rtnetlink::{
        RouteMessageBuilder,
        packet_route::route::{RouteAttribute, RouteHeader, RouteMessage, RouteType},
    };
    const RT_TABLE_LOCAL: u8 = 255;
    let (conn, handle, _) = rtnetlink::new_connection()?;
    let task = tokio::spawn(conn);
    let (mut default, mut gateway) = (Vec::new(), Vec::new());
    let requests: [RouteMessage; 2] = [
        RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .table_id(u32::from(RouteHeader::RT_TABLE_UNSPEC))
            .build(),
        RouteMessageBuilder::<std::net::Ipv6Addr>::new()
            .table_id(u32::from(RouteHeader::RT_TABLE_UNSPEC))
            .build(),
    ];
    for req in requests {
        let mut routes = handle.route().get(req).execute();
        while let Some(r) = routes.try_next().await.map_err(std::io::Error::other)? {
            let table = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Table(t) => Some(*t),
                _ => None,
            });
            if r.header.kind != RouteType::Unicast
                || table.unwrap_or(u32::from(r.header.table)) == u32::from(RT_TABLE_LOCAL)
            {
                continue;
            }
            // (interface, via a gateway) for the route and each of its next hops.
            let mut hops: Vec<(u32, bool)> = Vec::new();
            let mut oif = None;
            let mut via = false;
            let pref_src = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::PrefSource(s) => Some(s.clone()),
                _ => None,
            });
            for a in &r.attributes {
                match a {
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Gateway(g) => via = pref_src.as_ref() != Some(g),
                    RouteAttribute::Via(_) => via = true,
                    RouteAttribute::MultiPath(nhs) => hops.extend(nhs.iter().map(|nh| {
                        let gw = nh.attributes.iter().any(|a| {
                            matches!(a, RouteAttribute::Gateway(_) | RouteAttribute::Via(_))
                        });
                        (nh.interface_index, gw)
                    })),
                    _ => {}
                }
            }
            hops.extend(oif.map(|i| (i, via)));
            for (index, gw) in hops {
                let list = if r.header.destination_prefix_length == 0 {
                    &mut default
                } else if gw {
                    &mut gateway
                } else {
                    continue;
                };
                if !list.contains(&index) {
                    list.push(index);
                }
            }
        }
    }
    task.abort();
    let how = match (
        default.is_empty(),
        gateway.iter().any(|g| !default.contains(g)),
    ) {
        (false, false) => "holding a default route",
        (false, true) => "holding a default route or a route via a gateway",
        (true, true) => "holding a route via a gateway (no default route)",
        (true, false) => "none: no default route and no route via a gateway",
    };
    let indexes: Vec<u32> = default.into_iter().chain(gateway).collect();
    let links = list().await?;
    Ok((
        links
            .into_iter()
            .filter(|l| indexes.contains(&l.index))
            .map(|l| l.name)
            .collect(),
        how,
    ))
}

//! Interfaces of the current network namespace, read over rtnetlink.
use futures::TryStreamExt as _;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkLayerType};

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

/// Lists the links of the calling thread's network namespace.
pub async fn list() -> std::io::Result<Vec<Link>> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    let task = tokio::spawn(conn);
    let mut stream = handle.link().get().execute();
    let mut links = Vec::new();
    while let Some(msg) = stream.try_next().await.map_err(std::io::Error::other)? {
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
        links.push(link);
    }
    task.abort();
    links.sort_by_key(|l| l.index);
    Ok(links)
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

/// Names of the interfaces that hold a default route (IPv4 or IPv6) in the
/// calling thread's network namespace: the node's uplinks.
pub async fn default_route_ifaces() -> std::io::Result<Vec<String>> {
    use rtnetlink::{
        RouteMessageBuilder,
        packet_route::route::{RouteAttribute, RouteMessage},
    };
    let (conn, handle, _) = rtnetlink::new_connection()?;
    let task = tokio::spawn(conn);
    let mut indexes = Vec::new();
    let requests: [RouteMessage; 2] = [
        RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
        RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
    ];
    for req in requests {
        let mut routes = handle.route().get(req).execute();
        while let Some(r) = routes.try_next().await.map_err(std::io::Error::other)? {
            if r.header.destination_prefix_length != 0 {
                continue;
            }
            for a in &r.attributes {
                if let RouteAttribute::Oif(i) = a
                    && !indexes.contains(i)
                {
                    indexes.push(*i);
                }
            }
        }
    }
    task.abort();
    let links = list().await?;
    Ok(links
        .into_iter()
        .filter(|l| indexes.contains(&l.index))
        .map(|l| l.name)
        .collect())
}

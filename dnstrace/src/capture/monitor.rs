//! Link notifications of the netns (rtnetlink RTNLGRP_LINK), for `--auto` to
//! follow interfaces as they come and go.
use futures::StreamExt as _;
use futures::channel::mpsc::UnboundedReceiver;
use rtnetlink::{
    MulticastGroup,
    packet_core::{NetlinkMessage, NetlinkPayload},
    packet_route::{AddressFamily, RouteNetlinkMessage},
    sys::{AsyncSocket as _, SocketAddr},
};

use super::links::{self, Link};

/// Receive buffer of the notification socket: a burst of a few thousand
/// notifications fits; past it the kernel drops them and says so (then
/// [`LinkNote::Overrun`]).
const RECV_BUFFER: usize = 4 << 20;

/// One link notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkNote {
    /// A link appeared or changed (flags, name…).
    New(Link),
    /// A link went away (deleted, or moved to another netns).
    Gone { index: u32, name: String },
    /// Notifications were lost (the socket's buffer was full): list the links again.
    Overrun,
}

/// Subscribed to the link notifications of the calling thread's netns.
pub struct Monitor {
    messages: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
    task: tokio::task::JoinHandle<()>,
    _handle: rtnetlink::Handle,
}

impl Monitor {
    /// Subscribes. Open it before listing the links, so that none is missed between.
    pub fn open() -> std::io::Result<Self> {
        let (mut conn, handle, messages) =
            rtnetlink::new_multicast_connection(&[MulticastGroup::Link])?;
        if let Err(e) = conn.socket_mut().socket_mut().set_rx_buf_sz(RECV_BUFFER) {
            log::debug!("link notifications: keeping the default receive buffer: {e}");
        }
        let task = tokio::spawn(conn);
        Ok(Self {
            messages,
            task,
            _handle: handle,
        })
    }

    /// The next notification that matters; None once the socket has closed.
    pub async fn next(&mut self) -> Option<LinkNote> {
        loop {
            let (msg, _) = self.messages.next().await?;
            if let Some(note) = note(msg.payload) {
                return Some(note);
            }
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A notification about a device itself. Bridge ports' notifications (AF_BRIDGE, also
/// RTM_DELLINK when a port only leaves its bridge) are not about the device.
fn note(payload: NetlinkPayload<RouteNetlinkMessage>) -> Option<LinkNote> {
    match payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m))
            if m.header.interface_family == AddressFamily::Unspec =>
        {
            Some(LinkNote::New(links::from_message(m)))
        }
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m))
            if m.header.interface_family == AddressFamily::Unspec =>
        {
            let l = links::from_message(m);
            Some(LinkNote::Gone {
                index: l.index,
                name: l.name,
            })
        }
        NetlinkPayload::Overrun(_) => Some(LinkNote::Overrun),
        _ => None,
    }
}

//! The client dialects herald speaks: their labels and paths are contract.

/// The client dialects: the one list of them. Their labels and paths are contract (metric
/// label values, `[auth.dialects]` keys, the auth callout's `dialect`, URLs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// Forward Email's real-time API (`[forwardemail]`, module `herald::dialect::forwardemail`).
    ForwardEmail,
    /// JMAP push over WebSocket, RFC 8887 (`[jmap]`, module `herald::dialect::jmap`).
    Jmap,
    /// The generic realtime protocol (`[realtime]`, module `herald::dialect::realtime`).
    Realtime,
    /// Rooms (`[rooms]`, module `herald::dialect::rooms`).
    Rooms,
}

impl Dialect {
    /// Every dialect, in [`Dialect::index`] order.
    pub const ALL: [Dialect; 4] = [
        Dialect::ForwardEmail,
        Dialect::Jmap,
        Dialect::Realtime,
        Dialect::Rooms,
    ];

    /// Position in per-dialect arrays.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The label in metrics (`dialect="v1"`), `[auth.dialects]` keys and the auth callout.
    pub const fn label(self) -> &'static str {
        match self {
            Dialect::ForwardEmail => "v1",
            Dialect::Jmap => "jmap",
            Dialect::Realtime => "realtime",
            Dialect::Rooms => "rooms",
        }
    }

    /// The path the dialect's WebSocket is served on.
    pub const fn path(self) -> &'static str {
        match self {
            Dialect::ForwardEmail => "/v1/ws",
            Dialect::Jmap => "/jmap/ws",
            Dialect::Realtime => "/ws",
            Dialect::Rooms => "/api/v1/ws/connect",
        }
    }
}

impl std::fmt::Display for Dialect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

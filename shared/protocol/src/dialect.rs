//! The client dialects herald speaks: their labels and paths are contract.

/// The client dialects: the one list of them. Their labels and paths are contract (metric
/// label values, `[auth.dialects]` keys, the auth callout's `dialect`, URLs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
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

/// A label that names no dialect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown dialect \"{0}\": expected one of {labels}", labels = Dialect::ALL.map(Dialect::label).join(", "))]
pub struct UnknownDialect(pub String);

impl std::str::FromStr for Dialect {
    type Err = UnknownDialect;

    /// The dialect labelled `label` (`v1`, `jmap`, ...).
    fn from_str(label: &str) -> Result<Self, Self::Err> {
        Dialect::ALL
            .into_iter()
            .find(|dialect| dialect.label() == label)
            .ok_or_else(|| UnknownDialect(label.to_owned()))
    }
}

/// A dialect is written as its label (`[auth.dialects]` keys).
impl serde::Serialize for Dialect {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.label())
    }
}

impl<'de> serde::Deserialize<'de> for Dialect {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let label = std::borrow::Cow::<str>::deserialize(deserializer)?;
        label.parse().map_err(serde::de::Error::custom)
    }
}

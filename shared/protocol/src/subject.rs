//! NATS subjects: the one place that spells them.
//!
//! ```text
//! herald.v1.alias.<aliasId>.<event>   per-alias mail/calendar/contact events
//! herald.v1.broadcast.<event>         to every /v1/ws session (newRelease)
//! herald.v1.topic.<topic>             /ws topics (topic is dot-separated)
//! herald.v1.user.<userId>             /ws direct messages and per-user events
//! herald.v1.room.<prefix>.<id>        /api/v1/ws/connect rooms
//! herald.v1.control.revoke            credential revocation, all nodes
//! herald.v1.auth.request              optional auth callout (request/reply)
//! herald.v1.custom.<type>             /ws `X-` custom types (request/reply)
//! herald.live.<kind>.…                 stored events republished with their sequence
//! herald.limits.{session,user,node,rate}.…   cluster-wide limits (nodes only)
//! herald.realtime.ack.<node>.<id>      /ws delivery reports (nodes only)
//! ```

use std::fmt;

use crate::event::Event;

/// Every herald subject starts with this.
pub const PREFIX: &str = "herald.v1";
/// Where the stream republishes stored events (with their sequence) for live delivery:
/// `herald.live.<the subject after herald.v1.>`.
pub const LIVE_PREFIX: &str = "herald.live";
/// Cluster-wide session leases, by scope (`herald.limits.session.<scope>.<key>.<node>.<n>`).
pub const LIMITS_SESSION: &str = "herald.limits.session";
/// Cluster-wide `/ws` user leases (presence), apart from session leases.
pub const LIMITS_USER: &str = "herald.limits.user";
/// A lease's release marker, on a subject of its own so that purging the lease does not
/// take the marker from views that have not read it yet:
/// `herald.limits.released.<the lease's subject>`.
pub const LIMITS_RELEASED: &str = "herald.limits.released";
/// One subject per live node, refreshed with its leases.
pub const LIMITS_NODE: &str = "herald.limits.node";
/// Cluster-wide connection attempts per address.
pub const LIMITS_RATE: &str = "herald.limits.rate";
/// `/ws` delivery reports to the sending node (`herald.realtime.ack.<node>.<id>`).
pub const REALTIME_ACK: &str = "herald.realtime.ack";
/// The routed event families the stream stores and sequences (never control, auth or
/// custom).
pub const STREAMED_KINDS: [&str; 5] = ["alias", "broadcast", "topic", "user", "room"];
/// Subject on which revocations are announced to every node.
pub const CONTROL_REVOKE: &str = "herald.v1.control.revoke";
/// Subject of the optional auth callout.
pub const AUTH_REQUEST: &str = "herald.v1.auth.request";
/// Longest identifier accepted as a subject token.
pub const MAX_IDENTIFIER_LEN: usize = 128;
/// Room kinds of the rooms dialect.
pub const ROOM_PREFIXES: &[&str] = &["channel", "project", "task", "user"];

/// Why a subject or identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    /// An identifier used as a subject token has a character outside `[A-Za-z0-9_-]` or a bad length.
    #[error("invalid identifier {0:?}: identifiers must match [A-Za-z0-9_-]{{1,128}}")]
    InvalidIdentifier(String),
    /// A topic with an empty or invalid token.
    #[error("invalid topic {0:?}: a topic is one or more dot-separated tokens, each matching [A-Za-z0-9_-]{{1,128}}")]
    InvalidTopic(String),
    /// A room kind outside `channel|project|task|user` or a non-numeric room id.
    #[error("invalid room {0:?}: rooms look like channel:1, project:2, task:3 or user:4")]
    InvalidRoom(String),
    /// The subject is not one herald routes.
    #[error("subject {0:?} is not a herald subject (expected herald.v1.alias.<aliasId>.<event>, herald.v1.broadcast.<event>, ...)")]
    NotHerald(String),
    /// The subject names an event that is not in the catalog.
    #[error("subject {subject:?} names unknown event {event:?}")]
    UnknownEvent {
        /// The full subject.
        subject: String,
        /// The unknown event token.
        event: String,
    },
}

/// Checks that `id` can be used as one subject token: `[A-Za-z0-9_-]{1,128}`.
pub fn validate_identifier(id: &str) -> Result<(), SubjectError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_IDENTIFIER_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(SubjectError::InvalidIdentifier(id.to_owned()))
    }
}

/// Checks a dot-separated topic (each token an identifier).
pub fn validate_topic(topic: &str) -> Result<(), SubjectError> {
    if topic.split('.').all(|t| validate_identifier(t).is_ok()) {
        Ok(())
    } else {
        Err(SubjectError::InvalidTopic(topic.to_owned()))
    }
}

/// A parsed herald subject.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    /// `herald.v1.alias.<aliasId>.<event>`
    Alias {
        /// The alias the event is for.
        alias_id: String,
        /// The catalog event.
        event: Event,
    },
    /// `herald.v1.broadcast.<event>`
    Broadcast(Event),
    /// `herald.v1.topic.<topic>`
    Topic(String),
    /// `herald.v1.user.<userId>`
    User(String),
    /// `herald.v1.room.<prefix>.<id>`
    Room {
        /// `channel`, `project`, `task` or `user`.
        prefix: String,
        /// Numeric room id.
        id: String,
    },
    /// `herald.v1.control.revoke`
    ControlRevoke,
    /// `herald.v1.auth.request`
    AuthRequest,
    /// `herald.v1.custom.<type>`
    Custom(String),
}

impl Subject {
    /// The subject of `event` for one alias, validating the alias id.
    pub fn alias(alias_id: &str, event: Event) -> Result<Self, SubjectError> {
        validate_identifier(alias_id)?;
        Ok(Subject::Alias {
            alias_id: alias_id.to_owned(),
            event,
        })
    }

    /// Parses a full subject string.
    pub fn parse(subject: &str) -> Result<Self, SubjectError> {
        let not_herald = || SubjectError::NotHerald(subject.to_owned());
        let rest = subject
            .strip_prefix(PREFIX)
            .and_then(|r| r.strip_prefix('.'))
            .ok_or_else(not_herald)?;
        let (kind, rest) = rest.split_once('.').ok_or_else(not_herald)?;
        let event = |name: &str| {
            name.parse::<Event>()
                .map_err(|_| SubjectError::UnknownEvent {
                    subject: subject.to_owned(),
                    event: name.to_owned(),
                })
        };
        match kind {
            "alias" => {
                let (alias_id, name) = rest.split_once('.').ok_or_else(not_herald)?;
                validate_identifier(alias_id)?;
                Ok(Subject::Alias {
                    alias_id: alias_id.to_owned(),
                    event: event(name)?,
                })
            }
            "broadcast" => Ok(Subject::Broadcast(event(rest)?)),
            "topic" => {
                validate_topic(rest)?;
                Ok(Subject::Topic(rest.to_owned()))
            }
            "user" => {
                validate_identifier(rest)?;
                Ok(Subject::User(rest.to_owned()))
            }
            "room" => {
                let (prefix, id) = rest.split_once('.').ok_or_else(not_herald)?;
                Self::room(prefix, id)
            }
            "control" if rest == "revoke" => Ok(Subject::ControlRevoke),
            "auth" if rest == "request" => Ok(Subject::AuthRequest),
            "custom" => {
                validate_identifier(rest)?;
                Ok(Subject::Custom(rest.to_owned()))
            }
            _ => Err(not_herald()),
        }
    }

    /// A room subject, validating kind and numeric id.
    pub fn room(prefix: &str, id: &str) -> Result<Self, SubjectError> {
        let numeric = !id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit());
        if ROOM_PREFIXES.contains(&prefix) && numeric {
            Ok(Subject::Room {
                prefix: prefix.to_owned(),
                id: id.to_owned(),
            })
        } else {
            Err(SubjectError::InvalidRoom(format!("{prefix}:{id}")))
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Alias { alias_id, event } => write!(f, "{PREFIX}.alias.{alias_id}.{event}"),
            Subject::Broadcast(event) => write!(f, "{PREFIX}.broadcast.{event}"),
            Subject::Topic(topic) => write!(f, "{PREFIX}.topic.{topic}"),
            Subject::User(user) => write!(f, "{PREFIX}.user.{user}"),
            Subject::Room { prefix, id } => write!(f, "{PREFIX}.room.{prefix}.{id}"),
            Subject::ControlRevoke => f.write_str(CONTROL_REVOKE),
            Subject::AuthRequest => f.write_str(AUTH_REQUEST),
            Subject::Custom(kind) => write!(f, "{PREFIX}.custom.{kind}"),
        }
    }
}

/// The wildcard subscription that carries every event of one alias.
pub fn alias_wildcard(alias_id: &str) -> String {
    format!("{PREFIX}.alias.{alias_id}.*")
}

/// The wildcard subscription that carries every broadcast event.
pub fn broadcast_wildcard() -> String {
    format!("{PREFIX}.broadcast.*")
}

/// Whether `subject` (or pattern) is in a routed event family: stored and sequenced.
pub fn is_streamed(subject: &str) -> bool {
    let Some(rest) = subject
        .strip_prefix(PREFIX)
        .and_then(|r| r.strip_prefix('.'))
    else {
        return false;
    };
    STREAMED_KINDS
        .iter()
        .any(|kind| rest.strip_prefix(kind).is_some_and(|r| r.starts_with('.')))
}

/// The subjects the stream stores: `herald.v1.<kind>.>` for each streamed kind.
pub fn stream_subjects() -> Vec<String> {
    STREAMED_KINDS
        .iter()
        .map(|kind| format!("{PREFIX}.{kind}.>"))
        .collect()
}

/// Everything under [`PREFIX`]: what the stream republishes.
pub fn everything() -> String {
    format!("{PREFIX}.>")
}

/// The live subject a stored subject (or pattern) is republished on.
pub fn live_subject(subject: &str) -> String {
    match subject
        .strip_prefix(PREFIX)
        .and_then(|r| r.strip_prefix('.'))
    {
        Some(rest) => format!("{LIVE_PREFIX}.{rest}"),
        None => subject.to_owned(),
    }
}

/// Whether `subject` (or pattern) is an alias event's: `herald.v1.alias.…`.
pub fn is_alias(subject: &str) -> bool {
    subject
        .strip_prefix(PREFIX)
        .and_then(|r| r.strip_prefix(".alias."))
        .is_some()
}

/// The subscription for a `/ws` topic pattern (`*` one token, `>` the rest).
pub fn topic_pattern(pattern: &str) -> String {
    format!("{PREFIX}.topic.{pattern}")
}

/// NATS subject matching: `*` matches one token, a final `>` one or more.
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for p in pattern.split('.') {
        match (p, subject_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (p, Some(s)) if p == s => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_outside_the_charset_or_length_are_rejected() {
        assert!(validate_identifier("64b7f0c2a1b2c3d4e5f60718").is_ok());
        assert!(validate_identifier("a_b-C9").is_ok());
        for bad in ["", "a.b", "a*", "a>", "a b", "ä", &"x".repeat(129)] {
            assert!(validate_identifier(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_identifier(&"x".repeat(128)).is_ok());
    }

    #[test]
    fn subjects_round_trip() {
        let cases = [
            Subject::alias("abc", Event::NewMessage).unwrap(),
            Subject::Broadcast(Event::NewRelease),
            Subject::Topic("updates.a".into()),
            Subject::User("u1".into()),
            Subject::room("project", "42").unwrap(),
            Subject::ControlRevoke,
            Subject::AuthRequest,
            Subject::Custom("X-thing".into()),
        ];
        for subject in cases {
            assert_eq!(Subject::parse(&subject.to_string()).unwrap(), subject);
        }
        assert_eq!(
            Subject::alias("abc", Event::FlagsUpdated)
                .unwrap()
                .to_string(),
            "herald.v1.alias.abc.flagsUpdated"
        );
    }

    #[test]
    fn bad_subjects_say_why() {
        assert!(matches!(
            Subject::parse("herald.v1.alias.abc.nope"),
            Err(SubjectError::UnknownEvent { .. })
        ));
        assert!(matches!(
            Subject::parse("other.thing"),
            Err(SubjectError::NotHerald(_))
        ));
        assert!(matches!(
            Subject::room("team", "1"),
            Err(SubjectError::InvalidRoom(_))
        ));
        assert!(matches!(
            Subject::room("task", "x1"),
            Err(SubjectError::InvalidRoom(_))
        ));
    }

    #[test]
    fn wildcards_match_like_nats() {
        assert!(matches(
            "herald.v1.alias.a.*",
            "herald.v1.alias.a.newMessage"
        ));
        assert!(!matches(
            "herald.v1.alias.a.*",
            "herald.v1.alias.b.newMessage"
        ));
        assert!(!matches("herald.v1.alias.a.*", "herald.v1.alias.a"));
        assert!(matches("updates.>", "updates.a.b"));
        assert!(!matches("updates.>", "updates"));
        assert!(!matches("updates.*", "other.a"));
        assert!(matches("a.b", "a.b"));
        assert!(!matches("a.b", "a.b.c"));
    }
}

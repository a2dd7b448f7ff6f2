//! The event catalog: Forward Email's event names, spelled exactly as on the wire.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Which part of a mailbox an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventFamily {
    /// Messages, mailboxes and labels.
    Mail,
    /// Calendars and calendar events.
    Calendar,
    /// Contacts and address books.
    Contacts,
    /// Sent to every `/v1/ws` session, authenticated or not.
    Broadcast,
}

macro_rules! catalog {
    ($($variant:ident => $wire:literal, $family:ident;)*) => {
        /// One event of the catalog; serialises as its exact wire name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum Event {
            $(
                #[doc = concat!("`", $wire, "`")]
                #[serde(rename = $wire)]
                $variant,
            )*
        }

        impl Event {
            /// Every event of the catalog, in catalog order.
            pub const ALL: &'static [Event] = &[$(Event::$variant),*];

            /// The exact wire name (`newMessage`, `calendarEventCreated`, ...).
            pub const fn as_str(self) -> &'static str {
                match self { $(Event::$variant => $wire),* }
            }

            /// The family the event belongs to.
            pub const fn family(self) -> EventFamily {
                match self { $(Event::$variant => EventFamily::$family),* }
            }
        }

        impl FromStr for Event {
            type Err = UnknownEvent;
            fn from_str(name: &str) -> Result<Self, Self::Err> {
                match name {
                    $($wire => Ok(Event::$variant),)*
                    other => Err(UnknownEvent(other.to_owned())),
                }
            }
        }
    };
}

catalog! {
    NewMessage => "newMessage", Mail;
    MessagesMoved => "messagesMoved", Mail;
    MessagesCopied => "messagesCopied", Mail;
    FlagsUpdated => "flagsUpdated", Mail;
    MessagesExpunged => "messagesExpunged", Mail;
    MailboxCreated => "mailboxCreated", Mail;
    MailboxDeleted => "mailboxDeleted", Mail;
    MailboxRenamed => "mailboxRenamed", Mail;
    LabelsUpdated => "labelsUpdated", Mail;
    CalendarCreated => "calendarCreated", Calendar;
    CalendarUpdated => "calendarUpdated", Calendar;
    CalendarDeleted => "calendarDeleted", Calendar;
    CalendarEventCreated => "calendarEventCreated", Calendar;
    CalendarEventUpdated => "calendarEventUpdated", Calendar;
    CalendarEventDeleted => "calendarEventDeleted", Calendar;
    ContactCreated => "contactCreated", Contacts;
    ContactUpdated => "contactUpdated", Contacts;
    ContactDeleted => "contactDeleted", Contacts;
    AddressBookCreated => "addressBookCreated", Contacts;
    AddressBookUpdated => "addressBookUpdated", Contacts;
    AddressBookDeleted => "addressBookDeleted", Contacts;
    NewRelease => "newRelease", Broadcast;
}

impl Event {
    /// Whether the event goes to every session rather than to one alias.
    pub const fn is_broadcast(self) -> bool {
        matches!(self.family(), EventFamily::Broadcast)
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event {0:?}: expected one of the catalog names such as \"newMessage\" (see docs/publishing.md, \"Event catalog\")")]
pub struct UnknownEvent(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_has_the_twenty_one_mailbox_events_and_new_release() {
        assert_eq!(Event::ALL.len(), 22);
        let per_family = |f| Event::ALL.iter().filter(|e| e.family() == f).count();
        assert_eq!(per_family(EventFamily::Mail), 9);
        assert_eq!(per_family(EventFamily::Calendar), 6);
        assert_eq!(per_family(EventFamily::Contacts), 6);
        assert_eq!(per_family(EventFamily::Broadcast), 1);
    }

    #[test]
    fn wire_names_round_trip_through_serde_and_from_str() {
        for event in Event::ALL {
            let json = serde_json::to_string(event).unwrap();
            assert_eq!(json, format!("\"{}\"", event.as_str()));
            assert_eq!(event.as_str().parse::<Event>().unwrap(), *event);
        }
        assert!("NewMessage".parse::<Event>().is_err());
    }
}

//! `/jmap/ws`: JMAP push over WebSocket (RFC 8887, SPEC §4.2). The registry turns each
//! alias event into the JMAP data types it changed; the session filters them by the
//! client's `dataTypes`, coalesces a burst into one `StateChange`, and answers
//! `Request` objects (`Core/echo`).

use herald_protocol::Event;
use serde::{Deserialize, Serialize};

use crate::codec::{Decoded, EncodeError, Item};

/// JMAP data types herald reports changes of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DataType {
    /// RFC 8621 emails.
    Email,
    /// RFC 8621 mailboxes.
    Mailbox,
    /// RFC 8621 threads.
    Thread,
    /// RFC 8621 §1.5: new mail delivered (not an import or a move).
    EmailDelivery,
    /// JMAP for Calendars: calendars.
    Calendar,
    /// JMAP for Calendars: events.
    CalendarEvent,
    /// JMAP for Contacts: cards.
    ContactCard,
    /// JMAP for Contacts: address books.
    AddressBook,
}

impl DataType {
    /// Every data type, for a client that asks for all of them.
    pub const ALL: [DataType; 8] = [
        DataType::Email,
        DataType::Mailbox,
        DataType::Thread,
        DataType::EmailDelivery,
        DataType::Calendar,
        DataType::CalendarEvent,
        DataType::ContactCard,
        DataType::AddressBook,
    ];

    /// The data types an event changes (SPEC §4.2).
    pub fn changed_by(event: Event) -> &'static [DataType] {
        use DataType::*;
        match event {
            Event::NewMessage => &[Email, Mailbox, Thread, EmailDelivery],
            Event::MessagesMoved
            | Event::MessagesCopied
            | Event::FlagsUpdated
            | Event::MessagesExpunged => &[Email, Mailbox, Thread],
            Event::MailboxCreated | Event::MailboxDeleted | Event::MailboxRenamed => &[Mailbox],
            Event::LabelsUpdated => &[Email],
            Event::CalendarCreated | Event::CalendarUpdated | Event::CalendarDeleted => &[Calendar],
            Event::CalendarEventCreated
            | Event::CalendarEventUpdated
            | Event::CalendarEventDeleted => &[CalendarEvent],
            Event::ContactCreated | Event::ContactUpdated | Event::ContactDeleted => &[ContactCard],
            Event::AddressBookCreated | Event::AddressBookUpdated | Event::AddressBookDeleted => {
                &[AddressBook]
            }
            Event::NewRelease => &[],
        }
    }
}

/// One alias event as a typed change relayed to the session (which maps it to the data
/// types it changed), not a frame: the session filters and coalesces before writing.
pub fn encode(decoded: &Decoded) -> Result<Item, EncodeError> {
    let (event, alias_id) = decoded.catalog_event()?;
    if alias_id.is_none() {
        return Err(EncodeError::Unfit(format!(
            "{event} is not an account event"
        )));
    }
    Ok(Item::Change(event))
}

mod request;
mod session;

pub use session::upgrade;

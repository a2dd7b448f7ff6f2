//! The socket of an upgraded connection, handed from the HTTP/1 connection (which writes
//! the `101`) to the session (which was started by the request's handler, before it).
//!
//! Both ends live on the worker thread that accepted the connection: the handler, the
//! session's actor, its writer task and the HTTP/1 connection all run on that thread's
//! arbiter, so the hand-over is an `Rc`, not a channel.

use std::cell::{Cell, OnceCell};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use actix_rt::net::TcpStream;
use bytes::BytesMut;

use super::inbound::Inbound;
use super::writer::Writer;
use super::Transport;
use crate::outbox::OutboxReceiver;

/// What the two ends share.
pub(super) struct Shared {
    /// Set once the `101` is written.
    io: OnceCell<TcpStream>,
    /// What the client sent after its handshake, read by the HTTP/1 connection already.
    leftover: Cell<Option<Box<[u8]>>>,
    /// The HTTP/1 connection ended without handing the socket over.
    abandoned: Cell<bool>,
    /// The session's actor, waiting for the socket to read.
    reader: Cell<Option<Waker>>,
    /// The writer task, waiting for the socket to write.
    writer: Cell<Option<Waker>>,
}

/// Which end waits for the socket.
#[derive(Clone, Copy)]
pub(super) enum Side {
    Reader,
    Writer,
}

impl Shared {
    /// The socket once handed over; `Ready(None)` if the connection was abandoned.
    pub(super) fn poll_io(&self, side: Side, cx: &mut Context<'_>) -> Poll<Option<&TcpStream>> {
        if let Some(io) = self.io.get() {
            return Poll::Ready(Some(io));
        }
        if self.abandoned.get() {
            return Poll::Ready(None);
        }
        let waker = match side {
            Side::Reader => &self.reader,
            Side::Writer => &self.writer,
        };
        waker.set(Some(cx.waker().clone()));
        Poll::Pending
    }

    /// The bytes the client sent right behind its handshake, once.
    pub(super) fn take_leftover(&self) -> Option<Box<[u8]>> {
        self.leftover.take()
    }

    fn wake(&self) {
        for waker in [self.reader.take(), self.writer.take()]
            .into_iter()
            .flatten()
        {
            waker.wake();
        }
    }
}

/// The HTTP/1 connection's end: hands the socket over once the `101` is written; dropped
/// without that, it tells the session its client is gone.
pub(super) struct Handover {
    shared: Rc<Shared>,
}

impl Handover {
    /// Gives the session the socket and the bytes already read past the handshake.
    pub(super) fn complete(self, io: TcpStream, leftover: BytesMut) {
        if !leftover.is_empty() {
            // A copy: `leftover` is the HTTP/1 connection's whole read buffer.
            self.shared.leftover.set(Some(Box::from(&leftover[..])));
        }
        let _ = self.shared.io.set(io);
        self.shared.wake();
    }
}

impl Drop for Handover {
    fn drop(&mut self) {
        if self.shared.io.get().is_none() {
            self.shared.abandoned.set(true);
            self.shared.wake();
        }
    }
}

/// The session's end of an upgraded connection's socket.
pub struct Socket {
    shared: Rc<Shared>,
    max_message_bytes: usize,
}

#[cfg(test)]
impl Socket {
    /// The state the writer shares (tests drive a [`Writer`] on their own).
    pub(super) fn shared(&self) -> Rc<Shared> {
        Rc::clone(&self.shared)
    }
}

/// A hand-over and the socket it fills, for messages of at most `max_message_bytes`.
pub(super) fn pair(max_message_bytes: usize) -> (Handover, Socket) {
    let shared = Rc::new(Shared {
        io: OnceCell::new(),
        leftover: Cell::new(None),
        abandoned: Cell::new(false),
        reader: Cell::new(None),
        writer: Cell::new(None),
    });
    (
        Handover {
            shared: Rc::clone(&shared),
        },
        Socket {
            shared,
            max_message_bytes,
        },
    )
}

impl Transport for Socket {
    type Inbound = Inbound;

    fn start(self, outbox: OutboxReceiver) -> Inbound {
        let backlog = outbox.backlog();
        actix_rt::spawn(Writer::new(Rc::clone(&self.shared), outbox));
        Inbound::new(self.shared, backlog, self.max_message_bytes)
    }
}

// Wire types of herald's four dialects. Types only: nothing here exists at run time,
// so the browser bundle (dist/index.js) stays one file.

// ---------------------------------------------------------------------------
// /v1/ws — Forward Email's real-time API

/** Fields herald adds to every notification it delivers on `/v1/ws`. */
export interface DeliveryFields {
  /** Alias the event belongs to (absent on broadcasts such as `newRelease`). */
  aliasId?: string;
  /** Milliseconds since the epoch: when the producer published the event. */
  timestamp: number;
  /** Unique per event, the same on every node and session: the de-duplication key. */
  notificationId: string;
  /** Stream sequence, monotonic per alias: the resume position (`?since=`). */
  seq: number;
}

/** A resource too large for one frame: fetch it over REST instead. */
export interface Truncated {
  /** Always true: the string was replaced because the notification was too large. */
  truncated: true;
}

/** A message as mail events carry it (`eml` is the raw RFC 5322 message). */
export interface MailMessage {
  /** Message id in the mail store. */
  id?: string;
  /** IMAP UID in its mailbox. */
  uid?: number;
  /** Mailbox the message is in. */
  mailbox?: string;
  /** Subject, when the producer sent it. */
  subject?: string;
  /** Size in bytes. */
  size?: number;
  /** Raw RFC 5322 message, or `{truncated: true}` above the node's size limit. */
  eml?: string | Truncated;
  /** Anything else the producer put in. */
  [field: string]: unknown;
}

/** `newMessage`: APPEND or SMTP delivery. */
export interface NewMessage extends DeliveryFields {
  /** Event name. */
  event: "newMessage";
  /** Mailbox the message was added to. */
  mailbox?: string;
  /** The new message, with `eml`. */
  message: MailMessage;
  [field: string]: unknown;
}

/** `messagesMoved` / `messagesCopied`: MOVE / COPY. */
export interface MessagesTransferred extends DeliveryFields {
  /** Event name. */
  event: "messagesMoved" | "messagesCopied";
  /** Mailbox the messages left (or were copied from). */
  sourceMailbox: string;
  /** Mailbox the messages arrived in. */
  destinationMailbox: string;
  /** UIDs in the source mailbox, paired with `destinationUid`. */
  sourceUid: number[];
  /** UIDs in the destination mailbox. */
  destinationUid: number[];
  [field: string]: unknown;
}

/** `flagsUpdated`: STORE or an implicit `\Seen`. */
export interface FlagsUpdated extends DeliveryFields {
  /** Event name. */
  event: "flagsUpdated";
  /** Mailbox of the messages. */
  mailbox?: string;
  /** How the flags changed (`add`, `remove`, `set`). */
  action?: string;
  /** The flags concerned. */
  flags: string[];
  /** One UID. */
  uid?: number;
  /** Several UIDs. */
  uids?: number[];
  [field: string]: unknown;
}

/** `messagesExpunged`: EXPUNGE. */
export interface MessagesExpunged extends DeliveryFields {
  /** Event name. */
  event: "messagesExpunged";
  /** Mailbox the messages were removed from. */
  mailbox: string;
  /** Removed UIDs. */
  uids: number[];
  [field: string]: unknown;
}

/** `mailboxCreated` / `mailboxDeleted`: CREATE / DELETE. */
export interface MailboxChanged extends DeliveryFields {
  /** Event name. */
  event: "mailboxCreated" | "mailboxDeleted";
  /** Mailbox path. */
  path: string;
  /** Mailbox id. */
  mailbox?: string;
  [field: string]: unknown;
}

/** `mailboxRenamed`: RENAME. */
export interface MailboxRenamed extends DeliveryFields {
  /** Event name. */
  event: "mailboxRenamed";
  /** Path before. */
  oldPath: string;
  /** Path after. */
  newPath: string;
  /** Mailbox id. */
  mailbox?: string;
  [field: string]: unknown;
}

/** `labelsUpdated`. */
export interface LabelsUpdated extends DeliveryFields {
  /** Event name. */
  event: "labelsUpdated";
  [field: string]: unknown;
}

/** Calendar events (`ical` is the iCalendar text). */
export interface CalendarEvent extends DeliveryFields {
  /** Event name. */
  event:
    | "calendarCreated"
    | "calendarUpdated"
    | "calendarDeleted"
    | "calendarEventCreated"
    | "calendarEventUpdated"
    | "calendarEventDeleted";
  /** iCalendar text, or `{truncated: true}`. */
  ical?: string | Truncated;
  [field: string]: unknown;
}

/** Contact events (`content` is the vCard text). */
export interface ContactEvent extends DeliveryFields {
  /** Event name. */
  event:
    | "contactCreated"
    | "contactUpdated"
    | "contactDeleted"
    | "addressBookCreated"
    | "addressBookUpdated"
    | "addressBookDeleted";
  /** vCard text, or `{truncated: true}`. */
  content?: string | Truncated;
  [field: string]: unknown;
}

/** `newRelease`: broadcast to every `/v1/ws` session. */
export interface NewRelease extends DeliveryFields {
  /** Event name. */
  event: "newRelease";
  [field: string]: unknown;
}

/** One of the 21 Forward Email events, or the `newRelease` broadcast, as `/v1/ws` delivers it. */
export type ForwardEmailNotification =
  | NewMessage
  | MessagesTransferred
  | FlagsUpdated
  | MessagesExpunged
  | MailboxChanged
  | MailboxRenamed
  | LabelsUpdated
  | CalendarEvent
  | ContactEvent
  | NewRelease;

/** The event names: the 21 mail, calendar and contact events and `newRelease`. */
export type ForwardEmailEventName = ForwardEmailNotification["event"];

/** Control frames of `/v1/ws` (not notifications). */
export type ForwardEmailControlFrame =
  | { event: "connected"; aliasId?: string; broadcastOnly?: boolean }
  | { event: "ping" }
  | { event: "resyncRequired" };

/** The auth frame a browser sends first with `?auth=message`. */
export type ForwardEmailAuthFrame =
  | { event: "auth"; username: string; password: string; alias_id?: string }
  | { event: "auth"; token: string; alias_id?: string };

// ---------------------------------------------------------------------------
// /ws — generic realtime protocol

/** Every `/ws` frame: `{type, data, id?, timestamp?, metadata?}`. */
export interface RealtimeFrame<T extends string = string, D = unknown> {
  /** Frame type (`Status`, `Broadcast`, `Ack`, ...). */
  type: T;
  /** Frame payload. */
  data: D;
  /** The client's request id, echoed on answers. */
  id?: string;
  /** Milliseconds since the epoch. */
  timestamp?: number;
  /** Stream sequence on delivered events: the resume position (`Subscribe.since`). */
  seq?: number;
  /** Free-form metadata. */
  metadata?: Record<string, unknown>;
}

/** Delivery metadata of `Broadcast` and `DirectMessage`. */
export interface DeliveryMetadata {
  /** Server-side message id. */
  message_id: string;
  /** When it was sent (ms since epoch). */
  sent_at: number;
  /** Stream sequence. */
  seq?: number;
  /** Who sent it, when a client did. */
  sender?: { user_id: string; username?: string | null; connection_id?: string };
}

/** `Status`: connected, subscribed, unsubscribed, binary_received, resync_required. */
export type StatusFrame = RealtimeFrame<
  "Status",
  { status: string; details?: Record<string, unknown>; [k: string]: unknown }
>;
/** `Ack`: the answer to a Broadcast or DirectMessage. */
export type AckFrame = RealtimeFrame<
  "Ack",
  { message_id: string; status: string; recipients?: number; delivered_to?: string[]; seq?: number }
>;
/** `Error {code, message, details}`. */
export type ErrorFrame = RealtimeFrame<
  "Error",
  { code: number; message: string; details?: Record<string, unknown> & { message_id?: string } }
>;
/** A broadcast delivered to a topic subscriber. */
export type BroadcastFrame = RealtimeFrame<
  "Broadcast",
  { topic: string; payload: unknown; metadata: DeliveryMetadata }
>;
/** A direct message delivered to its target user. */
export type DirectMessageFrame = RealtimeFrame<
  "DirectMessage",
  { from_user?: string; from?: string; target_user?: string; payload: unknown; metadata: DeliveryMetadata }
>;
/** A backend notification. */
export type NotificationFrame = RealtimeFrame<
  "Notification",
  { level: string; title: string; message: string; actions?: { label: string; url: string }[] }
>;
/** A user's first session opened or last session closed. */
export type PresenceFrame = RealtimeFrame<
  "Presence",
  { user_id: string; status: "online" | "offline"; last_seen: number; metadata?: Record<string, unknown> }
>;
/** The token is about to expire: the client refreshes it and reconnects. */
export type AuthStatusFrame = RealtimeFrame<
  "AuthStatus",
  { status: "token_expiring"; expires_at: number; refresh_required: boolean }
>;
/** `Pong`, the answer to `Ping`. */
export type PongFrame = RealtimeFrame<"Pong", { timestamp: number; server_time?: number }>;

/** Any frame the server sends on `/ws`. */
export type RealtimeServerFrame =
  | StatusFrame
  | AckFrame
  | ErrorFrame
  | BroadcastFrame
  | DirectMessageFrame
  | NotificationFrame
  | PresenceFrame
  | AuthStatusFrame
  | PongFrame
  | RealtimeFrame;

/** The answer a `Broadcast`/`DirectMessage` helper resolves to (`Ack.data`). */
export type Ack = AckFrame["data"];

// ---------------------------------------------------------------------------
// /jmap/ws — RFC 8887

/** `StateChange` push (RFC 8620 §7.1). */
export interface JmapStateChange {
  /** Always `StateChange`. */
  "@type": "StateChange";
  /** accountId → data type → state string. */
  changed: Record<string, Record<string, string>>;
  /** Resume position for `WebSocketPushEnable`. */
  pushState?: string;
}

/** `WebSocketPushEnable` (RFC 8887 §4.3.5.2). */
export interface JmapPushEnable {
  /** Always `WebSocketPushEnable`. */
  "@type": "WebSocketPushEnable";
  /** Data types to push, `null` for all. */
  dataTypes: string[] | null;
  /** The last pushState seen, to get what changed since. */
  pushState?: string | null;
}

// ---------------------------------------------------------------------------
// /api/v1/ws/connect — rooms

/** Server event of the rooms dialect. */
export interface RoomEvent {
  /** `message`, `task.created`, `user_joined`, `error`, ... */
  type: string;
  /** `channel:1`, `project:2`, ... */
  room?: string;
  /** Event payload. */
  data: unknown;
  /** Who sent it, `null` for backends. */
  sender?: { user_id: string; username?: string | null } | string | null;
  /** ISO-8601 UTC. */
  timestamp: string;
  /** Stream sequence. */
  seq?: number;
}

// The client's state and its one WebSocket (PROTOCOL.md A2, B, C). The UI
// reads `chat.state` and calls the methods; every change calls `onChange`.
//
// Guarantees the UI relies on:
// - every sent message has a client_id and stays "pending" until its
//   message_response; it is resent with the same client_id after a
//   reconnect, so the server stores it once;
// - each conversation keeps `seq`, the last event of its log (PROTOCOL.md
//   B7) up to which nothing is missing. A live event beyond `seq + 1`
//   shows a hole, and after a reconnect get_contacts shows which
//   conversations grew: a loaded conversation then asks `sync` after its
//   `seq`, and applies those events with the same handler as live ones (by
//   id: no gap, no duplicate);
// - one get_messages and one sync per conversation are in flight at a
//   time, so each answer is known to be the older page or the newest page;
// - a change to a message (an edit, a deletion, a reaction: B8) is applied
//   to a loaded message once: each message keeps `asOf`, the `seq` its
//   state reflects (a history page's `seq`, or the last change applied), and
//   a change at or below it is already there. Reaction counts are not
//   idempotent, so this is what keeps them right across sync and reloads.

const PAGE = 50;
const SYNC_PAGE = 200;
const TYPING_SHOWN_MS = 4000;
const TYPING_SENT_EVERY_MS = 3000;
// At most one read mark a second per conversation while messages keep
// coming: each mark is a request, answered, and pushed to every other
// member of a group of up to 100 (B4, C7), so one per message read in a
// busy group made the server do that work once per message per reader.
const READ_SENT_EVERY_MS = 1000;

/** How long a refusal ("… try again in N s") asks to wait, in ms. */
const waitMs = (message) => (Number(/in (\d+) s/.exec(message || "")?.[1]) || 1) * 1000;
// The first tries come fast (a server restart is over in a second or two).
const BACKOFF_MS = [250, 500, 1000, 2000, 4000, 8000, 10000];
export const MAX_CONTENT = 4000;
const QUOTE_CHARS = 200;
/** New messages kept while a window in the past is shown (`log`). */
const HELD = 500;
/** The server counts unread messages among a conversation's last 10,000
 *  events (PROTOCOL.md C22): a count that reached it means "at least". */
export const UNREAD_WINDOW = 10000;
/** An unread count as shown: "10000+" once it reached the window. */
export const unreadText = (count) => (count >= UNREAD_WINDOW ? `${UNREAD_WINDOW}+` : String(count));
/** The emoji the reaction picker offers. */
export const REACTIONS = ["👍", "❤️", "😂", "😮", "😢", "🙏", "🎉", "👀"];

/** A client-chosen id for a message (B2): a resend with it stores nothing new. */
function newClientId() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

/** Sort key of a conversation: its newest activity. */
function activity(conversation) {
  return conversation.last_message?.time || conversation.seen || "";
}

/** Up to this many people a change names; more are counted ("Ben, Cleo and
 *  98 others"): adding a hundred people at once is one line, not a page. */
const NAMED = 3;

/** A group change in words (C20): "Ann added Ben and Cleo", "Ben left",
 *  "Ann added you, Ben and 98 others"; as parts: our own words as strings,
 *  and each name or title someone chose as `{ name }`, which the view
 *  isolates (`<bdi>`) so that its direction reorders none of the rest. */
export function changeParts({ type, by, users, title }, me) {
  const person = (p) => (!p ? "Someone" : p.user_id === me ? "You" : { name: p.name });
  const people = (list) => {
    // The reader first, if among them: "you" is the name they look for.
    const mine = list.filter((p) => p.user_id === me).map(() => "you");
    const all = [...mine, ...list.filter((p) => p.user_id !== me).map(person)];
    if (all.length === 0) return ["someone"];
    if (all.length > NAMED) return [...listed(all.slice(0, NAMED - 1)), ` and ${all.length - NAMED + 1} others`];
    return all.length > 1 ? [...listed(all.slice(0, -1)), " and ", all.at(-1)] : all;
  };
  const joined = users.length === 1 && by && users[0].user_id === by.user_id;
  switch (type) {
    case "created":
      return [person(by), " created the group “", { name: title }, "”"];
    case "members_added":
      return joined ? [person(by), " joined"] : [person(by), " added ", ...people(users)];
    case "member_removed":
      return joined ? [person(by), " left"] : [person(by), " removed ", ...people(users)];
    case "renamed":
      return [person(by), " renamed the group to “", { name: title }, "”"];
    default:
      return [];
  }
}

/** `items` with ", " between them. */
const listed = (items) => items.flatMap((item, i) => (i ? [", ", item] : [item]));

/** `reactions` after one reaction change (B8): counts per emoji, in the
 *  order the emoji were first set, and whether `me` is among them. */
export function countReaction(reactions, { emoji, on, user_id }, me) {
  const next = reactions.map((r) => ({ ...r }));
  const found = next.find((r) => r.emoji === emoji);
  if (on) {
    if (found) {
      found.count += 1;
      found.mine = found.mine || user_id === me;
    } else {
      next.push({ emoji, count: 1, mine: user_id === me });
    }
    return next;
  }
  if (!found) return next;
  found.count -= 1;
  if (user_id === me) found.mine = false;
  return next.filter((r) => r.count > 0);
}

export class Chat {
  constructor(session, { onChange, onSignedOut, onNotify = () => {} }) {
    this.session = session;
    this.onChange = onChange;
    this.onSignedOut = onSignedOut;
    this.drafts = new Map(); // pk -> what was typed and not sent
    this.uploads = new Map(); // pk -> files chosen for the next message (files.js)
    this.onNotify = onNotify; // (pk, message): a new message from someone else, live
    this.socket = null;
    this.attempt = 0;
    this.stopped = false;
    this.history = new Map(); // pk -> kind of the get_messages in flight
    this.queued = new Map(); // pk -> next get_messages wanted
    this.syncing = new Set(); // pks with a sync in flight
    this.resync = new Set(); // pks that want another sync after it
    this.lastTypingSent = new Map();
    this.lastReadSent = new Map(); // pk -> the last read mark sent
    this.readSeen = new Map(); // pk -> newest message seen here (sent or not yet)
    this.readSpacing = new Map(); // pk -> timer: a mark went out less than a second ago
    this.inFlight = []; // client_ids sent on this connection, not yet answered
    this.searches = []; // the queries of search requests not yet answered, in order
    this.contactsWanted = new Set(); // pks asked with get_contact, not yet answered
    this.state = {
      status: "reconnecting",
      conversations: new Map(),
      messages: new Map(), // pk -> { items: [], hasOlder, loaded }
      pending: new Map(), // pk -> [{ client_id, content, status, time }]
      typing: new Map(), // pk -> Map(user_id -> until)
      readUpTo: new Map(), // pk -> highest id another member has read
      changes: new Map(), // pk -> a group's latest changes (C20), oldest first
      details: new Map(), // pk -> conversation with its members
      invitations: new Map(), // pk -> invitation to a group (C9)
      blocked: new Set(), // user ids this person blocked (C10)
      open: null,
      // A line above the list: { text, error } (an error is an alert; the
      // rest, such as "Invited …", is news, not a failure).
      notice: null,
      // The search box's request and its answers (B10); null when empty.
      search: null, // { query, results: [], hasMore, loading, error }
      jump: null, // { pk, id }: the message a search result opens at
    };
  }

  get me() {
    return this.session.user;
  }

  changed() {
    this.onChange();
  }

  // --- connection -------------------------------------------------------

  start() {
    this.stopped = false;
    this.connect();
    // The network is back: try at once rather than at the end of a backoff.
    this.onOnline = () => this.reconnectNow();
    if (typeof addEventListener === "function") addEventListener("online", this.onOnline);
  }

  /** Reconnects now if waiting to (the browser says the network is back). */
  reconnectNow() {
    if (this.stopped || this.socket) return;
    clearTimeout(this.reconnectTimer);
    this.attempt = 0;
    this.connect();
  }

  stop() {
    this.stopped = true;
    if (typeof removeEventListener === "function") removeEventListener("online", this.onOnline);
    clearTimeout(this.reconnectTimer);
    for (const timer of this.readSpacing.values()) clearTimeout(timer);
    if (this.socket) this.socket.close(1000, "signed out");
    this.socket = null;
  }

  connect() {
    if (this.stopped) return;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/chat`);
    this.socket = socket;
    socket.onmessage = (event) => {
      if (socket !== this.socket) return;
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      this.onFrame(frame);
    };
    socket.onclose = (event) => {
      if (socket !== this.socket) return;
      this.onClose(event);
    };
  }

  onClose(event) {
    this.socket = null;
    this.history.clear();
    this.syncing.clear();
    this.resync.clear();
    this.inFlight = [];
    this.state.status = "reconnecting";
    this.changed();
    if (this.stopped) return;
    if (event.code === 1008 && /token (revoked|expired)/.test(event.reason)) {
      this.onSignedOut(
        event.reason === "token expired"
          ? "Your session expired. Please log in again."
          : "Your session was ended (signed out everywhere, password changed or account deactivated). Please log in again."
      );
      return;
    }
    const base = BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)];
    this.attempt += 1;
    this.reconnectTimer = setTimeout(() => this.connect(), base / 2 + Math.random() * base);
  }

  /** Asks for the list again once a refusal ("… try again in N s") allows. */
  askContactsLater(message) {
    clearTimeout(this.contactsTimer);
    this.contactsTimer = setTimeout(() => this.send("get_contacts", {}), waitMs(message));
  }

  /** Asks for one conversation with its members (and a group's changes). */
  askContact(pk) {
    this.contactsWanted.add(pk);
    this.send("get_contact", { id: pk });
  }

  /**
   * A refusal names no conversation: once it allows, every one asked for
   * and not yet answered is asked for again.
   */
  askContactLater(message) {
    clearTimeout(this.contactTimer);
    this.contactTimer = setTimeout(() => {
      for (const pk of this.contactsWanted) this.send("get_contact", { id: pk });
    }, waitMs(message));
  }

  send(type, data) {
    if (this.socket?.readyState === WebSocket.OPEN && this.state.status === "connected") {
      this.socket.send(JSON.stringify({ type, data }));
      return true;
    }
    return false;
  }

  onFrame({ type, data }) {
    const failed = data && typeof data === "object" && data.status === "error";
    switch (type) {
      case "info":
        this.socket.send(
          JSON.stringify({ type: "authorization", data: { token: this.session.token } })
        );
        return;
      case "authorization_response":
        return this.onAuthorized(data);
      case "get_contacts_response":
        if (Array.isArray(data)) this.setContacts(data);
        // Over the server's budget for lists (C12): asked again when it says.
        else if (failed && data.code === "rate_limited") this.askContactsLater(data.message);
        break;
      case "get_contact_response":
        // Over the budget for member lists (C12): asked again when it says.
        if (failed && data.code === "rate_limited") this.askContactLater(data.message);
        if (!failed) {
          this.contactsWanted.delete(data.pk);
          this.upsertConversation(data, data.unread);
          // How far the others have read, for "Read" after a reload (C19).
          if (data.read_up_to) this.onRead({ pk: data.pk, user_id: null, up_to: data.read_up_to });
        }
        break;
      case "message":
        this.onMessage(data.pk, data.data, data.seq, true);
        break;
      case "message_edited":
      case "message_deleted":
      case "reaction":
        this.onMessageChange(type, data);
        break;
      case "sync_response":
        this.onSync(data);
        break;
      case "message_response":
        this.onMessageAnswer(data);
        break;
      case "get_messages_response":
        this.onHistory(data);
        break;
      case "search_response":
        this.onSearch(data);
        break;
      case "read":
        this.onRead(data);
        break;
      case "typing":
        this.onTyping(data);
        break;
      case "presence":
        this.onPresence(data);
        break;
      case "conversation":
        this.onConversation(data);
        break;
      case "create_group_response":
        if (!failed) {
          this.upsertConversation(data, 0);
          this.openConversation(data.pk);
          this.noteInvited(data.invited);
        }
        break;
      case "add_members_response":
        if (!failed) {
          this.upsertConversation(data, data.unread);
          this.noteInvited(data.invited);
        }
        break;
      case "rename_group_response":
        if (!failed) this.upsertConversation(data, data.unread);
        break;
      case "get_invitations_response":
        if (!failed) this.state.invitations = new Map(data.map((i) => [i.pk, i]));
        break;
      case "invitation":
        this.state.invitations.set(data.pk, data);
        break;
      case "accept_invitation_response":
        if (!failed) {
          this.state.invitations.delete(data.pk);
          this.upsertConversation(data, data.unread);
          this.openConversation(data.pk);
        }
        break;
      case "decline_invitation_response":
        if (!failed) this.state.invitations.delete(data.pk);
        break;
      case "mute_response":
      case "muted":
        if (!failed) this.onMuted(data);
        break;
      case "get_blocked_response":
        if (!failed) this.state.blocked = new Set(data.map((p) => p.user_id));
        break;
      case "block_user_response":
        if (!failed) this.state.blocked.add(data.user_id);
        break;
      case "unblock_user_response":
        if (!failed) this.state.blocked.delete(data.user_id);
        break;
      case "remove_member_response":
        if (!failed && data.removed) this.forget(data.pk);
        else if (!failed) this.upsertConversation(data, data.unread);
        break;
      default:
        break;
    }
    const quiet = ["message_response", "get_messages_response", "sync_response"];
    if (failed && !quiet.includes(type)) {
      this.state.notice = { text: data.message, error: true, after: type };
    } else if (!failed && this.state.notice?.after === type) {
      // The same request has now succeeded: its earlier error is stale.
      this.state.notice = null;
    }
    this.changed();
  }

  onAuthorized(data) {
    if (data?.status !== "success") {
      const message = data?.message || "Authorization failed.";
      if (data?.code === "rate_limited" || data?.code === "internal") {
        this.state.notice = { text: message, error: true };
        this.socket.close();
        return;
      }
      this.onSignedOut(`${message}. Please log in again.`);
      return;
    }
    this.attempt = 0;
    this.state.status = "connected";
    // Searches asked on the old connection are not answered: ask again.
    this.searches = [];
    if (this.state.search?.loading) this.search(this.state.search.query);
    // The contacts say which conversations grew meanwhile (setContacts
    // syncs those); then resend what was never acknowledged.
    this.send("get_contacts", {});
    this.send("get_invitations", {});
    this.send("get_blocked", {});
    for (const [pk, list] of this.state.pending) {
      for (const item of list) {
        if (item.status === "pending") this.transmit(pk, item);
      }
    }
    for (const pk of this.readSeen.keys()) this.sendReadMark(pk);
    if (this.state.open && !this.state.messages.get(this.state.open)?.loaded) {
      this.loadNewest(this.state.open);
    }
    this.changed();
  }

  // --- conversations ----------------------------------------------------

  setContacts(items) {
    const seen = new Set();
    for (const item of items) {
      seen.add(item.pk);
      const known = this.state.conversations.has(item.pk);
      const conversation = this.upsertConversation(item, item.unread);
      // Listed at start with no message yet: below those with messages,
      // not on top as if it were new.
      if (!known && !item.last_message) conversation.seen = "";
      if (item.seq > conversation.seq) {
        if (this.state.messages.get(item.pk)?.loaded) this.sync(item.pk);
        else conversation.seq = item.seq;
      }
    }
    for (const pk of [...this.state.conversations.keys()]) {
      if (!seen.has(pk)) this.state.conversations.delete(pk);
    }
  }

  /** Adds or updates a conversation from a contact item, a conversation
   *  item or a push (`unread` undefined: keep the count we have). */
  upsertConversation(item, unread) {
    const previous = this.state.conversations.get(item.pk);
    const members = Array.isArray(item.members) ? item.members.length : item.members;
    const last = item.last_message ?? previous?.last_message ?? null;
    // The server counts from the read mark it has stored; one of ours it
    // had not stored yet when it answered (marks are written in batches),
    // or not yet sent (one a second), already covers its newest message.
    if (unread !== undefined && last && (this.readSeen.get(item.pk) || 0) >= last.id) unread = 0;
    const next = {
      pk: item.pk,
      name: item.name,
      kind: item.kind || "direct",
      online: item.online,
      user_id: item.user_id,
      username: item.username,
      members,
      // A contact or conversation item says; a `conversation` push never
      // carries it (C17), and `onConversation` keeps what we have.
      muted: item.muted === true,
      last_message: last,
      unread: unread ?? previous?.unread ?? 0,
      seen: previous?.seen || new Date().toISOString(),
      // Moved only by the events applied (see `advance`): a contact item
      // says where the conversation is, not what we have.
      seq: previous ? previous.seq : item.seq || 0,
    };
    this.state.conversations.set(item.pk, next);
    if (Array.isArray(item.members)) this.state.details.set(item.pk, item);
    if (Array.isArray(item.changes)) this.state.changes.set(item.pk, item.changes);
    // Joined an existing conversation: its item says how much is unread.
    if (!previous && unread === undefined) this.askContact(item.pk);
    return next;
  }

  forget(pk) {
    const name = this.state.conversations.get(pk)?.name;
    this.state.conversations.delete(pk);
    this.state.messages.delete(pk);
    this.state.details.delete(pk);
    this.state.pending.delete(pk);
    this.contactsWanted.delete(pk);
    clearTimeout(this.readSpacing.get(pk));
    this.readSpacing.delete(pk);
    this.readSeen.delete(pk);
    if (this.state.open === pk) {
      this.state.open = null;
      if (name) this.state.notice = { text: `You are no longer in ${name}.`, error: false };
    }
  }

  /** Names that more than one conversation shows: those show their
   *  username beside them, so a copied display name cannot pass for
   *  another person. */
  collidingNames() {
    const count = new Map();
    for (const c of this.state.conversations.values()) count.set(c.name, (count.get(c.name) || 0) + 1);
    return new Set([...count].filter(([, n]) => n > 1).map(([name]) => name));
  }

  sortedConversations() {
    return [...this.state.conversations.values()].sort((a, b) => {
      const [x, y] = [activity(a), activity(b)];
      return x === y ? a.name.localeCompare(b.name) : x < y ? 1 : -1;
    });
  }

  openConversation(pk) {
    this.state.open = pk;
    this.state.notice = null;
    const log = this.state.messages.get(pk);
    const jumping = this.state.jump?.pk === pk;
    if (log?.hasNewer && !jumping) this.showLatest(pk);
    else if (!log?.loaded && !jumping) this.loadNewest(pk);
    const group = this.state.conversations.get(pk)?.kind === "group";
    if (!this.state.details.has(pk) || (group && !this.state.changes.has(pk))) this.askContact(pk);
    this.changed();
  }

  // --- search (B10) -------------------------------------------------------

  /** Asks for the messages holding every word of `query`; `more` asks for
   *  the page after the results shown. An answer to an older query is
   *  dropped when it comes (only the latest query's answers are shown). */
  search(query, more = false) {
    const text = query.trim();
    if (!text) {
      this.state.search = null;
      this.changed();
      return;
    }
    const current = this.state.search;
    const before = more && current?.results.length ? current.results.at(-1).id : undefined;
    const data = { query: text, ...(before ? { before } : {}) };
    if (!this.send("search", data)) {
      this.state.search = { query: text, results: [], hasMore: false, loading: false, error: "Not connected." };
    } else {
      const results = more && current ? current.results : [];
      this.state.search = { query: text, results, hasMore: false, loading: true, error: null };
      this.searches.push(text);
    }
    this.changed();
  }

  onSearch(data) {
    const query = this.searches.shift();
    const current = this.state.search;
    if (!current || query !== current.query || this.searches.includes(current.query)) return;
    if (data.status === "error" && data.code === "rate_limited") {
      // Over the server's allowance for searches: asked again when it
      // says, if the query is still the one shown.
      this.searchLater(query, data.message);
      return;
    }
    if (data.status === "error") {
      this.state.search = { ...current, loading: false, error: data.message };
      return;
    }
    const results = [...current.results, ...data.results];
    this.state.search = { query, results, hasMore: data.has_more, loading: false, error: null };
  }

  /** Searches `query` again once a refusal ("… try again in N s")
   *  allows, unless another query has taken its place meanwhile. */
  searchLater(query, message) {
    clearTimeout(this.searchTimer);
    this.searchTimer = setTimeout(() => {
      const current = this.state.search;
      if (current?.query === query) this.search(query, current.results.length > 0);
    }, waitMs(message));
  }

  /** Opens a result's conversation at its message (the view loads the
   *  history around it if it is not loaded: `loadAround`). */
  openAt(pk, id) {
    this.state.jump = { pk, id };
    this.openConversation(pk);
  }

  closeConversation() {
    this.state.open = null;
    this.changed();
  }

  /** A `conversation` push says what changed, never who is in it (C7):
   *  the member list is asked for only where it is on screen, so a change
   *  in a big group costs one small frame per member, not a list each. */
  onConversation(item) {
    if (item.removed) {
      this.forget(item.pk);
      return;
    }
    const isNew = !this.state.conversations.has(item.pk);
    // A new group has nothing unread; one we were added to may have history.
    const unread = isNew && item.change?.type === "created" ? 0 : undefined;
    const muted = this.state.conversations.get(item.pk)?.muted ?? false;
    this.upsertConversation({ ...item, muted }, unread);
    const details = this.state.details.get(item.pk);
    if (item.change?.type === "renamed" && details) {
      details.name = item.name;
    } else if (details || isNew) {
      this.state.details.delete(item.pk);
    }
    // The conversation on screen asks for its members and its group's
    // changes (C20) again; others do when opened.
    if (this.state.open === item.pk) this.askContact(item.pk);
    else this.state.changes.delete(item.pk);
  }

  /** This person muted or unmuted a conversation, here or on another device. */
  onMuted({ pk, muted }) {
    const conversation = this.state.conversations.get(pk);
    if (conversation) conversation.muted = muted;
  }

  /** Presence: a direct conversation's flag, a shown member list's entry;
   *  a group's flag rises with anyone, and falls when a list says so. */
  onPresence({ pk, user_id, online }) {
    const conversation = this.state.conversations.get(pk);
    if (!conversation) return;
    const details = this.state.details.get(pk);
    const member = details?.members.find((m) => m.user_id === user_id);
    if (member) member.online = online;
    if (conversation.kind !== "group") {
      conversation.online = online;
    } else if (details) {
      conversation.online = details.members.some((m) => m.online && m.user_id !== this.me.id);
    } else if (online) {
      conversation.online = true;
    }
  }

  // --- history ----------------------------------------------------------

  /** A conversation's loaded messages: the newest and the pages above
   *  them, or (`hasNewer`) a window somewhere in its past, opened at a
   *  search result or a replied-to message, that grows both ways. While
   *  the window does not reach the newest message, new messages wait in
   *  `held` and join once it does. `generation` tells a page asked for
   *  an earlier window, which is dropped. */
  log(pk) {
    let log = this.state.messages.get(pk);
    if (!log) {
      log = { items: [], hasOlder: false, hasNewer: false, held: [], loaded: false, generation: 0 };
      this.state.messages.set(pk, log);
    }
    return log;
  }

  /** Empties a conversation's log for a new window: pages asked for the
   *  old one are dropped when they come. */
  resetLog(pk, hasNewer) {
    const log = this.log(pk);
    Object.assign(log, { items: [], hasOlder: hasNewer, hasNewer, held: [], loaded: false });
    log.generation += 1;
    this.queued.delete(pk);
    return log;
  }

  /** Asks for a page of history; one per conversation at a time. */
  requestHistory(pk, kind, data) {
    const generation = this.log(pk).generation;
    if (this.history.has(pk)) {
      this.queued.set(pk, { kind, data, generation });
      return;
    }
    if (this.send("get_messages", { id: pk, ...data })) this.history.set(pk, { kind, generation });
  }

  loadNewest(pk) {
    this.requestHistory(pk, "newest", { limit: PAGE });
  }

  /** The page above the oldest loaded message; true if it was asked for. */
  loadOlder(pk) {
    const log = this.log(pk);
    if (!log.hasOlder || !log.items.length || this.history.has(pk)) return false;
    this.requestHistory(pk, "older", { before: log.items[0].id, limit: PAGE });
    return true;
  }

  /** The page below a window in the past. */
  loadNewer(pk) {
    const log = this.log(pk);
    if (!log.hasNewer || !log.items.length || this.history.has(pk)) return;
    this.requestHistory(pk, "newer", { after: log.items.at(-1).id, limit: PAGE });
  }

  /** A window on the conversation starting at message `id` (B7: `after`
   *  an id reads from the first message past it, so `id - 1` starts at
   *  `id` whether or not `id - 1` is in this conversation); the pages
   *  above and below load as the person scrolls. */
  loadAround(pk, id) {
    if (this.log(pk).items.some((m) => m.id === id)) return;
    this.resetLog(pk, true);
    this.requestHistory(pk, "around", { after: id - 1, limit: PAGE });
    this.changed();
  }

  /** Leaves a window in the past for the newest messages. */
  showLatest(pk) {
    this.resetLog(pk, false);
    this.loadNewest(pk);
    this.changed();
  }

  onHistory(data) {
    if (data?.status === "error") {
      // The conversation is gone for us (not_found) or the server failed.
      // What a log not loaded held is dropped: the page asked next may be
      // newer than all of it, and holding it would leave a gap below.
      for (const [pk] of this.history) {
        this.history.delete(pk);
        const log = this.state.messages.get(pk);
        if (log && !log.loaded) log.held = [];
      }
      if (data.code === "not_found" && this.state.open) this.forget(this.state.open);
      return;
    }
    const pk = data.pk;
    const asked = this.history.get(pk);
    this.history.delete(pk);
    const log = this.log(pk);
    if (asked?.generation === log.generation) {
      this.merge(
        log,
        data.messages.map((m) => ({ ...m, asOf: data.seq || 0 }))
      );
      if (asked.kind === "newest" || asked.kind === "older") log.hasOlder = data.has_more;
      else log.hasNewer = data.has_more;
      if (asked.kind === "newest" || asked.kind === "around") log.loaded = true;
      if (log.loaded && !log.hasNewer) {
        // Caught up: what came meanwhile joins (merge drops repeats). The
        // page may have been read before some of it was committed.
        this.merge(log, log.held);
        log.held = [];
      }
    }
    const next = this.queued.get(pk);
    if (next) {
      this.queued.delete(pk);
      if (next.generation === log.generation) this.requestHistory(pk, next.kind, next.data);
    }
    this.touch(pk, log);
  }

  // --- the conversation log (B7) ------------------------------------------

  /** Asks for the events after the conversation's `seq`; one at a time. */
  sync(pk) {
    const conversation = this.state.conversations.get(pk);
    if (!conversation) return;
    if (this.syncing.has(pk)) {
      this.resync.add(pk);
      return;
    }
    const data = { id: pk, after_seq: conversation.seq, limit: SYNC_PAGE };
    if (this.send("sync", data)) this.syncing.add(pk);
  }

  onSync(data) {
    if (data?.status === "error") {
      // An error names no conversation; get_contacts after the next
      // reconnect asks again for whatever is still missing.
      this.syncing.clear();
      this.resync.clear();
      return;
    }
    const pk = data.pk;
    this.syncing.delete(pk);
    for (const event of data.events) {
      if (event.type === "message") this.onMessage(pk, event.data.data, event.data.seq, false);
      else this.onMessageChange(event.type, event.data);
    }
    const conversation = this.state.conversations.get(pk);
    if (!data.has_more && conversation) conversation.seq = Math.max(conversation.seq, data.seq);
    if (data.has_more || this.resync.has(pk)) {
      this.resync.delete(pk);
      this.sync(pk);
    }
  }

  /** An event of `seq` was applied: move the conversation's `seq`, or, past
   *  a hole in a conversation on screen, fetch what was missed. */
  advance(pk, conversation, seq) {
    if (!seq || seq <= conversation.seq) return;
    if (seq === conversation.seq + 1 || !this.state.messages.get(pk)?.loaded) {
      conversation.seq = seq;
      return;
    }
    this.sync(pk);
  }

  /** Adds messages to a log by id: no duplicates, kept in id order (which
   *  is the conversation's order: B7). */
  merge(log, messages) {
    const known = new Set(log.items.map((m) => m.id));
    let added = false;
    for (const message of messages) {
      if (known.has(message.id)) continue;
      log.items.push(message);
      known.add(message.id);
      added = true;
    }
    if (added) log.items.sort((a, b) => a.id - b.id);
  }

  /** Keeps the conversation's last message in step with its log. */
  touch(pk, log) {
    const conversation = this.state.conversations.get(pk);
    const newest = log.items.findLast((m) => !m.deleted);
    if (conversation && newest) this.showLast(conversation, newest);
  }

  /** `message` is the conversation's last unless a newer one is. */
  showLast(conversation, message) {
    if (!conversation.last_message || conversation.last_message.id < message.id) {
      conversation.last_message = {
        id: message.id,
        sender: message.sender,
        content: message.content,
        time: message.time,
      };
    }
  }

  /** A message that belongs after what the log shows: added, or, while
   *  the newest page is not there (loading, or a window in the past),
   *  held until it is. */
  addNewest(log, message) {
    if (log.loaded && !log.hasNewer) {
      this.merge(log, [message]);
      return;
    }
    // Bounded: the pages below bring anything older again.
    log.held.push(message);
    if (log.held.length > HELD) log.held.shift();
  }

  // --- messages ---------------------------------------------------------

  /** An edit, a deletion or a reaction change (B8), live or from `sync`:
   *  applied to the message if it is loaded and does not show it yet. */
  onMessageChange(type, data) {
    const pk = data.pk;
    const conversation = this.state.conversations.get(pk);
    if (!conversation) return;
    const log = this.state.messages.get(pk);
    // A message changed is a new object in its place, never changed in
    // place: the view draws again only the messages that are new objects.
    const list = log?.items.some((m) => m.id === data.id) ? log.items : log?.held;
    const at = list ? list.findIndex((m) => m.id === data.id) : -1;
    const item = at >= 0 ? list[at] : null;
    if (item && data.seq > (item.asOf || 0)) {
      let changed;
      if (type === "message_edited") {
        changed = { content: data.content, edited_at: data.edited_at };
      } else if (type === "message_deleted") {
        changed = { deleted: true, content: "", reactions: [], attachments: [] };
      } else {
        changed = { reactions: countReaction(item.reactions || [], data, this.me.id) };
      }
      list[at] = { ...item, ...changed, asOf: data.seq };
    }
    if (log && type !== "reaction") {
      const quoted = type === "message_deleted" ? "" : data.content.slice(0, QUOTE_CHARS);
      log.items.forEach((reply, i) => {
        if (reply.reply_to === data.id && reply.quote) {
          log.items[i] = { ...reply, quote: { ...reply.quote, content: quoted } };
        }
      });
    }
    const last = conversation.last_message;
    if (last?.id === data.id && type === "message_edited") {
      conversation.last_message = { ...last, content: data.content };
    } else if (last?.id === data.id && type === "message_deleted") {
      const newest = log?.items.findLast((m) => !m.deleted);
      conversation.last_message = newest
        ? { id: newest.id, sender: newest.sender, content: newest.content, time: newest.time }
        : { ...last, content: "", deleted: true };
    }
    this.advance(pk, conversation, data.seq);
  }

  /** A message event, live or from `sync` (which does not count as unread:
   *  get_contacts already did). */
  onMessage(pk, body, seq, live) {
    const message = { ...body, asOf: seq || 0 };
    const log = this.state.messages.get(pk);
    // At or below the conversation's seq: counted already (get_contacts'
    // unread) or delivered before.
    const seen = seq && seq <= (this.state.conversations.get(pk)?.seq ?? 0);
    const isNew = !seen && (!log || !log.items.some((m) => m.id === message.id));
    if (log) this.addNewest(log, message);
    if (message.client_id && message.direction === "send") {
      this.dropPending(pk, message.client_id);
    }
    const conversation = this.state.conversations.get(pk);
    if (!conversation) {
      this.askContact(pk);
      return;
    }
    this.advance(pk, conversation, seq);
    this.showLast(conversation, message);
    if (isNew && live && message.direction === "received") {
      conversation.unread += 1;
      const typing = this.state.typing.get(pk);
      typing?.delete(message.sender);
      this.onNotify(pk, message);
    }
  }

  /** Sends a message (a reply when `replyTo` is a message of the
   *  conversation); it shows as pending until the server acknowledges it. */
  sendMessage(pk, text, replyTo = null, attachments = []) {
    const typed = text.trim();
    if (!typed && !attachments.length) return "Write something first.";
    const length = [...typed].length;
    if (length > MAX_CONTENT) return `A message has at most ${MAX_CONTENT} characters; this one has ${length}.`;
    const item = {
      client_id: newClientId(),
      // Files without text: the server stores their names as the text.
      content: typed || attachments.map((f) => f.name).join(", "),
      typed: Boolean(typed),
      attachments,
      status: "pending",
      time: new Date().toISOString(),
      reply_to: replyTo,
    };
    if (this.state.messages.get(pk)?.hasNewer) this.showLatest(pk);
    const list = this.state.pending.get(pk) || [];
    list.push(item);
    this.state.pending.set(pk, list);
    this.transmit(pk, item);
    this.changed();
    return null;
  }

  transmit(pk, item) {
    const data = { to: pk, content: item.typed === false ? "" : item.content, client_id: item.client_id };
    if (item.reply_to) data.reply_to = item.reply_to;
    if (item.attachments?.length) data.attachments = item.attachments.map((f) => f.id);
    if (this.send("message", data)) {
      this.inFlight.push(item.client_id);
    }
  }

  retry(pk, clientId) {
    const item = this.state.pending.get(pk)?.find((p) => p.client_id === clientId);
    if (!item) return;
    item.status = "pending";
    this.transmit(pk, item);
    this.changed();
  }

  dropPending(pk, clientId) {
    const list = this.state.pending.get(pk);
    if (!list) return;
    const rest = list.filter((p) => p.client_id !== clientId);
    if (rest.length) this.state.pending.set(pk, rest);
    else this.state.pending.delete(pk);
  }

  onMessageAnswer(data) {
    if (data.status === "success") {
      this.inFlight = this.inFlight.filter((id) => id !== data.client_id);
      const log = this.state.messages.get(data.pk);
      const item = this.state.pending.get(data.pk)?.find((p) => p.client_id === data.client_id);
      if (log && item) {
        const answered = item.reply_to && log.items.find((m) => m.id === item.reply_to);
        const message = {
          id: data.id,
          sender: this.me.id,
          direction: "send",
          content: item.content,
          time: data.time,
          client_id: data.client_id,
          reply_to: item.reply_to || null,
          attachments: item.attachments || [],
          quote: answered ? { sender: answered.sender, content: answered.content.slice(0, QUOTE_CHARS) } : null,
        };
        this.addNewest(log, message);
        const conversation = this.state.conversations.get(data.pk);
        if (conversation) this.showLast(conversation, message);
      }
      this.dropPending(data.pk, data.client_id);
      return;
    }
    // An error names no message: it answers the latest one sent (the
    // checks that refuse one happen as it arrives).
    const clientId = this.inFlight.pop();
    for (const list of this.state.pending.values()) {
      const item = list.find((p) => p.client_id === clientId);
      if (item) item.status = "failed";
    }
    this.state.notice = { text: data.message, error: true };
  }

  // --- changes to messages (B8) ------------------------------------------

  editMessage(id, text) {
    const content = text.trim();
    if (!content) return "Write something first.";
    const length = [...content].length;
    if (length > MAX_CONTENT) return `A message has at most ${MAX_CONTENT} characters; this one has ${length}.`;
    return this.send("edit_message", { id, content }) ? null : "Not connected: try again.";
  }

  deleteMessage(id) {
    return this.send("delete_message", { id });
  }

  /** Sets the person's `emoji` on a message, or takes it back if set. */
  toggleReaction(message, emoji) {
    const mine = (message.reactions || []).some((r) => r.emoji === emoji && r.mine);
    return this.send("react", { id: message.id, emoji, on: !mine });
  }

  /** Adds the person's `emoji` to a message (one they already gave: no change). */
  addReaction(message, emoji) {
    return this.send("react", { id: message.id, emoji, on: true });
  }

  // --- read marks and typing --------------------------------------------

  /** The person has seen the open conversation's newest message. */
  markSeen(pk) {
    const log = this.state.messages.get(pk);
    const conversation = this.state.conversations.get(pk);
    if (!log?.items.length || log.hasNewer || !conversation) return;
    const newest = log.items[log.items.length - 1].id;
    const counted = conversation.unread > 0;
    if (!counted && (this.readSeen.get(pk) || 0) >= newest) return;
    this.readSeen.set(pk, Math.max(newest, this.readSeen.get(pk) || 0));
    // Still counted unread: what was sent did not cover it; say it again.
    if (counted) this.lastReadSent.delete(pk);
    this.sendReadMark(pk);
    conversation.unread = 0;
    this.changed();
  }

  /**
   * Sends how far `pk` has been seen, unless a mark went out less than a
   * second ago: then what is seen meanwhile goes in one mark when the
   * second is over. Not connected, it goes after the reconnect.
   */
  sendReadMark(pk) {
    if (this.readSpacing.has(pk)) return;
    const upTo = this.readSeen.get(pk) || 0;
    if (upTo <= (this.lastReadSent.get(pk) || 0)) return;
    if (!this.send("read", { id: pk, up_to: upTo })) return;
    this.lastReadSent.set(pk, upTo);
    const spaced = () => {
      this.readSpacing.delete(pk);
      this.sendReadMark(pk);
    };
    this.readSpacing.set(pk, setTimeout(spaced, READ_SENT_EVERY_MS));
  }

  onRead({ pk, user_id, up_to }) {
    if (user_id === this.me.id) {
      // Another tab of ours read it.
      const conversation = this.state.conversations.get(pk);
      const newest = conversation?.last_message?.id || 0;
      if (conversation && up_to >= newest) conversation.unread = 0;
      return;
    }
    this.state.readUpTo.set(pk, Math.max(this.state.readUpTo.get(pk) || 0, up_to));
  }

  typingNow(pk) {
    const last = this.lastTypingSent.get(pk) || 0;
    if (Date.now() - last < TYPING_SENT_EVERY_MS) return;
    if (this.send("typing", { id: pk })) this.lastTypingSent.set(pk, Date.now());
  }

  onTyping({ pk, user_id }) {
    const typing = this.state.typing.get(pk) || new Map();
    typing.set(user_id, Date.now() + TYPING_SHOWN_MS);
    this.state.typing.set(pk, typing);
    setTimeout(() => this.changed(), TYPING_SHOWN_MS + 50);
  }

  typists(pk) {
    const typing = this.state.typing.get(pk);
    if (!typing) return [];
    const now = Date.now();
    return [...typing].filter(([, until]) => until > now).map(([user]) => user);
  }

  // --- groups -----------------------------------------------------------

  createGroup(title, members) {
    return this.send("create_group", { title, members });
  }

  addMembers(pk, members) {
    return this.send("add_members", { id: pk, members });
  }

  removeMember(pk, userId) {
    return this.send("remove_member", { id: pk, user_id: userId });
  }

  /** People who were invited instead of added: they join when they accept. */
  noteInvited(invited) {
    if (!invited?.length) return;
    const names = invited.map((id) => this.nameOfUser(id) || `user ${id}`);
    this.state.notice = { text: `Invited ${names.join(", ")}: they join when they accept.`, error: false };
  }

  /** A contact's full name, from the direct conversation with them. */
  nameOfUser(id) {
    for (const c of this.state.conversations.values()) {
      if (c.kind === "direct" && c.user_id === id) return c.name;
    }
    return null;
  }

  sortedInvitations() {
    return [...this.state.invitations.values()].sort((a, b) => (a.time < b.time ? 1 : -1));
  }

  /** No notification for `pk` on any of this person's devices (C17). */
  setMuted(pk, muted) {
    return this.send("mute", { id: pk, muted });
  }

  /** Blocks (or unblocks) the other person of a direct conversation. */
  setBlocked(userId, blocked) {
    return this.send(blocked ? "block_user" : "unblock_user", { user_id: userId });
  }

  acceptInvitation(pk) {
    return this.send("accept_invitation", { id: pk });
  }

  declineInvitation(pk) {
    return this.send("decline_invitation", { id: pk });
  }

  renameGroup(pk, title) {
    return this.send("rename_group", { id: pk, title });
  }
}

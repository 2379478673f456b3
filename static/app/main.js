// The web client: signed-out forms, the conversation list, a conversation,
// groups. Roles and accessible names follow docs/WEBCLIENT.md; message text is
// always rendered as text (Preact escapes it), never as HTML.

import { h, render } from "./vendor/preact.module.js";
import {
  useEffect,
  useLayoutEffect,
  useMemo,
  useReducer,
  useRef,
  useState,
} from "./vendor/hooks.module.js";
import htm from "./vendor/htm.module.js";
import * as api from "./api.js";
import { memo } from "./memo.js";
import { Chat, MAX_CONTENT, REACTIONS, UNREAD_WINDOW, changeParts, unreadText } from "./chat.js";
import { SearchBox, SearchResults } from "./search.js";
import { BellOff, Paperclip } from "./icons.js";
import { Files, MAX_FILES, Tray, textOf, upload } from "./files.js";
import {
  EnableNotifications,
  notifyMessage,
  onPushClick,
  showUnread,
  subscribePush,
  unsubscribePush,
} from "./notify.js";

const html = htm.bind(h);
const SESSION_KEY = "chat.session";

function loadSession() {
  try {
    const session = JSON.parse(localStorage.getItem(SESSION_KEY));
    return session?.token && session?.user ? session : null;
  } catch {
    return null;
  }
}

function fullName(user) {
  return `${user.first_name || ""} ${user.last_name || ""}`.trim() || user.username;
}

/** "1 member", "3 members". */
function count(n, one, many = `${one}s`) {
  return `${n} ${n === 1 ? one : many}`;
}

// The formats of times and dates, made once: `toLocaleTimeString` and its
// kin build a formatter on every call, and a conversation's list formats
// every message's time again on each render (a burst of 120 messages took
// the browser 10 s, half of it in those calls).
const DAY = new Intl.DateTimeFormat([], { weekday: "long", month: "long", day: "numeric" });
const DAY_AND_YEAR = new Intl.DateTimeFormat([], { weekday: "long", month: "long", day: "numeric", year: "numeric" });
const CLOCK = new Intl.DateTimeFormat([], { hour: "2-digit", minute: "2-digit" });
// `toLocaleString()`'s own fields, spelled out (a bare formatter shows the date only).
const FULL_TIME = new Intl.DateTimeFormat([], {
  year: "numeric", month: "numeric", day: "numeric", hour: "numeric", minute: "numeric", second: "numeric",
});

/** A day separator's words: "Today", "Yesterday", or the date. */
function dayLabel(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  const day = (d) => new Date(d.getFullYear(), d.getMonth(), d.getDate()).getTime();
  const days = Math.round((day(new Date()) - day(date)) / 86_400_000);
  if (days === 0) return "Today";
  if (days === 1) return "Yesterday";
  const sameYear = date.getFullYear() === new Date().getFullYear();
  return (sameYear ? DAY : DAY_AND_YEAR).format(date);
}

const dayOf = (iso) => new Date(iso).toDateString();

/** Text with its http(s) links made clickable, as text and <a> elements:
 *  never HTML, never another scheme. */
const LINK = /\bhttps?:\/\/[^\s<>"]+/g;
function linked(text) {
  const parts = [];
  let last = 0;
  for (const match of text.matchAll(LINK)) {
    // Closing punctuation after a link belongs to the sentence.
    const url = match[0].replace(/[.,;:!?)\]'"]+$/, "");
    parts.push(text.slice(last, match.index));
    parts.push(html`<a href=${url} target="_blank" rel="noopener noreferrer">${url}</a>`);
    last = match.index + url.length;
  }
  parts.push(text.slice(last));
  return parts;
}

function clock(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime())
    ? ""
    : CLOCK.format(date);
}

/** A ref whose element gets the focus when it appears (the `autofocus`
 *  attribute works only while a page loads, not for a panel opened later).
 *  `key` moves it again when it changes (login ↔ create account). */
function useFocus(key) {
  const ref = useRef(null);
  useEffect(() => ref.current?.focus(), [key]);
  return ref;
}

// --- signed out -----------------------------------------------------------

function SignedOut({ onSignedIn, notice }) {
  const [mode, setMode] = useState("login");
  const [error, setError] = useState(notice || null);
  const [busy, setBusy] = useState(false);
  const first = useFocus(mode);

  async function submit(event, action) {
    event.preventDefault();
    const fields = Object.fromEntries(new FormData(event.target));
    setBusy(true);
    setError(null);
    try {
      const answer = await action(fields);
      onSignedIn({ token: answer.token, user: answer.data });
    } catch (e) {
      setError(e.message);
    } finally {
      setBusy(false);
    }
  }

  const login = (fields) => api.login(fields.username, fields.password);
  const register = (fields) => api.register(fields);

  return html`
    <main class="auth">
      <h1>Chat</h1>
      ${mode === "login"
        ? html`
            <form onSubmit=${(e) => submit(e, login)}>
              <label>Username <input name="username" autocomplete="username" required ref=${first} /></label>
              <label>Password
                <input name="password" type="password" autocomplete="current-password" required />
              </label>
              <button type="submit" disabled=${busy}>Log in</button>
            </form>
            <p>
              New here?
              <button type="button" class="link" onClick=${() => (setMode("register"), setError(null))}>
                Create account
              </button>
            </p>
          `
        : html`
            <form onSubmit=${(e) => submit(e, register)}>
              <label>Username <input name="username" autocomplete="username" required ref=${first} /></label>
              <label>Password
                <input name="password" type="password" autocomplete="new-password" required minlength="8" />
              </label>
              <label>First name <input name="first_name" autocomplete="given-name" /></label>
              <label>Last name <input name="last_name" autocomplete="family-name" /></label>
              <label>Email <input name="email" type="email" autocomplete="email" /></label>
              <button type="submit" disabled=${busy}>Create account</button>
            </form>
            <p>
              Have an account?
              <button type="button" class="link" onClick=${() => (setMode("login"), setError(null))}>
                Back to log in
              </button>
            </p>
          `}
      ${error && html`<p role="alert" class="error">${error}</p>`}
    </main>
  `;
}

// --- the conversation list ------------------------------------------------

function ConversationItem({ chat, conversation, open, handle }) {
  const last = conversation.last_message;
  return html`
    <li role="listitem" class=${open ? "item open" : "item"}>
      <button
        type="button"
        class="conversation-button"
        aria-current=${open ? "true" : undefined}
        onClick=${() => chat.openConversation(conversation.pk)}
      >
        <span class="name">${conversation.name}</span>
        ${handle && html` <span class="handle">@${handle}</span>`}
        ${conversation.online && chat.state.status === "connected" && html` <span class="online">Online</span>`}
        ${conversation.muted && html` <span class="muted" title="Muted"><${BellOff} /><span class="hidden"> Muted</span></span>`}
        ${conversation.unread > 0 &&
        html` <span class=${conversation.muted ? "unread quiet" : "unread"}>${unreadText(conversation.unread)}<span class="hidden"> unread</span></span>`}
        <span class="last">${last ? ` ${last.deleted ? "Message deleted" : last.content}` : ""}</span>
      </button>
    </li>
  `;
}

function AddContact({ chat, session, done }) {
  const first = useFocus();
  const [error, setError] = useState(null);
  async function submit(event) {
    event.preventDefault();
    const username = new FormData(event.target).get("username");
    try {
      const contact = await api.addContact(session.token, username);
      chat.upsertConversation(contact, contact.unread);
      chat.openConversation(contact.pk);
      done();
    } catch (e) {
      // A token the server no longer accepts: back to sign-in, as the socket does.
      if (e.status === 401) chat.onSignedOut("Your session ended. Please log in again.");
      else setError(e.message);
    }
  }
  return html`
    <form class="panel" onSubmit=${submit} onKeyDown=${(e) => e.key === "Escape" && done()}>
      <label>Username <input name="username" required ref=${first} /></label>
      <button type="submit">Add</button>
      <button type="button" class="link" onClick=${done}>Cancel</button>
      ${error && html`<p role="alert" class="error">${error}</p>`}
    </form>
  `;
}

/** Checkboxes of the person's direct contacts, named by their full names. */
function ContactPicker({ chat, exclude = [] }) {
  const contacts = chat
    .sortedConversations()
    .filter((c) => c.kind === "direct" && c.user_id != null && !exclude.includes(c.user_id));
  if (!contacts.length) return html`<p class="hint">No contacts to add yet.</p>`;
  return html`
    <fieldset>
      <legend>Members</legend>
      ${contacts.map(
        (c) => html`<label class="check" key=${c.pk}>
          <input type="checkbox" name="member" value=${c.user_id} /> <bdi>${c.name}</bdi>
        </label>`
      )}
    </fieldset>
  `;
}

function picked(form) {
  return new FormData(form).getAll("member").map(Number);
}

function NewGroup({ chat, done }) {
  const first = useFocus();
  function submit(event) {
    event.preventDefault();
    const title = new FormData(event.target).get("title");
    if (chat.createGroup(title, picked(event.target))) done();
  }
  return html`
    <form class="panel" onSubmit=${submit} onKeyDown=${(e) => e.key === "Escape" && done()}>
      <label>Title <input name="title" required maxlength="100" dir="auto" ref=${first} /></label>
      <${ContactPicker} chat=${chat} />
      <button type="submit">Create group</button>
      <button type="button" class="link" onClick=${done}>Cancel</button>
    </form>
  `;
}

// --- a conversation -------------------------------------------------------

/** The full date and time, for a title. */
function fullTime(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? "" : FULL_TIME.format(date);
}

/** A message's time: the clock, and the full date and time on hover
 *  (`title`) or, where there is no hover (a phone), on a tap. */
function Time({ iso }) {
  const [full, setFull] = useState(false);
  return html`<time datetime=${iso} title=${fullTime(iso)} onClick=${() => setFull(!full)}>
    ${full ? fullTime(iso) : clock(iso)}
  </time>`;
}

/** A question before something that cannot be undone: an alertdialog
 *  named `label`, Cancel focused (Enter on the first key press does no
 *  harm), Escape cancels. */
function Confirm({ label, question, action, onConfirm, onCancel }) {
  const box = useRef(null);
  const cancel = useRef(null);
  // Before the first paint (a layout effect, not an effect): no frame
  // shows the question cut off, and nothing measured after the click that
  // asked can find it so.
  useLayoutEffect(() => {
    cancel.current?.focus();
    // The whole question in sight, not only the button the focus is on.
    box.current?.scrollIntoView({ block: "nearest" });
  }, []);
  return html`<div class="confirm" role="alertdialog" aria-label=${label} ref=${box}
      onKeyDown=${(e) => e.key === "Escape" && onCancel()}>
    <span>${question}</span>
    <button type="button" class="danger" onClick=${onConfirm}>${action}</button>
    <button type="button" ref=${cancel} onClick=${onCancel}>Cancel</button>
  </div>`;
}

/** What a reply shows of the message it answers; a click jumps to it. */
function Quote({ quote, author, onJump }) {
  const text = quote.content || "Message deleted";
  return html`
    <button type="button" class="quote" onClick=${onJump}>
      <span class="hidden">Go to the original from </span><span class="quote-author"><bdi>${author}</bdi>:</span>${" "}
      <span class=${quote.content ? "quote-text" : "quote-text deleted"}>${text}</span>
    </button>
  `;
}

/** One message: its text (or "Message deleted"), a reply's quote, its
 *  reactions (click to toggle yours), and what the person may do with it.
 *  Drawn again only when a prop changes (`memo`): `message` is a new
 *  object whenever the message changes (chat.js never changes one in
 *  place), and `actions` is the same object for the conversation's life. */
const Message = memo(function Message({ chat, token, message, read, sender, quoteAuthor, canDelete, editing, actions }) {
  const [picking, setPicking] = useState(false);
  const [confirming, setConfirming] = useState(false);
  const own = message.direction === "send";
  const reactions = message.reactions || [];
  if (message.deleted) {
    return html`
      <div class="message deleted" id=${`m-${message.id}`} data-direction=${message.direction} tabindex="-1">
        ${sender && html`<span class="sender">${sender}</span>`}
        <span class="text">Message deleted</span>
        <span class="meta"><${Time} iso=${message.time} /></span>
      </div>
    `;
  }
  return html`
    <div
      class=${editing ? "message editing" : "message"}
      id=${`m-${message.id}`}
      data-direction=${message.direction}
      tabindex="-1"
      aria-current=${editing ? "true" : undefined}
    >
      ${sender && html`<span class="sender">${sender}</span>`}
      ${message.quote &&
      html`<${Quote} quote=${message.quote} author=${quoteAuthor} onJump=${() => actions.jump(message.reply_to)} />`}
      ${textOf(message) && html`<span class="text">${linked(textOf(message))}</span>`}
      <${Files} files=${message.attachments} token=${token} />
      <span class="meta">
        <${Time} iso=${message.time} />
        ${message.edited_at && html` <span class="edited" title=${fullTime(message.edited_at)}>edited</span>`}
        ${read && html` <span class="read">Read</span>`}
      </span>
      ${reactions.length > 0 &&
      html`<div class="reactions" role="group" aria-label="Reactions">
        ${reactions.map(
          (r) => html`<button
            type="button"
            key=${r.emoji}
            class=${r.mine ? "reaction mine" : "reaction"}
            aria-pressed=${r.mine ? "true" : "false"}
            onClick=${() => chat.toggleReaction(message, r.emoji)}
          >${r.emoji} ${r.count}</button>`
        )}
      </div>`}
      <div class="message-actions">
        <button type="button" class="link" onClick=${() => actions.reply(message)}>Reply</button>
        <button type="button" class="link" aria-expanded=${picking ? "true" : "false"} onClick=${() => setPicking(!picking)}>
          React
        </button>
        ${own && html`<button type="button" class="link" onClick=${() => actions.edit(message)}>Edit</button>`}
        ${canDelete && html`<button type="button" class="link" onClick=${() => setConfirming(true)}>Delete</button>`}
      </div>
      ${picking &&
      html`<div class="picker" role="group" aria-label="Pick a reaction">
        ${REACTIONS.map(
          (emoji) => html`<button
            type="button"
            key=${emoji}
            aria-label=${`React with ${emoji}`}
            onClick=${() => {
              chat.toggleReaction(message, emoji);
              setPicking(false);
            }}
          >${emoji}</button>`
        )}
        <${OtherEmoji} onPick=${(emoji) => (chat.addReaction(message, emoji), setPicking(false))} />
      </div>`}
      ${confirming &&
      html`<${Confirm}
        label="Delete for everyone?"
        question="Delete it for everyone?"
        action="Delete"
        onConfirm=${() => (chat.deleteMessage(message.id), setConfirming(false))}
        onCancel=${() => setConfirming(false)}
      />`}
    </div>
  `;
});

/** Any other emoji, typed or chosen with the system's emoji keyboard; the
 *  server says so if it is not exactly one. */
function OtherEmoji({ onPick }) {
  const [text, setText] = useState("");
  const submit = (event) => {
    event.preventDefault();
    const emoji = text.trim();
    if (emoji) onPick(emoji);
  };
  return html`
    <form class="other-emoji" onSubmit=${submit}>
      <input
        aria-label="Other emoji"
        placeholder="🙂"
        autocomplete="off"
        size="3"
        maxlength="32"
        value=${text}
        onInput=${(e) => setText(e.target.value)}
      />
      <button type="submit" class="link">Add</button>
    </form>
  `;
}

function Pending({ chat, pk, item }) {
  return html`
    <div class="message pending" data-direction="send" data-state=${item.status}>
      ${item.typed !== false && html`<span class="text">${item.content}</span>`}
      ${item.attachments?.length > 0 &&
      html`<span class="text files-pending">${item.attachments.map((f) => f.name).join(", ")}</span>`}
      <span class="meta">
        <time datetime=${item.time}>${clock(item.time)}</time>
        ${item.status === "failed"
          ? html` <span>Not sent</span>
              <button type="button" class="link" onClick=${() => chat.retry(pk, item.client_id)}>Retry</button>`
          : html` <span>Sending…</span>`}
      </span>
    </div>
  `;
}

/** A member's name, with their username when another member has the same
 *  name: a copied display name cannot pass for someone else. */
function shownName(member, members) {
  const twins = members.filter((m) => m.name === member.name).length;
  return twins > 1 ? `${member.name} (@${member.username})` : member.name;
}

function GroupSettings({ chat, pk }) {
  const details = chat.state.details.get(pk);
  // Who is about to be removed (the person themselves: leaving), asked first.
  const [removing, setRemoving] = useState(null);
  if (!details) return html`<p class="hint">Loading members…</p>`;
  const me = chat.me.id;
  const owner = details.members.find((m) => m.role === "owner");
  const inGroup = details.members.map((m) => m.user_id);
  const addable = chat
    .sortedConversations()
    .some((c) => c.kind === "direct" && c.user_id != null && !inGroup.includes(c.user_id));
  function rename(event) {
    event.preventDefault();
    chat.renameGroup(pk, new FormData(event.target).get("title"));
  }
  function add(event) {
    event.preventDefault();
    const members = picked(event.target);
    if (members.length) chat.addMembers(pk, members);
    event.target.reset();
  }
  return html`
    <section class="panel settings" aria-label="Group settings">
      <form onSubmit=${rename}>
        <label>Group name <input name="title" required maxlength="100" dir="auto" value=${details.name} /></label>
        <button type="submit">Rename</button>
      </form>
      <h3>Members</h3>
      <ul class="members">
        ${details.members.map(
          (m) => html`<li key=${m.user_id}>
            <bdi>${shownName(m, details.members)}</bdi> ${m.role === "owner" ? html`<em>(owner)</em>` : ""}
            ${m.online ? html` <span class="online">Online</span>` : ""}
            ${owner?.user_id === me && m.user_id !== me &&
            html` <button type="button" class="link" onClick=${() => setRemoving(m)}>
              Remove<span class="hidden"> ${m.name}</span>
            </button>`}
          </li>`
        )}
      </ul>
      <form onSubmit=${add}>
        <${ContactPicker} chat=${chat} exclude=${inGroup} />
        ${addable && html`<button type="submit">Add members</button>`}
      </form>
      <button type="button" class="danger" onClick=${() => setRemoving({ user_id: me })}>Leave group</button>
      ${removing &&
      (removing.user_id === me
        ? html`<${Confirm}
            label=${`Leave ${details.name}?`}
            question=${`Leave ${details.name}? You will need to be added again to come back.`}
            action="Leave"
            onConfirm=${() => (chat.removeMember(pk, me), setRemoving(null))}
            onCancel=${() => setRemoving(null)}
          />`
        : html`<${Confirm}
            label=${`Remove ${removing.name}?`}
            question=${`Remove ${shownName(removing, details.members)} from ${details.name}?`}
            action="Remove"
            onConfirm=${() => (chat.removeMember(pk, removing.user_id), setRemoving(null))}
            onCancel=${() => setRemoving(null)}
          />`)}
    </section>
  `;
}

function Conversation({ chat, pk }) {
  const conversation = chat.state.conversations.get(pk);
  const log = chat.state.messages.get(pk);
  const pending = chat.state.pending.get(pk) || [];
  // A draft stays with its conversation when switching: kept in `Chat`.
  const [, redraw] = useReducer((n) => n + 1, 0);
  const draft = chat.drafts.get(pk) || "";
  const setDraft = (text) => {
    if (text) chat.drafts.set(pk, text);
    else chat.drafts.delete(pk);
    redraw();
  };
  const [settings, setSettings] = useState(false);
  const [error, setError] = useState(null);
  const [replyTo, setReplyTo] = useState(null);
  const [editing, setEditing] = useState(null);
  const [jumpTo, setJumpTo] = useState(null);
  const [dragging, setDragging] = useState(false);
  const uploads = chat.uploads.get(pk) || [];
  const input = useRef(null);
  const picker = useRef(null);
  const box = useRef(null);
  const pinned = useRef(true);
  const before = useRef(null);
  const items = log?.items || [];
  const newest = items.length ? items[items.length - 1].id : 0;

  // Keep the view at the bottom for new messages, and in place when an
  // older page is added above.
  useLayoutEffect(() => {
    const element = box.current;
    if (!element) return;
    if (before.current) {
      element.scrollTop += element.scrollHeight - before.current;
      before.current = null;
    } else if (pinned.current) {
      element.scrollTop = element.scrollHeight;
    }
  });

  // Read marks: sent when the newest message is on screen and the page is visible.
  useEffect(() => {
    const seen = () => {
      if (document.visibilityState === "visible" && pinned.current) chat.markSeen(pk);
    };
    seen();
    document.addEventListener("visibilitychange", seen);
    return () => document.removeEventListener("visibilitychange", seen);
  }, [pk, newest, conversation?.unread]);


  // The first unread message when the conversation was opened: the "New
  // messages" divider stands above it until another conversation is opened.
  const firstUnread = useRef({ pk: null, id: null });
  if (firstUnread.current.pk !== pk && log?.loaded) {
    let left = conversation?.unread || 0;
    let id = null;
    for (let i = items.length - 1; i >= 0 && left > 0; i -= 1) {
      if (items[i].direction === "received") {
        left -= 1;
        id = items[i].id;
      }
    }
    firstUnread.current = { pk, id };
  }

  // New messages below while the person reads further up: a button says so.
  const [newBelow, setNewBelow] = useState(false);
  const shownNewest = useRef(newest);
  useEffect(() => {
    if (newest !== shownNewest.current && !pinned.current && shownNewest.current) setNewBelow(true);
    shownNewest.current = newest;
  }, [newest]);

  useEffect(() => {
    pinned.current = true;
    setNewBelow(false);
    setSettings(false);
    setError(null);
    setReplyTo(null);
    setEditing(null);
    setJumpTo(null);
  }, [pk]);

  // A search result opened this conversation at one of its messages.
  useEffect(() => {
    const jump = chat.state.jump;
    if (jump && jump.pk === pk) {
      chat.state.jump = null;
      pinned.current = false;
      setJumpTo(jump.id);
    }
  });

  // Jumping to a message (a search result, a replied-to message): shown
  // if loaded; if not, the history around it loads first (once: a message
  // that is not there any more ends the jump).
  const around = useRef(null);
  useEffect(() => {
    if (jumpTo == null) return;
    const target = document.getElementById(`m-${jumpTo}`);
    if (target) {
      pinned.current = false;
      target.scrollIntoView({ block: "center" });
      target.classList.add("flash");
      target.focus({ preventScroll: true });
      setTimeout(() => target.classList.remove("flash"), 1500);
      around.current = null;
      setJumpTo(null);
    } else if (around.current !== jumpTo) {
      around.current = jumpTo;
      chat.loadAround(pk, jumpTo);
    } else if (log?.loaded && !chat.history.has(pk) && !log.items.some((m) => m.id === jumpTo)) {
      // The log is read as it is now, which may be ahead of what this
      // render showed: the message may be there, to be shown next render.
      around.current = null;
      setJumpTo(null);
    }
  });

  if (!conversation) return null;

  function onScroll() {
    const element = box.current;
    const bottom = element.scrollHeight - element.scrollTop - element.clientHeight < 40;
    pinned.current = bottom && !log?.hasNewer;
    if (pinned.current) {
      chat.markSeen(pk);
      setNewBelow(false);
    }
    if (bottom && log?.hasNewer) chat.loadNewer(pk);
    // Kept in place when the page above comes (only then: a page below
    // coming meanwhile must not move the view).
    if (element.scrollTop < 40 && chat.loadOlder(pk)) before.current = element.scrollHeight;
  }

  function showLatest() {
    pinned.current = true;
    setNewBelow(false);
    if (!log?.hasNewer && box.current) box.current.scrollTop = box.current.scrollHeight;
    chat.showLatest(pk);
    box.current?.focus();
  }

  /** Starts uploading `files` for the next message (chosen, dropped or pasted). */
  function attach(files) {
    const list = chat.uploads.get(pk) || [];
    const room = MAX_FILES - list.length;
    if (files.length > room) setError(`A message carries at most ${MAX_FILES} files.`);
    for (const file of [...files].slice(0, Math.max(0, room))) {
      const entry = { key: `${Date.now()}-${Math.random()}`, status: "uploading", progress: 0 };
      const started = upload(chat.session.token, file, (share) => {
        entry.progress = share;
        chat.changed();
      });
      Object.assign(entry, { name: started.name, size: started.size, cancel: started.cancel });
      started.promise.then(
        (answer) => Object.assign(entry, { status: "done", file: answer }),
        (e) => Object.assign(entry, { status: "failed", error: e.cancelled ? null : e.message })
      ).finally(() => {
        if (entry.status === "failed" && !entry.error) removeUpload(entry);
        chat.changed();
      });
      list.push(entry);
    }
    chat.uploads.set(pk, list);
    chat.changed();
  }

  function removeUpload(entry) {
    if (entry.status === "uploading") entry.cancel();
    const rest = (chat.uploads.get(pk) || []).filter((u) => u !== entry);
    if (rest.length) chat.uploads.set(pk, rest);
    else chat.uploads.delete(pk);
    chat.changed();
  }

  function submit(event) {
    event.preventDefault();
    if (!editing && uploads.some((u) => u.status === "uploading")) {
      setError("Wait for the files to finish uploading.");
      return;
    }
    const files = editing ? [] : uploads.filter((u) => u.status === "done").map((u) => u.file);
    const problem = editing
      ? chat.editMessage(editing.id, draft)
      : chat.sendMessage(pk, draft, replyTo?.id ?? null, files);
    setError(problem);
    if (!problem) {
      if (!editing) chat.uploads.delete(pk);
      setDraft("");
      setReplyTo(null);
      setEditing(null);
      if (!editing) pinned.current = true;
    }
  }

  // One object per conversation (state setters and refs do not change), so
  // that a message is not drawn again for a new one (`memo`).
  const actions = useMemo(
    () => ({
      reply(message) {
        setEditing(null);
        setReplyTo(message);
        input.current?.focus();
      },
      edit(message) {
        setReplyTo(null);
        setEditing(message);
        setDraft(message.content);
        input.current?.focus();
      },
      jump(id) {
        pinned.current = false;
        setJumpTo(id);
      },
    }),
    [pk]
  );

  function cancelCompose() {
    if (editing) setDraft("");
    setReplyTo(null);
    setEditing(null);
  }

  // The text of the message being answered as it is now (an edit made
  // meanwhile is a new object in the log, not a change to `replyTo`).
  const replyText = replyTo ? (items.find((m) => m.id === replyTo.id) ?? replyTo).content.slice(0, 200) : "";
  const readUpTo = chat.state.readUpTo.get(pk) || 0;
  const lastReadOwn = [...items]
    .reverse()
    .find((m) => m.direction === "send" && m.id <= readUpTo)?.id;
  const details = chat.state.details.get(pk);
  const nameOf = (id) => {
    const member = details?.members.find((m) => m.user_id === id);
    return member ? shownName(member, details.members) : "";
  };
  const group = conversation.kind === "group";
  const owner = group && details?.members.some((m) => m.user_id === chat.me.id && m.role === "owner");
  const authorOf = (id) => (id === chat.me.id ? "You" : nameOf(id) || (group ? "Someone" : conversation.name));
  const blocked = !group && chat.state.blocked.has(conversation.user_id);
  const handle = !group && chat.collidingNames().has(conversation.name) ? conversation.username : null;
  // While reconnecting, who is online or typing is not known: not shown.
  const connected = chat.state.status === "connected";
  const typists = connected ? chat.typists(pk).map(nameOf).filter(Boolean) : [];
  const length = [...draft].length;

  // The log's rows, one flat keyed list: the messages and a group's
  // changes (C20) in time order, a separator at each new day, and the
  // "New messages" divider.
  const changes = chat.state.changes.get(pk) || [];
  let next = 0;
  // Changes older than the first message loaded belong to older pages.
  while (log?.hasOlder && items.length && next < changes.length && changes[next].time < items[0].time) next += 1;
  const entries = [];
  for (const m of items) {
    while (next < changes.length && changes[next].time <= m.time) entries.push({ change: changes[next], index: next++ });
    entries.push({ message: m });
  }
  // Changes after the newest message loaded, unless newer messages follow.
  while (!log?.hasNewer && next < changes.length) entries.push({ change: changes[next], index: next++ });
  const rows = [];
  let day = null;
  for (const { message: m, change, index } of entries) {
    const time = m ? m.time : change.time;
    if (dayOf(time) !== day) {
      day = dayOf(time);
      rows.push(html`<p class="day" key=${`d-${day}`}><span>${dayLabel(time)}</span></p>`);
    }
    if (change) {
      const words = changeParts(change, chat.me.id).map((part) =>
        typeof part === "string" ? part : html`<bdi>${part.name}</bdi>`
      );
      rows.push(html`<p class="notice" key=${`c-${index}-${time}`}>${words}</p>`);
      continue;
    }
    if (m.id === firstUnread.current.id) rows.push(html`<p class="divider" key="new"><span>New messages</span></p>`);
    rows.push(html`<${Message}
      key=${m.id}
      chat=${chat}
      message=${m}
      read=${m.id === lastReadOwn}
      sender=${group && m.direction === "received" ? nameOf(m.sender) : null}
      quoteAuthor=${m.quote ? authorOf(m.quote.sender) : null}
      token=${chat.session.token}
      canDelete=${m.direction === "send" || owner}
      editing=${m.id === editing?.id}
      actions=${actions}
    />`);
  }

  return html`
    <section
      class=${dragging ? "chat dropping" : "chat"}
      aria-label=${conversation.name}
      onDragOver=${(e) => {
        if (editing || !e.dataTransfer?.types.includes("Files")) return;
        e.preventDefault();
        setDragging(true);
      }}
      onDragLeave=${(e) => e.currentTarget === e.target && setDragging(false)}
      onDrop=${(e) => {
        if (!e.dataTransfer?.files.length) return;
        e.preventDefault();
        setDragging(false);
        if (!editing) attach(e.dataTransfer.files);
      }}
    >
      <header class="chat-head">
        <button type="button" class="back" onClick=${() => chat.closeConversation()}>
          <span aria-hidden="true">←</span><span class="hidden">Back to conversations</span>
        </button>
        <h2 title=${conversation.name}>${conversation.name}</h2>
        ${handle && html`<span class="handle">@${handle}</span>`}
        <span class="head-actions">
          ${group
            ? html`<span class="hint">${count(conversation.members, "member")}</span>
                <button type="button" aria-expanded=${settings} onClick=${() => setSettings(!settings)}>
                  Group settings
                </button>`
            : html`${conversation.online && connected && html`<span class="online">Online</span>`}
                <button type="button" class="link" onClick=${() => chat.setBlocked(conversation.user_id, !blocked)}>
                  ${blocked ? "Unblock" : "Block"}<span class="hidden"> ${conversation.name}</span>
                </button>`}
          <button
            type="button"
            class="link"
            aria-pressed=${conversation.muted ? "true" : "false"}
            onClick=${() => chat.setMuted(pk, !conversation.muted)}
          >
            ${conversation.muted && html`<${BellOff} /> `}Mute
          </button>
        </span>
      </header>
      ${blocked &&
      html`<p class="hint blocked">You blocked ${conversation.name}: neither of you can write here until you unblock them.</p>`}
      ${settings && html`<${GroupSettings} chat=${chat} pk=${pk} />`}
      <div class="log" role="log" aria-label="History" ref=${box} onScroll=${onScroll} tabindex="0">
        ${log?.hasOlder && html`<p class="hint">Scroll up for older messages</p>`}
        ${!log?.loaded && html`<p class="hint">Loading…</p>`}
        ${rows}
        ${log?.hasNewer && log.loaded && html`<p class="hint">Scroll down for newer messages</p>`}
        ${pending.map((item) => html`<${Pending} key=${item.client_id} chat=${chat} pk=${pk} item=${item} />`)}
      </div>
      ${(log?.hasNewer || newBelow) &&
      html`<button type="button" class="latest" onClick=${showLatest}>Jump to latest</button>`}
      <p class="typing" aria-live="polite">
        ${typists.length > 0 &&
        html`<span class="typist">${typists.join(", ")}</span> <span>typing…</span>`}
      </p>
      ${(replyTo || editing) &&
      html`<div class="compose-context">
        <span>
          ${editing ? "Editing your message" : html`Replying to ${authorOf(replyTo.sender)}: <span class="quote-text">${replyText}</span>`}
        </span>
        <button type="button" class="link" onClick=${cancelCompose}>${editing ? "Cancel edit" : "Cancel reply"}</button>
      </div>`}
      <${Tray} uploads=${uploads} onRemove=${removeUpload} />
      <form class="compose" onSubmit=${submit}>
        ${!editing &&
        html`<button type="button" class="attach" aria-label="Attach file" title="Attach file" onClick=${() => picker.current?.click()}>
            <${Paperclip} />
          </button>
          <input
            ref=${picker}
            type="file"
            multiple
            hidden
            tabindex="-1"
            onChange=${(e) => {
              attach(e.target.files);
              e.target.value = "";
            }}
          />`}
        <textarea
          ref=${input}
          aria-label="Message"
          placeholder="Message"
          dir="auto"
          autocomplete="off"
          rows=${Math.min(6, draft.split("\n").length)}
          value=${draft}
          aria-invalid=${length > MAX_CONTENT ? "true" : undefined}
          onKeyDown=${(e) => {
            if (e.key === "Escape" && (replyTo || editing)) cancelCompose();
            // Up in an empty composer edits one's last message, as its Edit
            // does (not while older history is shown without the newest).
            if (e.key === "ArrowUp" && !draft && !editing && !replyTo && !uploads.length && !log?.hasNewer &&
                !e.isComposing && !(e.shiftKey || e.altKey || e.ctrlKey || e.metaKey)) {
              const last = [...items].reverse().find((m) => m.direction === "send" && !m.deleted);
              if (last) {
                e.preventDefault();
                actions.edit(last);
              }
            }
            // Enter sends; Shift+Enter (or Enter while composing with an IME) is a new line.
            if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
              e.preventDefault();
              e.target.form.requestSubmit();
            }
          }}
          onInput=${(e) => {
            setDraft(e.target.value);
            if (e.target.value && !editing) chat.typingNow(pk);
          }}
          onPaste=${(e) => {
            // A pasted image (a screenshot) is a file to send.
            if (editing || !e.clipboardData?.files.length) return;
            e.preventDefault();
            attach(e.clipboardData.files);
          }}
        ></textarea>
        <button type="submit">${editing ? "Save" : "Send"}</button>
      </form>
      ${length > MAX_CONTENT - 500 &&
      html`<p class=${length > MAX_CONTENT ? "count over" : "count"} aria-live="polite">
        ${length} / ${MAX_CONTENT} characters${length > MAX_CONTENT ? ": too long to send" : ""}
      </p>`}
      ${error && html`<p role="alert" class="error">${error}</p>`}
    </section>
  `;
}

/** Who invited, and how big the group is: "from Ann Lee (@ann) · 3 members". */
function invitationText({ invited_by: by, members }) {
  const size = count(members, "member");
  return by ? `from ${by.name} (@${by.username}) · ${size}` : size;
}

/** Invitations to groups (people who never wrote to the inviter are asked
 *  first): accept to join, decline to be left out for good. */
function Invitations({ chat }) {
  const invitations = chat.sortedInvitations();
  if (!invitations.length) return null;
  return html`
    <section class="panel invitations" aria-label="Invitations">
      <h2>Invitations</h2>
      <ul role="list" aria-label="Invitations">
        ${invitations.map(
          (i) => html`<li key=${i.pk}>
            <strong>${i.name}</strong>
            <span class="hint">${invitationText(i)}</span>
            <span class="choices">
              <button type="button" onClick=${() => chat.acceptInvitation(i.pk)}>
                Accept<span class="hidden"> ${i.name}</span>
              </button>
              <button type="button" class="link" onClick=${() => chat.declineInvitation(i.pk)}>
                Decline<span class="hidden"> ${i.name}</span>
              </button>
            </span>
          </li>`
        )}
      </ul>
    </section>
  `;
}

// --- signed in ------------------------------------------------------------

/** Signs out every device of the person (a lost phone): asks first. */
function SignOutEverywhere({ session, onSignOut }) {
  const [asking, setAsking] = useState(false);
  const [error, setError] = useState(null);
  async function signOutAll() {
    try {
      await api.signOutEverywhere(session.token);
      onSignOut("You signed out on every device.");
    } catch (e) {
      setError(e.message);
    }
  }
  return html`
    <div class="everywhere">
      ${asking
        ? html`<${Confirm}
            label="Sign out all devices?"
            question="Sign out on every device, this one too?"
            action="Sign out everywhere"
            onConfirm=${signOutAll}
            onCancel=${() => setAsking(false)}
          />`
        : html`<button type="button" class="link" onClick=${() => setAsking(true)}>Sign out all devices</button>`}
      ${error && html`<p role="alert" class="error">${error}</p>`}
    </div>
  `;
}

/** The person's account: change the password (A1 `POST /api/password/`;
 *  every other device is signed out, this one goes on with the new token),
 *  and sign out every device. */
function Account({ session, onToken, onSignOut, done }) {
  const first = useFocus();
  const [error, setError] = useState(null);
  const [changed, setChanged] = useState(false);
  async function submit(event) {
    event.preventDefault();
    const fields = Object.fromEntries(new FormData(event.target));
    setError(null);
    try {
      const { token } = await api.changePassword(session.token, fields.old_password, fields.new_password);
      event.target.reset();
      setChanged(true);
      onToken(token);
    } catch (e) {
      setError(e.message);
    }
  }
  return html`
    <section class="panel account" aria-label="Account" onKeyDown=${(e) => e.key === "Escape" && done()}>
      <h2>Account</h2>
      <form onSubmit=${submit}>
        <label>Current password
          <input name="old_password" type="password" autocomplete="current-password" required ref=${first} />
        </label>
        <label>New password
          <input name="new_password" type="password" autocomplete="new-password" minlength="8" required />
        </label>
        <button type="submit">Change password</button>
      </form>
      ${changed && html`<p role="status" class="hint">Password changed. Your other devices were signed out.</p>`}
      ${error && html`<p role="alert" class="error">${error}</p>`}
      <${SignOutEverywhere} session=${session} onSignOut=${onSignOut} />
      <button type="button" class="link" onClick=${done}>Close</button>
    </section>
  `;
}

/**
 * Revokes this device's token on the server, then forgets it here. The
 * server's answer is not waited for: signing out never hangs on a network
 * that is down (the token then lives until it expires, as before C15).
 */
async function logOut(session, onSignOut) {
  await unsubscribePush(session.token);
  api.signOut(session.token).catch(() => {});
  onSignOut(null);
}

/** The conversation a URL names: `#/c/<pk>`. */
function pkFromHash() {
  return /^#\/c\/([0-9a-f-]{36})$/.exec(location.hash)?.[1] ?? null;
}

/** Each conversation has its own URL: a reload keeps it open, a link
 *  opens it, and the browser's (or phone's) Back returns to the list.
 *  Opening from the list adds a history entry; switching replaces it;
 *  closing in the page goes back to the list's entry. */
function useConversationUrl(chat, open, known) {
  useEffect(() => {
    const follow = () => {
      const pk = pkFromHash();
      if (pk === chat.state.open) return;
      if (!pk) chat.closeConversation();
      else if (chat.state.conversations.has(pk)) chat.openConversation(pk);
    };
    addEventListener("hashchange", follow);
    const stopClicks = onPushClick((pk) => chat.openConversation(pk));
    return () => {
      removeEventListener("hashchange", follow);
      stopClicks();
    };
  }, []);
  // The URL's conversation, once the list says it is one of the person's.
  useEffect(() => {
    const pk = pkFromHash();
    if (pk && !chat.state.open && chat.state.conversations.has(pk)) chat.openConversation(pk);
  }, [known]);
  useEffect(() => {
    const shown = pkFromHash();
    if (open === shown) return;
    // A URL's conversation the list has not shown yet: wait for the list.
    if (!open && !chat.state.conversations.has(shown)) return;
    if (open && !shown) history.pushState({ chat: true }, "", `#/c/${open}`);
    else if (open) history.replaceState({ chat: true }, "", `#/c/${open}`);
    else if (history.state?.chat) history.back();
    else history.replaceState(null, "", location.pathname + location.search);
  }, [open]);
}

function SignedIn({ session, onSignOut, onToken }) {
  const [, rerender] = useReducer((n) => n + 1, 0);
  const chat = useRef(null);
  const [panel, setPanel] = useState(null);
  if (!chat.current) {
    chat.current = new Chat(session, {
      onChange: rerender,
      onSignedOut: (message) => onSignOut(message),
      onNotify: (pk, message) => notifyMessage(chat.current, pk, message),
    });
  }
  useEffect(() => {
    const current = chat.current;
    current.start();
    return () => current.stop();
  }, []);
  const c = chat.current;
  const { status, open, notice } = c.state;
  const conversations = c.sortedConversations();
  useConversationUrl(c, open, conversations.length);
  // Escape closes an open panel (Add contact, New group, Account), wherever the focus is.
  useEffect(() => {
    if (!panel) return undefined;
    const close = (e) => e.key === "Escape" && !e.defaultPrevented && setPanel(null);
    addEventListener("keydown", close);
    return () => removeEventListener("keydown", close);
  }, [panel]);
  useEffect(() => {
    subscribePush(session.token);
  }, []);
  const colliding = c.collidingNames();
  const handleOf = (conversation) =>
    conversation.kind === "direct" && colliding.has(conversation.name) ? conversation.username : null;
  // Muted conversations count in their own item, not in the tab's title.
  const loud = conversations.filter((c) => !c.muted);
  const unread = loud.reduce((sum, c) => sum + c.unread, 0);
  // One count that reached the server's window is a lower bound: so is the sum.
  const atLeast = loud.some((c) => c.unread >= UNREAD_WINDOW);
  useEffect(() => showUnread(unread, atLeast), [unread, atLeast]);
  useEffect(() => () => showUnread(0), []);
  return html`
    <div class=${open ? "shell has-open" : "shell"}>
      <header class="top">
        <h1>Chat</h1>
        <span role="status" class=${status === "connected" ? "status ok" : "status"}>
          ${status === "connected" ? "Connected" : "Reconnecting…"}
        </span>
        <span class="me">${fullName(session.user)}</span>
        <${EnableNotifications} token=${session.token} />
        <button type="button" onClick=${() => logOut(session, onSignOut)}>Log out</button>
      </header>
      <aside class="side">
        <div class="side-actions">
          <button type="button" aria-expanded=${panel === "add"} onClick=${() => setPanel(panel === "add" ? null : "add")}>
            Add contact
          </button>
          <button type="button" aria-expanded=${panel === "group"} onClick=${() => setPanel(panel === "group" ? null : "group")}>
            New group
          </button>
          <button type="button" aria-expanded=${panel === "account"} onClick=${() => setPanel(panel === "account" ? null : "account")}>
            Account
          </button>
        </div>
        ${panel === "add" && html`<${AddContact} chat=${c} session=${session} done=${() => setPanel(null)} />`}
        ${panel === "group" && html`<${NewGroup} chat=${c} done=${() => setPanel(null)} />`}
        ${panel === "account" &&
        html`<${Account} session=${session} onToken=${onToken} onSignOut=${onSignOut} done=${() => setPanel(null)} />`}
        ${notice &&
        (notice.error
          ? html`<p role="alert" class="error">${notice.text}</p>`
          : html`<p role="status" class="info">${notice.text}</p>`)}
        <${Invitations} chat=${c} />
        <${SearchBox} chat=${c} />
        <${SearchResults} chat=${c} />
        ${c.state.search && conversations.length > 0 && html`<p class="caption" aria-hidden="true">Conversations</p>`}
        <ul role="list" aria-label="Conversations" class="conversations">
          ${conversations.map(
            (conversation) => html`<${ConversationItem}
              key=${conversation.pk}
              chat=${c}
              conversation=${conversation}
              open=${conversation.pk === open}
              handle=${handleOf(conversation)}
            />`
          )}
        </ul>
        ${conversations.length === 0 &&
        html`<p class="hint">No conversations yet: add a contact by username.</p>`}
      </aside>
      <main class="main">
        ${open
          ? html`<${Conversation} chat=${c} pk=${open} />`
          : html`<p class="hint empty">Pick a conversation, or add a contact.</p>`}
      </main>
    </div>
  `;
}

function App() {
  const [session, setSession] = useState(loadSession);
  const [notice, setNotice] = useState(null);

  // Several tabs: signing out in one signs out all.
  useEffect(() => {
    const onStorage = (event) => {
      if (event.key === SESSION_KEY) setSession(loadSession());
    };
    addEventListener("storage", onStorage);
    return () => removeEventListener("storage", onStorage);
  }, []);

  function signIn(next) {
    localStorage.setItem(SESSION_KEY, JSON.stringify(next));
    setNotice(null);
    setSession(next);
  }

  function signOut(message) {
    localStorage.removeItem(SESSION_KEY);
    setNotice(message);
    setSession(null);
  }

  return session
    ? html`<${SignedIn}
        key=${session.token}
        session=${session}
        onSignOut=${signOut}
        onToken=${(token) => signIn({ ...session, token })}
      />`
    : html`<${SignedOut} onSignedIn=${signIn} notice=${notice} />`;
}

const root = document.getElementById("app");
root.textContent = "";
render(html`<${App} />`, root);

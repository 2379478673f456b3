// Unit tests of the web client's state logic (static/app/chat.js) with
// Node's own test runner: no browser, no server. The socket is a stand-in
// that records what the client sends; frames from the server are handed to
// `onFrame` as the real socket would.
//
//   node --test e2e/chat.test.mjs

import { mock, test } from "node:test";
import assert from "node:assert/strict";

globalThis.WebSocket = { OPEN: 1 };
globalThis.location = { protocol: "http:", host: "test" };
const { Chat } = await import("../static/app/chat.js");

const ME = { id: 1, username: "me" };
const A = "11111111-1111-1111-1111-111111111111";
const B = "22222222-2222-2222-2222-222222222222";

/** A connected client whose sends are recorded in `sent`. */
function connected() {
  const chat = new Chat({ user: ME, token: "t" }, { onChange() {}, onSignedOut() {} });
  const sent = [];
  chat.socket = { readyState: 1, send: (text) => sent.push(JSON.parse(text)), close() {} };
  chat.onFrame({ type: "authorization_response", data: { status: "success" } });
  sent.length = 0;
  return { chat, sent };
}

const contact = (pk, seq, extra = {}) => ({
  pk,
  name: pk === A ? "Ann" : "Ben",
  online: false,
  user_id: 2,
  username: "other",
  last_message: null,
  unread: 0,
  kind: "direct",
  members: 2,
  seq,
  ...extra,
});

const push = (pk, seq, id, content, direction = "received") => ({
  type: "message",
  data: { pk, seq, data: { direction, content, time: `2026-11-30T10:00:0${seq % 10}.000000+00:00`, id, sender: 2 } },
});

/** Opens `pk` and answers its newest page with `messages`. */
function opened(chat, pk, messages) {
  chat.openConversation(pk);
  chat.onFrame({ type: "get_messages_response", data: { pk, messages, has_more: false } });
}

const item = (id, content) => ({ id, sender: 2, direction: "received", content, time: "t", client_id: null });
const ids = (chat, pk) => chat.state.messages.get(pk).items.map((m) => m.id);

test("live events in order move the conversation's seq and need no sync", () => {
  const { chat, sent } = connected();
  chat.onFrame({ type: "get_contacts_response", data: [contact(A, 1)] });
  opened(chat, A, [item(10, "one")]);
  sent.length = 0;
  chat.onFrame(push(A, 2, 11, "two"));
  chat.onFrame(push(A, 3, 12, "three"));
  assert.equal(chat.state.conversations.get(A).seq, 3);
  assert.deepEqual(ids(chat, A), [10, 11, 12]);
  assert.deepEqual(sent.filter((f) => f.type === "sync"), []);
});

test("a hole in a conversation on screen is synced once, and filled in order", () => {
  const { chat, sent } = connected();
  chat.onFrame({ type: "get_contacts_response", data: [contact(A, 1)] });
  opened(chat, A, [item(10, "one")]);
  sent.length = 0;
  chat.onFrame(push(A, 3, 12, "three"));
  chat.onFrame(push(A, 4, 13, "four"));
  const syncs = sent.filter((f) => f.type === "sync");
  assert.deepEqual(syncs, [{ type: "sync", data: { id: A, after_seq: 1, limit: 200 } }]);
  assert.equal(chat.state.conversations.get(A).seq, 1, "not past the hole");
  // The answer holds the missing event and the ones already shown.
  chat.onFrame({
    type: "sync_response",
    data: { pk: A, events: [push(A, 2, 11, "two"), push(A, 3, 12, "three"), push(A, 4, 13, "four")], seq: 4, has_more: false },
  });
  assert.deepEqual(ids(chat, A), [10, 11, 12, 13], "nothing twice, in order");
  assert.equal(chat.state.conversations.get(A).seq, 4);
  assert.equal(chat.state.conversations.get(A).unread, 2, "only the live ones counted");
});

test("a second hole while a sync is in flight asks again after it", () => {
  const { chat, sent } = connected();
  chat.onFrame({ type: "get_contacts_response", data: [contact(A, 1)] });
  opened(chat, A, [item(10, "one")]);
  sent.length = 0;
  chat.onFrame(push(A, 3, 12, "three"));
  chat.onFrame(push(A, 6, 15, "six"));
  assert.equal(sent.filter((f) => f.type === "sync").length, 1, "one in flight");
  chat.onFrame({
    type: "sync_response",
    data: { pk: A, events: [push(A, 2, 11, "two"), push(A, 3, 12, "three")], seq: 3, has_more: true },
  });
  const syncs = sent.filter((f) => f.type === "sync");
  assert.equal(syncs.length, 2);
  assert.equal(syncs[1].data.after_seq, 3);
});

test("after a reconnect only conversations on screen whose seq grew are synced", () => {
  const { chat, sent } = connected();
  chat.onFrame({ type: "get_contacts_response", data: [contact(A, 1), contact(B, 5)] });
  opened(chat, A, [item(10, "one")]);
  opened(chat, B, [item(20, "b")]);
  chat.onClose({ code: 1006, reason: "" });
  chat.socket = { readyState: 1, send: (text) => sent.push(JSON.parse(text)), close() {} };
  sent.length = 0;
  chat.onFrame({ type: "authorization_response", data: { status: "success" } });
  assert.deepEqual(sent.map((f) => f.type), ["get_contacts", "get_invitations", "get_blocked"], "no history asked again");
  chat.onFrame({ type: "get_contacts_response", data: [contact(A, 3), contact(B, 5)] });
  assert.deepEqual(sent.filter((f) => f.type === "sync"), [
    { type: "sync", data: { id: A, after_seq: 1, limit: 200 } },
  ]);
  clearTimeout(chat.reconnectTimer);
});

test("a message pending when the connection drops is sent again after the reconnect, with its client_id, and shown once", () => {
  const { chat, sent } = connected();
  chat.onFrame({ type: "get_contacts_response", data: [contact(A, 1)] });
  opened(chat, A, [item(10, "one")]);
  chat.sendMessage(A, "are you there?");
  const first = sent.find((f) => f.type === "message");
  assert.equal(first.data.content, "are you there?");
  // The connection drops before the acknowledgement.
  chat.onClose({ code: 1006, reason: "" });
  chat.socket = { readyState: 1, send: (text) => sent.push(JSON.parse(text)), close() {} };
  sent.length = 0;
  chat.onFrame({ type: "authorization_response", data: { status: "success" } });
  const again = sent.filter((f) => f.type === "message");
  assert.deepEqual(again, [first], "the same frame, the same client_id: the server stores it once");
  // The server had stored it before the drop: the resend is answered with
  // the original, and the conversation shows it once.
  const ack = { status: "success", id: 11, pk: A, client_id: first.data.client_id, time: "t2" };
  chat.onFrame({ type: "message_response", data: ack });
  chat.onFrame(push(A, 2, 11, "are you there?", "send"));
  assert.deepEqual(ids(chat, A), [10, 11]);
  assert.equal(chat.state.pending.get(A), undefined, "nothing left pending");
  clearTimeout(chat.reconnectTimer);
});

test("a message acknowledged or pushed before the newest page comes joins that page", () => {
  const { chat, sent } = connected();
  chat.onFrame({ type: "get_contacts_response", data: [contact(A, 0)] });
  chat.openConversation(A);
  chat.sendMessage(A, "first");
  const clientId = sent.find((f) => f.type === "message").data.client_id;
  // The page was read before either was committed, and answers after.
  chat.onFrame({ type: "message_response", data: { status: "success", id: 20, pk: A, client_id: clientId, time: "t" } });
  assert.equal(chat.state.conversations.get(A).last_message.content, "first", "the list shows it at once");
  chat.onFrame(push(A, 2, 21, "second"));
  assert.deepEqual(ids(chat, A), [], "not shown out of place before the page");
  assert.equal(chat.state.pending.get(A), undefined);
  assert.equal(chat.state.conversations.get(A).last_message.id, 21);
  chat.onFrame({ type: "get_messages_response", data: { pk: A, messages: [item(19, "before")], has_more: false, seq: 0 } });
  assert.deepEqual(ids(chat, A), [19, 20, 21]);
  assert.deepEqual(chat.state.messages.get(A).held, []);
  // A page read after the commit holds them already: each shown once.
  chat.showLatest(A);
  chat.sendMessage(A, "third");
  const third = sent.filter((f) => f.type === "message").at(-1).data.client_id;
  chat.onFrame({ type: "message_response", data: { status: "success", id: 22, pk: A, client_id: third, time: "t" } });
  const page = [item(19, "before"), item(20, "first"), item(21, "second"), item(22, "third")];
  chat.onFrame({ type: "get_messages_response", data: { pk: A, messages: page, has_more: false, seq: 3 } });
  assert.deepEqual(ids(chat, A), [19, 20, 21, 22]);
});

test("what a log held is dropped when its page fails: the next page is not joined to it across a gap", () => {
  const { chat } = connected();
  chat.onFrame({ type: "get_contacts_response", data: [contact(A, 1)] });
  chat.openConversation(A);
  chat.onFrame(push(A, 2, 30, "held"));
  chat.onFrame({ type: "get_messages_response", data: { status: "error", code: "internal", message: "x" } });
  // Reopened later, when the newest page no longer reaches message 30.
  chat.openConversation(A);
  const page = [item(100, "newer"), item(101, "newest")];
  chat.onFrame({ type: "get_messages_response", data: { pk: A, messages: page, has_more: true, seq: 80 } });
  assert.deepEqual(ids(chat, A), [100, 101]);
});

test("a conversation not on screen follows its seq without syncing", () => {
  const { chat, sent } = connected();
  chat.onFrame({ type: "get_contacts_response", data: [contact(A, 1)] });
  chat.onFrame(push(A, 4, 13, "four"));
  assert.equal(chat.state.conversations.get(A).seq, 4);
  assert.equal(chat.state.conversations.get(A).unread, 1);
  chat.onFrame({ type: "get_contacts_response", data: [contact(A, 7)] });
  assert.equal(chat.state.conversations.get(A).seq, 7, "taken from the contacts");
  assert.deepEqual(sent.filter((f) => f.type === "sync"), []);
});

test("a failed sync is forgotten, so the next hole can ask again", () => {
  const { chat, sent } = connected();
  chat.onFrame({ type: "get_contacts_response", data: [contact(A, 1)] });
  opened(chat, A, [item(10, "one")]);
  chat.onFrame(push(A, 3, 12, "three"));
  chat.onFrame({ type: "sync_response", data: { status: "error", code: "internal", message: "try again" } });
  sent.length = 0;
  chat.onFrame(push(A, 5, 14, "five"));
  assert.deepEqual(sent.filter((f) => f.type === "sync").map((f) => f.data.after_seq), [1]);
  assert.equal(chat.state.notice, null, "a sync's failure is no notice to the person");
});

test("a request's error is shown until the same request succeeds", () => {
  const { chat } = connected();
  chat.onFrame({ type: "get_contacts_response", data: [contact(A, 1)] });
  const refused = { status: "error", code: "invalid", message: "emoji must be exactly one emoji" };
  chat.onFrame({ type: "react_response", data: refused });
  assert.deepEqual(chat.state.notice, { text: refused.message, error: true, after: "react_response" });
  chat.onFrame({ type: "mute_response", data: { status: "success", state: { pk: A, muted: true } } });
  assert.equal(chat.state.notice?.text, refused.message, "another request's success leaves it");
  chat.onFrame({ type: "react_response", data: { status: "success", id: 10, emoji: "🦄", on: true } });
  assert.equal(chat.state.notice, null);
});

test("a change is applied once: not again from sync, not over a page that shows it", () => {
  const { chat, sent } = connected();
  chat.onFrame({ type: "get_contacts_response", data: [contact(A, 3)] });
  chat.openConversation(A);
  // The page was read at seq 4: it already counts Ben's reaction (seq 4).
  const shown = { ...item(10, "hi"), reactions: [{ emoji: "👍", count: 1, mine: false }] };
  chat.onFrame({ type: "get_messages_response", data: { pk: A, messages: [shown], has_more: false, seq: 4 } });
  const reaction = (seq, on, user_id = 2) => ({
    type: "reaction",
    data: { pk: A, seq, id: 10, user_id, emoji: "👍", on },
  });
  chat.onFrame(reaction(4, true)); // pushed after the page was read: already in it
  chat.onFrame(reaction(5, true, ME.id)); // mine
  const reactions = () => chat.state.messages.get(A).items[0].reactions;
  assert.deepEqual(reactions(), [{ emoji: "👍", count: 2, mine: true }]);
  // A sync that brings seq 4 and 5 again changes nothing.
  chat.onFrame({
    type: "sync_response",
    data: { pk: A, events: [reaction(4, true), reaction(5, true, ME.id)], seq: 5, has_more: false },
  });
  assert.deepEqual(reactions(), [{ emoji: "👍", count: 2, mine: true }]);
  chat.onFrame(reaction(6, false, ME.id));
  assert.deepEqual(reactions(), [{ emoji: "👍", count: 1, mine: false }]);
  // An edit, then a deletion: the text goes, and so does a reply's quote.
  chat.onFrame(push(A, 7, 11, "re"));
  chat.state.messages.get(A).items[1].reply_to = 10;
  chat.state.messages.get(A).items[1].quote = { sender: 2, content: "hi" };
  chat.onFrame({
    type: "message_edited",
    data: { pk: A, seq: 8, id: 10, content: "hello", edited_at: "2026-11-30T10:00:00+00:00" },
  });
  const [first, reply] = chat.state.messages.get(A).items;
  assert.equal(first.content, "hello");
  assert.equal(reply.quote.content, "hello");
  chat.onFrame({ type: "message_deleted", data: { pk: A, seq: 9, id: 10 } });
  const [gone, after] = chat.state.messages.get(A).items;
  assert.deepEqual([gone.deleted, gone.content, gone.reactions], [true, "", []]);
  assert.equal(after.quote.content, "");
  assert.equal(chat.state.conversations.get(A).seq, 9);
  assert.equal(sent.filter((f) => f.type === "sync").length, 0, "no hole, no sync");
});

test("a reply carries reply_to, and reactions toggle what is the person's", () => {
  const { chat, sent } = connected();
  chat.onFrame({ type: "get_contacts_response", data: [contact(A, 1)] });
  opened(chat, A, [{ ...item(10, "hi"), reactions: [{ emoji: "🎉", count: 2, mine: true }] }]);
  sent.length = 0;
  chat.sendMessage(A, "answer", 10);
  assert.deepEqual(sent[0].data.reply_to, 10);
  const message = chat.state.messages.get(A).items[0];
  chat.toggleReaction(message, "🎉");
  chat.toggleReaction(message, "👍");
  assert.deepEqual(
    sent.slice(1).map((f) => [f.type, f.data.emoji, f.data.on]),
    [["react", "🎉", false], ["react", "👍", true]]
  );
});

test("search: only the latest query's answer is shown, and pages add up", async () => {
  const { chat, sent } = connected();
  chat.search("caf");
  chat.search("cafe");
  assert.deepEqual(sent.map((f) => f.data), [{ query: "caf" }, { query: "cafe" }]);
  const hit = (id) => ({ pk: A, id, sender: 2, content: `café ${id}`, time: "2026-12-01T00:00:00Z" });
  chat.onFrame({ type: "search_response", data: { results: [hit(9)], has_more: false } });
  assert.equal(chat.state.search.loading, true, "the answer to an older query is dropped");
  chat.onFrame({ type: "search_response", data: { results: [hit(8)], has_more: true } });
  assert.deepEqual(chat.state.search.results.map((r) => r.id), [8]);
  chat.search("cafe", true);
  assert.deepEqual(sent.at(-1).data, { query: "cafe", before: 8 });
  chat.onFrame({ type: "search_response", data: { results: [hit(5)], has_more: false } });
  assert.deepEqual(chat.state.search.results.map((r) => r.id), [8, 5]);
  chat.search("  ");
  assert.equal(chat.state.search, null);
});

test("search: matched words are marked without case or accents, as text", async () => {
  const { highlightParts, queryWords } = await import("../static/app/search.js");
  assert.deepEqual(queryWords("café, au-lait"), ["café", "au", "lait"]);
  const marked = (text, words) =>
    highlightParts(text, words).map((p) => (p.hit ? `[${p.text}]` : p.text)).join("");
  assert.equal(marked("Un café au lait, CAFÉS", ["cafe"]), "Un [café] au lait, [CAFÉ]S");
  assert.equal(marked("Über alles", ["uber", "al"]), "[Über] [al]les");
  assert.equal(marked("decaf coffee", ["caf"]), "decaf coffee", "only at a word's start");
  assert.equal(marked("<b>x</b>", ["b"]), "<[b]>x</[b]>");
  // Chinese and Japanese: anywhere in a run of their characters.
  assert.equal(marked("日本語のテキスト", ["テキスト"]), "日本語の[テキスト]");
  assert.equal(marked("iPhone発売日", ["発売", "iph"]), "[iPh]one[発売]日");
  assert.equal(marked("iPhone発売日", ["phone"]), "iPhone発売日", "Latin letters still only at a word's start");
});

test("a window in the past: opened at a message, new ones held until it reaches them", () => {
  const { chat, sent } = connected();
  const asked = () => sent.filter((f) => f.type === "get_messages").at(-1).data;
  chat.onFrame({ type: "get_contacts_response", data: [contact(A, 300)] });
  // A newest page asked for, then a search result far back: the page of
  // the earlier window is dropped when it comes.
  chat.openConversation(A);
  chat.loadAround(A, 100);
  assert.deepEqual(asked(), { id: A, limit: 50 }, "one page at a time");
  chat.onFrame({ type: "get_messages_response", data: { pk: A, messages: [item(290, "new")], has_more: true } });
  assert.deepEqual(asked(), { id: A, after: 99, limit: 50 });
  assert.deepEqual(ids(chat, A), []);
  chat.onFrame({ type: "get_messages_response", data: { pk: A, messages: [item(100, "x"), item(101, "y")], has_more: true } });
  const log = chat.state.messages.get(A);
  assert.deepEqual([ids(chat, A), log.hasNewer, log.hasOlder, log.loaded], [[100, 101], true, true, true]);

  // A live message waits; no read mark for the window's end.
  chat.onFrame(push(A, 301, 300, "live"));
  assert.deepEqual(ids(chat, A), [100, 101]);
  chat.markSeen(A);
  assert.notEqual(sent.at(-1).type, "read");

  // The pages below; the last one lets the held message join.
  chat.loadNewer(A);
  assert.deepEqual(asked(), { id: A, after: 101, limit: 50 });
  chat.onFrame({ type: "get_messages_response", data: { pk: A, messages: [item(102, "z")], has_more: true } });
  chat.loadNewer(A);
  assert.deepEqual(asked(), { id: A, after: 102, limit: 50 });
  chat.onFrame({ type: "get_messages_response", data: { pk: A, messages: [item(299, "w"), item(300, "live")], has_more: false } });
  assert.deepEqual([ids(chat, A), log.hasNewer], [[100, 101, 102, 299, 300], false]);
  chat.markSeen(A);
  assert.deepEqual(sent.at(-1), { type: "read", data: { id: A, up_to: 300 } });
});

test("an answer counting unread from before our own read mark was stored shows nothing unread", () => {
  const { chat } = connected();
  const newest = { id: 11, sender: 2, content: "two", time: "t" };
  chat.onFrame({ type: "get_contacts_response", data: [contact(A, 2, { unread: 2, last_message: newest })] });
  opened(chat, A, [item(10, "one"), item(11, "two")]);
  chat.markSeen(A);
  assert.equal(chat.state.conversations.get(A).unread, 0);
  // get_contact answered before the mark was stored: it still says 2.
  chat.onFrame({ type: "get_contact_response", data: contact(A, 2, { unread: 2, last_message: newest }) });
  assert.equal(chat.state.conversations.get(A).unread, 0);
  // A newer message than the mark still counts.
  const later = { id: 12, sender: 2, content: "three", time: "t" };
  chat.onFrame({ type: "get_contact_response", data: contact(A, 3, { unread: 1, last_message: later }) });
  assert.equal(chat.state.conversations.get(A).unread, 1);
});

test("read marks: the first at once, then at most one a second, carrying the newest seen", () => {
  mock.timers.enable({ apis: ["setTimeout"] });
  try {
    const { chat, sent } = connected();
    chat.onFrame({ type: "get_contacts_response", data: [contact(A, 1)] });
    opened(chat, A, [item(10, "one")]);
    sent.length = 0;
    const reads = () => sent.filter((f) => f.type === "read").map((f) => f.data);
    chat.markSeen(A);
    assert.deepEqual(reads(), [{ id: A, up_to: 10 }]);
    // Five more within the second, each seen as it comes: shown read at
    // once, and a contact item counting them (the mark not sent yet) too.
    for (let k = 1; k <= 5; k++) {
      chat.onFrame(push(A, 1 + k, 10 + k, `m${k}`));
      chat.markSeen(A);
      assert.equal(chat.state.conversations.get(A).unread, 0);
    }
    const newest = { id: 15, sender: 2, content: "m5", time: "t" };
    chat.onFrame({ type: "get_contact_response", data: contact(A, 6, { unread: 5, last_message: newest }) });
    assert.equal(chat.state.conversations.get(A).unread, 0);
    mock.timers.tick(999);
    assert.deepEqual(reads(), [{ id: A, up_to: 10 }], "not before the second is over");
    mock.timers.tick(1);
    assert.deepEqual(reads(), [{ id: A, up_to: 10 }, { id: A, up_to: 15 }]);
    // Nothing new seen: the next second sends nothing; after it, a new
    // message is marked at once.
    mock.timers.tick(1000);
    assert.equal(reads().length, 2);
    chat.onFrame(push(A, 7, 16, "later"));
    chat.markSeen(A);
    assert.deepEqual(reads().at(-1), { id: A, up_to: 16 });
    assert.equal(reads().length, 3);
  } finally {
    mock.timers.reset();
  }
});

test("a read mark seen while the connection is down goes after the reconnect", () => {
  mock.timers.enable({ apis: ["setTimeout"] });
  try {
    const { chat, sent } = connected();
    chat.onFrame({ type: "get_contacts_response", data: [contact(A, 1, { unread: 1 })] });
    opened(chat, A, [item(10, "one")]);
    chat.socket.readyState = 3;
    sent.length = 0;
    chat.markSeen(A);
    assert.deepEqual(sent, []);
    assert.equal(chat.state.conversations.get(A).unread, 0);
    chat.socket.readyState = 1;
    chat.onFrame({ type: "authorization_response", data: { status: "success" } });
    assert.deepEqual(
      sent.filter((f) => f.type === "read"),
      [{ type: "read", data: { id: A, up_to: 10 } }]
    );
  } finally {
    mock.timers.reset();
  }
});

test("a window in the past: sending or Jump to latest goes back to the newest page", () => {
  const { chat, sent } = connected();
  chat.onFrame({ type: "get_contacts_response", data: [contact(A, 300)] });
  chat.openAt(A, 100);
  assert.equal(sent.filter((f) => f.type === "get_messages").length, 0, "the view asks around the message");
  chat.loadAround(A, 100);
  chat.onFrame({ type: "get_messages_response", data: { pk: A, messages: [item(100, "x")], has_more: true } });
  chat.sendMessage(A, "hello");
  assert.deepEqual(sent.at(-2).data, { id: A, limit: 50 });
  assert.equal(sent.at(-1).type, "message");
  const log = chat.state.messages.get(A);
  assert.deepEqual([ids(chat, A), log.hasNewer, log.loaded], [[], false, false]);
  chat.onFrame({ type: "get_messages_response", data: { pk: A, messages: [item(299, "w")], has_more: true } });
  assert.deepEqual([ids(chat, A), log.hasOlder], [[299], true]);
});

test("onNotify: a new live message from someone else, once; never from sync or one's own", () => {
  const told = [];
  const chat = new Chat({ user: ME, token: "t" }, { onChange() {}, onSignedOut() {}, onNotify: (pk, m) => told.push([pk, m.id]) });
  chat.socket = { readyState: 1, send() {}, close() {} };
  chat.onFrame({ type: "authorization_response", data: { status: "success" } });
  chat.onFrame({ type: "get_contacts_response", data: [contact(A, 1)] });
  chat.onFrame(push(A, 2, 20, "hello"));
  chat.onFrame(push(A, 2, 20, "hello")); // the same again
  chat.onFrame(push(A, 3, 21, "mine", "send"));
  chat.onFrame({ type: "sync_response", data: { pk: A, events: [{ type: "message", data: { seq: 4, data: item(22, "caught up") } }], has_more: false, seq: 4 } });
  assert.deepEqual(told, [[A, 20]]);
});

test("a mute comes from the items and the muted push; a conversation push keeps it", () => {
  const { chat, sent } = connected();
  chat.onFrame({ type: "get_contacts_response", data: [contact(A, 0, { muted: true }), contact(B, 0)] });
  assert.deepEqual([chat.state.conversations.get(A).muted, chat.state.conversations.get(B).muted], [true, false]);
  chat.onFrame({ type: "conversation", data: { ...contact(A, 0), name: "Ann Lee", change: { type: "renamed" } } });
  assert.equal(chat.state.conversations.get(A).muted, true, "a push carries no mute and changes none");
  chat.setMuted(B, true);
  assert.deepEqual(sent.at(-1), { type: "mute", data: { id: B, muted: true } });
  chat.onFrame({ type: "muted", data: { pk: A, muted: false } });
  chat.onFrame({ type: "mute_response", data: { status: "success", pk: B, muted: true } });
  assert.deepEqual([chat.state.conversations.get(A).muted, chat.state.conversations.get(B).muted], [false, true]);
});

test("get_contact's read_up_to shows Read after a reload; a listed conversation with no message sorts last", () => {
  const { chat } = connected();
  chat.onFrame({
    type: "get_contacts_response",
    data: [contact(A, 0), contact(B, 3, { last_message: { id: 3, content: "hi", time: "2026-11-30T10:00:00.000000+00:00", sender: 2, deleted: false } })],
  });
  assert.deepEqual(chat.sortedConversations().map((c) => c.pk), [B, A]);
  chat.onFrame({ type: "get_contact_response", data: { ...contact(B, 3), members: [], read_up_to: 3 } });
  assert.equal(chat.state.readUpTo.get(B), 3);
});

test("files: sent with or without text, shown from the acknowledgement, gone with a deletion", async () => {
  const { chat, sent } = connected();
  chat.onFrame({ type: "get_contacts_response", data: [contact(A, 1)] });
  opened(chat, A, [item(10, "one")]);
  sent.length = 0;
  const photo = { id: "f1", name: "a.png", size: 10, content_type: "image/png", width: 2, height: 1 };
  const notes = { id: "f2", name: "b.txt", size: 3, content_type: "text/plain" };
  assert.equal(chat.sendMessage(A, "  ", null, []), "Write something first.");
  assert.equal(chat.sendMessage(A, "", null, [photo, notes]), null);
  const [frame] = sent.filter((f) => f.type === "message");
  // No text: none is sent (the server keeps the names for older clients).
  assert.deepEqual(frame.data, { to: A, content: "", client_id: frame.data.client_id, attachments: ["f1", "f2"] });
  chat.onFrame({
    type: "message_response",
    data: { status: "success", id: 11, pk: A, client_id: frame.data.client_id, time: "t" },
  });
  const shown = chat.state.messages.get(A).items.find((m) => m.id === 11);
  assert.deepEqual(shown.attachments, [photo, notes]);
  assert.equal(shown.content, "a.png, b.txt");
  const { textOf } = await import("../static/app/files.js");
  assert.equal(textOf(shown), "", "the names are not shown as text");
  assert.equal(textOf({ ...shown, content: "a.png" }), "a.png");
  chat.onFrame({ type: "message_deleted", data: { pk: A, seq: 3, id: 11 } });
  const deleted = chat.state.messages.get(A).items.find((m) => m.id === 11);
  // A new object, never the old one changed: the view draws again only
  // the messages that are new objects (memo.js).
  assert.notEqual(deleted, shown);
  assert.deepEqual(shown.attachments, [photo, notes]);
  assert.deepEqual(deleted.attachments, []);
  // With text, the text is sent.
  chat.sendMessage(A, "look", null, [photo]);
  assert.deepEqual(sent.filter((f) => f.type === "message")[1].data.attachments, ["f1"]);
  assert.equal(sent.filter((f) => f.type === "message")[1].data.content, "look");
});

test("a group change in words: the reader is 'you', and many people are counted, not named", async () => {
  const { changeParts } = await import("../static/app/chat.js");
  const changeText = (change, me) =>
    changeParts(change, me)
      .map((part) => (typeof part === "string" ? part : part.name))
      .join("");
  const p = (user_id, name) => ({ user_id, username: name.toLowerCase(), name });
  const ann = p(2, "Ann");
  const added = (users) => changeText({ type: "members_added", by: ann, users, title: null }, ME.id);
  assert.equal(added([p(3, "Ben")]), "Ann added Ben");
  assert.equal(added([p(3, "Ben"), p(4, "Cleo"), p(5, "Dan")]), "Ann added Ben, Cleo and Dan");
  const hundred = Array.from({ length: 100 }, (_, i) => p(10 + i, `Person ${i}`));
  assert.equal(added(hundred), "Ann added Person 0, Person 1 and 98 others");
  assert.equal(added([...hundred.slice(0, 3), p(ME.id, "Me")]), "Ann added you, Person 0 and 2 others");
  assert.equal(added([p(3, "Ben"), p(ME.id, "Me")]), "Ann added you and Ben");
  assert.equal(changeText({ type: "members_added", by: ann, users: [ann], title: null }, ME.id), "Ann joined");
  assert.equal(changeText({ type: "member_removed", by: p(ME.id, "Me"), users: [ann], title: null }, ME.id), "You removed Ann");
  assert.equal(changeText({ type: "member_removed", by: ann, users: [], title: null }, ME.id), "Ann removed someone");
  // Names and titles people chose are parts of their own, which the view
  // isolates; the words around them are ours.
  const rlo = "\u202eevil";
  assert.deepEqual(changeParts({ type: "renamed", by: p(3, rlo), users: [], title: rlo }, ME.id), [
    { name: rlo },
    " renamed the group to “",
    { name: rlo },
    "”",
  ]);
  assert.deepEqual(changeParts({ type: "members_added", by: ann, users: [p(3, "Ben"), p(ME.id, "Me")], title: null }, ME.id), [
    { name: "Ann" },
    " added ",
    "you",
    " and ",
    { name: "Ben" },
  ]);
});

test("a contact list refused as over the budget is asked for again when the server says", () => {
  mock.timers.enable({ apis: ["setTimeout"] });
  try {
    const { chat, sent } = connected();
    const refusal = { status: "error", code: "rate_limited", message: "too many contact lists; try again in 2 s" };
    chat.onFrame({ type: "get_contacts_response", data: refusal });
    mock.timers.tick(1999);
    assert.deepEqual(sent, [], "not before the 2 s");
    mock.timers.tick(1);
    assert.deepEqual(sent, [{ type: "get_contacts", data: {} }]);
    // Another refusal only moves the one retry.
    sent.length = 0;
    chat.onFrame({ type: "get_contacts_response", data: refusal });
    chat.onFrame({ type: "get_contacts_response", data: refusal });
    mock.timers.tick(2000);
    assert.equal(sent.length, 1);
  } finally {
    mock.timers.reset();
  }
});

test("a conversation refused as over the budget is asked for again when the server says, until answered", () => {
  mock.timers.enable({ apis: ["setTimeout"] });
  try {
    const { chat, sent } = connected();
    const refusal = { status: "error", code: "rate_limited", message: "too many member lists; try again in 2 s" };
    // A message in a conversation not in the list: the client asks for it.
    chat.onFrame(push(A, 1, 10, "hi"));
    assert.deepEqual(sent, [{ type: "get_contact", data: { id: A } }]);
    sent.length = 0;
    chat.onFrame({ type: "get_contact_response", data: refusal });
    mock.timers.tick(1999);
    assert.deepEqual(sent, [], "not before the 2 s");
    mock.timers.tick(1);
    assert.deepEqual(sent, [{ type: "get_contact", data: { id: A } }]);
    chat.onFrame({ type: "get_contact_response", data: contact(A, 1, { unread: 1 }) });
    assert.equal(chat.state.conversations.get(A).unread, 1);
    // Answered: a later refusal (of another request) does not ask for it again.
    sent.length = 0;
    chat.onFrame({ type: "get_contact_response", data: refusal });
    mock.timers.tick(2000);
    assert.deepEqual(sent, []);
  } finally {
    mock.timers.reset();
  }
});

test("a search refused as over the allowance is sent again when the server says, if still current", () => {
  mock.timers.enable({ apis: ["setTimeout"] });
  try {
    const { chat, sent } = connected();
    const refusal = { status: "error", code: "rate_limited", message: "too many searches; try again in 3 s" };
    chat.search("lunch");
    assert.deepEqual(sent, [{ type: "search", data: { query: "lunch" } }]);
    sent.length = 0;
    chat.onFrame({ type: "search_response", data: refusal });
    assert.equal(chat.state.search.loading, true, "still searching, no error shown");
    assert.equal(chat.state.search.error, null);
    mock.timers.tick(2999);
    assert.deepEqual(sent, [], "not before the 3 s");
    mock.timers.tick(1);
    assert.deepEqual(sent, [{ type: "search", data: { query: "lunch" } }]);
    // Refused again, then replaced by another query: the old one is not sent.
    sent.length = 0;
    chat.onFrame({ type: "search_response", data: refusal });
    chat.search("dinner");
    sent.length = 0;
    mock.timers.tick(3000);
    assert.deepEqual(sent, []);
  } finally {
    mock.timers.reset();
  }
});

// End-to-end tests of the web client in a real browser: Debian's chromium,
// driven by playwright-core, against the real server on a free port (SQLite
// in a fresh directory). Each person is an independent browser profile
// (context). Elements are found by role and accessible name, as
// docs/WEBCLIENT.md names them.
//
//   CHAT_SERVER=target/debug/chat-server node e2e/client.test.mjs
//   SCREENSHOTS=docs/screenshots ...   also saves the README's screenshots

import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { crc32, deflateSync } from "node:zlib";
import { chromium } from "playwright-core";

const SERVER = resolve(process.env.CHAT_SERVER || "target/debug/chat-server");
const BROWSER = process.env.CHROMIUM || "/usr/bin/chromium";
const SHOTS = process.env.SCREENSHOTS;
const WAIT = { timeout: 15000 };
const PASSWORD = "correct horse battery";

let browser;
let server;
let port;
let base;
const dir = mkdtempSync(join(tmpdir(), "chat-e2e-"));

/**
 * A port that is free now, below the kernel's ephemeral range (32768 and
 * up): no outgoing connection of another process (CI runs the Rust tests
 * beside these) takes it as its local port while a scenario restarts the
 * server on it.
 */
async function freePort() {
  for (;;) {
    const port = 20000 + Math.floor(Math.random() * 12000);
    const free = await new Promise((done) => {
      const probe = createServer();
      probe.once("error", () => done(false));
      probe.listen(port, "127.0.0.1", () => probe.close(() => done(true)));
    });
    if (free) return port;
  }
}

/** Starts a chat-server on `on` (default: the suite's port), SQLite unless `env` says. */
async function launch(on, env = {}) {
  const child = spawn(SERVER, [], {
    cwd: dir,
    env: {
      ...process.env,
      PORT: String(on),
      RUST_LOG: "warn",
      REGISTRATION_BURST: "1000",
      SECRET_KEY: "e2e-secret-key-of-at-least-32-bytes!",
      ...env,
    },
    stdio: ["ignore", "inherit", "inherit"],
  });
  for (let i = 0; i < 400; i++) {
    try {
      const res = await fetch(`http://127.0.0.1:${on}/readyz`);
      if (res.ok) return child;
    } catch {}
    await new Promise((r) => setTimeout(r, 50));
  }
  child.kill();
  throw new Error("server did not become ready");
}

async function startServer() {
  server = await launch(port);
}

async function stop(child) {
  if (child.exitCode !== null) return;
  const exited = new Promise((r) => child.once("exit", r));
  child.kill("SIGTERM");
  await exited;
}

const stopServer = () => stop(server);

before(async () => {
  port = await freePort();
  base = `http://127.0.0.1:${port}`;
  await startServer();
  browser = await chromium.launch({
    executablePath: BROWSER,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
});

after(async () => {
  await browser?.close();
  if (server && server.exitCode === null) await stopServer();
  rmSync(dir, { recursive: true, force: true });
});

function watch(page) {
  page.errors = [];
  page.dialogs = 0;
  page.on("pageerror", (e) => page.errors.push(String(e)));
  page.on("dialog", (d) => {
    page.dialogs += 1;
    d.dismiss();
  });
  return page;
}

/** A person: their own browser profile, with the page open at `/` of `at`. */
async function person(viewport = { width: 1280, height: 800 }, at = base) {
  const context = await browser.newContext({ viewport });
  const page = watch(await context.newPage());
  await page.goto(`${at}/`);
  return page;
}

let counter = 0;
/** Signs a new person up through the form; returns their page and names. */
async function signUp(first, last, viewport, at) {
  counter += 1;
  const username = `${first.toLowerCase()}${counter}`;
  const page = await person(viewport, at);
  await page.getByRole("button", { name: "Create account" }).click();
  await page.getByLabel("Username").fill(username);
  await page.getByLabel("Password").fill(PASSWORD);
  await page.getByLabel("First name").fill(first);
  await page.getByLabel("Last name").fill(last);
  await page.getByLabel("Email").fill(`${username}@example.com`);
  await page.getByRole("button", { name: "Create account" }).click();
  await page.getByRole("button", { name: "Log out" }).waitFor(WAIT);
  await status(page, "Connected");
  return { page, username, name: `${first} ${last}` };
}

/** The same person logging in on another device (a fresh browser context). */
async function secondDevice(username) {
  const page = await person();
  await page.getByLabel("Username").fill(username);
  await page.getByLabel("Password").fill(PASSWORD);
  await page.getByRole("button", { name: "Log in" }).click();
  await status(page, "Connected");
  return page;
}

async function status(page, text) {
  await page.getByRole("status").filter({ hasText: text }).waitFor(WAIT);
}

const list = (page) => page.getByRole("list", { name: "Conversations" });
const item = (page, name) => list(page).getByRole("listitem").filter({ hasText: name });
const log = (page) => page.getByRole("log");

async function addContact(page, username, name) {
  await page.getByRole("button", { name: "Add contact" }).click();
  await page.getByLabel("Username").fill(username);
  await page.getByRole("button", { name: "Add", exact: true }).click();
  await page.getByRole("heading", { name }).waitFor(WAIT);
}

async function open(page, name) {
  await item(page, name).click();
  await page.getByRole("heading", { name }).waitFor(WAIT);
}

async function say(page, text) {
  await page.getByLabel("Message").fill(text);
  await page.getByLabel("Message").press("Enter");
  // Acknowledged: no longer pending.
  await log(page)
    .locator('[data-direction="send"]:not(.pending)')
    .filter({ hasText: text })
    .last()
    .waitFor(WAIT);
}

/** From now on, counts in `window.__drawn` how often `page` draws each
 *  named component (Preact's `diffed` hook, on the page's own Preact). */
async function countDrawings(page) {
  await page.evaluate(async () => {
    const { options } = await import("/app/vendor/preact.module.js");
    window.__drawn = {};
    const next = options.diffed;
    options.diffed = (vnode) => {
      const name = typeof vnode.type === "function" ? vnode.type.name : "";
      if (name) window.__drawn[name] = (window.__drawn[name] || 0) + 1;
      next?.(vnode);
    };
  });
}

async function received(page, text) {
  await log(page).locator('[data-direction="received"]').filter({ hasText: text }).first().waitFor(WAIT);
}

/** Two new people: the first added the second and said `text`, which
 *  the second has open. */
async function talking(first, second, text) {
  const alice = await signUp(...first);
  const bob = await signUp(...second);
  await addContact(alice.page, bob.username, bob.name);
  await say(alice.page, text);
  await open(bob.page, alice.name);
  await received(bob.page, text);
  return [alice, bob];
}

/** How opaque an element is drawn: its own opacity and its ancestors'. */
function shownOpacity(locator) {
  return locator.evaluate((element) => {
    let opacity = 1;
    for (let e = element; e; e = e.parentElement) opacity *= Number(getComputedStyle(e).opacity);
    return opacity;
  });
}

/** The button's icon is the client's own drawing, not a character that
 *  needs an emoji font: its text is `label` and nothing else. */
async function ownIcon(button, label) {
  const { text, width } = await button.evaluate((b) => ({
    text: b.textContent.trim(),
    width: b.querySelector("svg.icon")?.getBoundingClientRect().width ?? 0,
  }));
  assert.equal(text, label);
  assert.ok(width >= 12, `an icon ${width} px wide`);
}

async function shot(page, name) {
  if (!SHOTS) return;
  mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: join(SHOTS, `${name}.png`) });
}

test("sign up two people, add a contact, chat both ways, typing and Read", async () => {
  const alice = await signUp("Alice", "Smith");
  const bob = await signUp("Bob", "Jones");
  await addContact(alice.page, bob.username, bob.name);
  await say(alice.page, "Hello Bob");

  // Bob's list shows the new conversation, its last message and unread count.
  const entry = item(bob.page, alice.name);
  await entry.filter({ hasText: "Hello Bob" }).waitFor(WAIT);
  assert.match(await entry.innerText(), /^Alice Smith/);
  assert.match(await entry.innerText(), /1/);
  assert.match(await entry.innerText(), /Online/);
  await open(bob.page, alice.name);
  await received(bob.page, "Hello Bob");
  const time = log(bob.page).locator("[data-direction] time").first();
  assert.ok(await time.getAttribute("datetime"));

  // Bob has seen it: Alice's message shows Read.
  await log(alice.page).getByText("Read", { exact: true }).waitFor(WAIT);

  // Typing shows on the other side, then the reply arrives.
  await bob.page.getByLabel("Message").pressSequentially("Hi Al");
  await alice.page.getByText("typing…", { exact: true }).waitFor(WAIT);
  await bob.page.getByLabel("Message").fill("Hi Alice");
  await bob.page.getByRole("button", { name: "Send" }).click();
  await received(alice.page, "Hi Alice");
  // The list's buttons are drawn in full; a message's own (Reply, React …)
  // are faint until the pointer or the focus is on the message.
  for (const name of ["Add contact", "New group", "Account"]) {
    assert.equal(await shownOpacity(alice.page.getByRole("button", { name })), 1, name);
  }
  const reply = log(alice.page).getByRole("button", { name: "Reply" }).last();
  await alice.page.mouse.move(0, 0);
  assert.ok((await shownOpacity(reply)) < 1, "a message's actions are faint");
  await reply.hover();
  assert.equal(await shownOpacity(reply), 1);
  await ownIcon(alice.page.getByRole("button", { name: "Attach file" }), "");
  await shot(alice.page, "desktop-conversation");
  await bob.page.getByRole("button", { name: "New group" }).click();
  await shot(bob.page, "desktop-new-group");
  assert.deepEqual([...alice.page.errors, ...bob.page.errors], []);
  await alice.page.context().close();
  await bob.page.context().close();
});

test("history survives a reload; older pages load on scrolling up", async () => {
  const alice = await signUp("Ann", "Lee");
  const bob = await signUp("Ben", "Ray");
  await addContact(alice.page, bob.username, bob.name);
  // Sixty through a socket of her own (typing them took seconds), the
  // last through the page.
  await sendMany(alice.page, 60, "line");
  await say(alice.page, "line 60");
  await alice.page.reload();
  await alice.page.getByRole("button", { name: "Log out" }).waitFor(WAIT);
  await open(alice.page, bob.name);
  const messages = log(alice.page).locator("[data-direction]");
  await log(alice.page).getByText("line 60", { exact: true }).waitFor(WAIT);
  assert.equal(await messages.count(), 50, "the newest page");
  await log(alice.page).evaluate((element) => (element.scrollTop = 0));
  await log(alice.page).getByText("line 0", { exact: true }).waitFor(WAIT);
  assert.equal(await messages.count(), 61, "older page added, nothing twice");

  // A message arriving (and Bob's typing before it) draws that message
  // only, not the 61 before it.
  await open(bob.page, alice.name);
  await log(alice.page).getByText("Read", { exact: true }).waitFor(WAIT);
  await countDrawings(alice.page);
  await say(bob.page, "one more");
  await received(alice.page, "one more");
  assert.equal(await alice.page.evaluate(() => window.__drawn.Message), 1);
  await alice.page.context().close();
  await bob.page.context().close();
});

test("a group of three", async () => {
  const alice = await signUp("Amy", "Hart");
  const bob = await signUp("Bill", "Moss");
  const carol = await signUp("Cleo", "King");
  await addContact(alice.page, bob.username, bob.name);
  await addContact(alice.page, carol.username, carol.name);
  await alice.page.getByRole("button", { name: "New group" }).click();
  await alice.page.getByLabel("Title").fill("Trip");
  await alice.page.getByRole("checkbox", { name: bob.name }).check();
  await alice.page.getByRole("checkbox", { name: carol.name }).check();
  await alice.page.getByRole("button", { name: "Create group" }).click();
  await alice.page.getByRole("heading", { name: "Trip" }).waitFor(WAIT);
  // Neither has written to Amy yet: they are invited, and join by accepting.
  // News, not a failure: a status, not an alert.
  const invited = `Invited ${bob.name}, ${carol.name}: they join when they accept.`;
  await alice.page.getByRole("status").filter({ hasText: invited }).waitFor(WAIT);
  assert.equal(await alice.page.getByRole("alert").filter({ hasText: invited }).count(), 0);
  await say(alice.page, "hi group");
  for (const other of [bob, carol]) {
    const invitations = other.page.getByRole("list", { name: "Invitations" });
    await invitations.getByRole("listitem").filter({ hasText: "Trip" }).filter({ hasText: `from ${alice.name}` }).waitFor(WAIT);
    await other.page.getByRole("button", { name: "Accept Trip" }).click();
    await other.page.getByRole("heading", { name: "Trip" }).waitFor(WAIT);
    await invitations.waitFor({ state: "detached", ...WAIT });
    await item(other.page, "Trip").filter({ hasText: "hi group" }).waitFor(WAIT);
    await received(other.page, "hi group");
  }
  await say(carol.page, "hello from Cleo");
  await received(alice.page, "hello from Cleo");
  await received(bob.page, "hello from Cleo");

  // A change reaches the others as a small push (what changed, not who is
  // in it); a member list on screen is asked for again.
  const settings = (page) => page.getByRole("region", { name: "Group settings" });
  await bob.page.getByRole("button", { name: "Group settings" }).click();
  const bobsList = settings(bob.page).getByRole("listitem");
  await bobsList.filter({ hasText: carol.name }).waitFor(WAIT);
  await carol.page.getByRole("button", { name: "Group settings" }).click();
  await settings(carol.page).getByLabel("Group name").fill("Trip 2027");
  await settings(carol.page).getByRole("button", { name: "Rename" }).click();
  await bob.page.getByRole("heading", { name: "Trip 2027" }).waitFor(WAIT);
  // Changes are told in the conversation.
  const notice = (page, text) => log(page).locator(".notice").filter({ hasText: text }).waitFor(WAIT);
  await notice(bob.page, `${carol.name} renamed the group to “Trip 2027”`);
  await notice(carol.page, "You renamed the group to “Trip 2027”");
  // Removing someone asks first; Cancel keeps them.
  await alice.page.getByRole("button", { name: "Group settings" }).click();
  await settings(alice.page).getByRole("button", { name: `Remove ${carol.name}` }).click();
  const asking = alice.page.getByRole("alertdialog", { name: `Remove ${carol.name}?` });
  await asking.getByRole("button", { name: "Cancel" }).click();
  await asking.waitFor({ state: "detached", ...WAIT });
  await settings(alice.page).getByRole("button", { name: `Remove ${carol.name}` }).click();
  // The whole question is in sight in the panel (it scrolls), not cut off.
  const [box, panel] = await Promise.all([asking.boundingBox(), settings(alice.page).boundingBox()]);
  assert.ok(box.y >= panel.y && box.y + box.height <= panel.y + panel.height, "the question is in sight");
  await shot(alice.page, "desktop-confirm-remove");
  await asking.getByRole("button", { name: "Remove" }).click();
  await bobsList.filter({ hasText: carol.name }).waitFor({ state: "detached", ...WAIT });
  await notice(bob.page, `${alice.name} removed ${carol.name}`);
  await shot(bob.page, "desktop-group-notices");
  await bob.page.setViewportSize({ width: 390, height: 844 });
  await shot(bob.page, "phone-group-settings");
  const fits = await settings(bob.page).evaluate((e) => e.getBoundingClientRect().right <= innerWidth);
  assert.ok(fits, "the settings panel fits the phone's width");
  await bob.page.setViewportSize({ width: 1280, height: 800 });
  assert.deepEqual(
    (await bobsList.allInnerTexts()).map((text) => text.split(" (owner)")[0].replace(/\s+Online$/, "").trim()),
    [alice.name, bob.name]
  );
  const gone = (page) => page.getByRole("status").filter({ hasText: "You are no longer in Trip 2027." }).waitFor(WAIT);
  await gone(carol.page);
  // Leaving asks too; the others are told.
  await bob.page.getByRole("button", { name: "Leave group" }).click();
  await bob.page.getByRole("alertdialog", { name: "Leave Trip 2027?" }).getByRole("button", { name: "Leave" }).click();
  await gone(bob.page);
  await notice(alice.page, `${bob.name} left`);
  await alice.page.getByRole("heading", { name: "Trip 2027" }).waitFor(WAIT);
  await alice.page.getByText("1 member", { exact: true }).waitFor(WAIT);
  for (const p of [alice, bob, carol]) await p.page.context().close();
});

test("blocking stops a conversation both ways until it is lifted", async () => {
  const [alice, bob] = await talking(["Ivy", "Long"], ["Rex", "Hale"], "hello Rex");
  await bob.page.getByRole("button", { name: `Block ${alice.name}` }).click();
  await bob.page.getByText(`You blocked ${alice.name}`).waitFor(WAIT);
  // Ivy's next message is refused, and she is told why.
  await alice.page.getByLabel("Message").fill("are you there?");
  await alice.page.getByLabel("Message").press("Enter");
  await alice.page
    .getByRole("alert")
    .filter({ hasText: "messages between you and this person are blocked" })
    .waitFor(WAIT);
  await bob.page.getByRole("button", { name: `Unblock ${alice.name}` }).click();
  await bob.page.getByRole("button", { name: `Block ${alice.name}` }).waitFor(WAIT);
  await say(alice.page, "back again");
  await received(bob.page, "back again");
  await alice.page.context().close();
  await bob.page.context().close();
});

test("two contacts with the same name are told apart by their usernames", async () => {
  const alice = await signUp("Nia", "Cole");
  const first = await signUp("Sam", "Lee");
  const second = await signUp("Sam", "Lee");
  await addContact(alice.page, first.username, first.name);
  await addContact(alice.page, second.username, second.name);
  for (const twin of [first, second]) {
    await item(alice.page, "Sam Lee").filter({ hasText: `@${twin.username}` }).waitFor(WAIT);
  }
  // The open conversation says whose it is, beside its heading.
  await alice.page.getByRole("heading", { name: "Sam Lee" }).waitFor(WAIT);
  await alice.page.locator(".chat-head .handle").filter({ hasText: `@${second.username}` }).waitFor(WAIT);
  for (const p of [alice, first, second]) await p.page.context().close();
});

test("the server restarts mid-conversation: messages sent meanwhile arrive without a reload", async () => {
  const [alice, bob] = await talking(["Ada", "Byron"], ["Bo", "Diddley"], "before the restart");

  // Bob's reconnection is held back until Alice has sent, so those
  // messages are surely sent while he is away.
  let holdBob = true;
  await bob.page.routeWebSocket(/\/chat$/, (ws) => {
    if (holdBob) ws.close();
    else ws.connectToServer();
  });
  await stopServer();
  await status(alice.page, "Reconnecting…");
  await status(bob.page, "Reconnecting…");
  // Who is online is not known meanwhile: not shown as it was.
  assert.equal(await bob.page.getByText("Online", { exact: true }).count(), 0);
  await startServer();
  await status(alice.page, "Connected");
  await say(alice.page, "while you were away 1");
  await say(alice.page, "while you were away 2");
  holdBob = false;
  await status(bob.page, "Connected");
  await received(bob.page, "while you were away 1");
  await received(bob.page, "while you were away 2");
  const texts = await log(bob.page).locator("[data-direction] .text").allInnerTexts();
  assert.deepEqual(texts, ["before the restart", "while you were away 1", "while you were away 2"]);
  await alice.page.context().close();
  await bob.page.context().close();
});

/** Routes a page's socket through the test (after a reload): `sent` and
 *  `got` record the frames each way; live `message` frames holding
 *  `tap.drop` are not passed on; while `tap.hold`, connecting fails; and
 *  `tap.cut()` drops the connection. */
async function tapped(page) {
  const tap = { sent: [], got: [], drop: null, hold: false, socket: null };
  await page.routeWebSocket(/\/chat$/, (ws) => {
    if (tap.hold) return ws.close();
    tap.socket = ws;
    const server = ws.connectToServer();
    ws.onMessage((m) => {
      tap.sent.push(JSON.parse(m));
      server.send(m);
    });
    server.onMessage((m) => {
      const frame = JSON.parse(m);
      tap.got.push(frame);
      if (!(tap.drop && frame.type === "message" && m.includes(tap.drop))) ws.send(m);
    });
  });
  tap.cut = () => tap.socket?.close({ code: 1001, reason: "cut by the test" });
  await page.reload();
  await status(page, "Connected");
  return tap;
}

const texts = (page) => log(page).locator("[data-direction] .text").allInnerTexts();

test("a message lost on the way is noticed by its seq and fetched with sync", async () => {
  const alice = await signUp("Hal", "Hole");
  const bob = await signUp("Flo", "Fill");
  await addContact(alice.page, bob.username, bob.name);
  await say(alice.page, "first");
  const tap = await tapped(bob.page);
  await open(bob.page, alice.name);
  await received(bob.page, "first");
  tap.drop = "lost on the way";
  await say(alice.page, "lost on the way");
  await say(alice.page, "after the hole");
  await received(bob.page, "lost on the way");
  assert.deepEqual(await texts(bob.page), ["first", "lost on the way", "after the hole"]);
  const syncs = tap.sent.filter((f) => f.type === "sync");
  assert.equal(syncs.length, 1, JSON.stringify(syncs));
  assert.equal(syncs[0].data.after_seq, 1, "synced from the last seq it had");
  assert.deepEqual([...alice.page.errors, ...bob.page.errors], []);
  await alice.page.context().close();
  await bob.page.context().close();
});

test("after a reconnect only the conversations that changed are synced", async () => {
  const alice = await signUp("Ida", "Away");
  const bob = await signUp("Rob", "Back");
  const carol = await signUp("Cat", "Still");
  await addContact(alice.page, bob.username, bob.name);
  await addContact(carol.page, bob.username, bob.name);
  await say(alice.page, "from Ida");
  await say(carol.page, "from Cat");
  const tap = await tapped(bob.page);
  await open(bob.page, carol.name);
  await received(bob.page, "from Cat");
  await open(bob.page, alice.name);
  await received(bob.page, "from Ida");
  const pk = tap.got.find((f) => f.type === "get_messages_response" && f.data.messages?.some((m) => m.content === "from Ida")).data.pk;

  tap.hold = true;
  tap.cut();
  await status(bob.page, "Reconnecting…");
  await say(alice.page, "while you were away");
  tap.sent.length = 0;
  tap.hold = false;
  await status(bob.page, "Connected");
  await received(bob.page, "while you were away");
  assert.deepEqual(await texts(bob.page), ["from Ida", "while you were away"]);
  const syncs = tap.sent.filter((f) => f.type === "sync");
  assert.deepEqual(syncs, [{ type: "sync", data: { id: pk, after_seq: 1, limit: 200 } }]);
  assert.deepEqual(tap.sent.filter((f) => f.type === "get_messages"), [], "no history asked again");
  for (const p of [alice, bob, carol]) await p.page.context().close();
});

/** The message in `page`'s log whose own text (not a quote of it) holds `text`. */
const bubble = (page, text) =>
  log(page)
    .locator("[data-direction]")
    .filter({ has: page.locator("span.text", { hasText: text }) })
    .last();

test("reply, edit, react and delete, live on both sides and after a reload", async () => {
  const [alice, bob] = await talking(["Rita", "Reply"], ["Sam", "Answer"], "lunch at noon?");

  // Bob replies: the quote shows above his message on both sides.
  await bubble(bob.page, "lunch at noon?").getByRole("button", { name: "Reply" }).click();
  await bob.page.getByText("Replying to Rita Reply").waitFor(WAIT);
  await say(bob.page, "yes, see you there");
  const reply = bubble(alice.page, "yes, see you there");
  await reply.waitFor(WAIT);
  await reply.getByRole("button", { name: "Go to the original from You: lunch at noon?" }).waitFor(WAIT);
  await bubble(bob.page, "yes, see you there")
    .getByRole("button", { name: "Go to the original from Rita Reply: lunch at noon?" })
    .waitFor(WAIT);
  // Bob starts another reply to it, still open when Alice edits.
  await bubble(bob.page, "lunch at noon?").getByRole("button", { name: "Reply" }).click();

  // Alice fixes her message: "edited" on both sides, and the quote follows.
  await bubble(alice.page, "lunch at noon?").getByRole("button", { name: "Edit" }).click();
  assert.equal(await alice.page.getByLabel("Message").inputValue(), "lunch at noon?");
  await alice.page.getByLabel("Message").fill("lunch at one?");
  await alice.page.getByRole("button", { name: "Save" }).click();
  await bubble(bob.page, "lunch at one?").getByText("edited", { exact: true }).waitFor(WAIT);
  await bubble(alice.page, "lunch at one?").getByText("edited", { exact: true }).waitFor(WAIT);
  await bubble(bob.page, "yes, see you there")
    .getByRole("button", { name: "Go to the original from Rita Reply: lunch at one?" })
    .waitFor(WAIT);
  // So does the reply Bob is writing.
  await bob.page.locator(".compose-context").getByText("lunch at one?", { exact: true }).waitFor(WAIT);
  await bob.page.getByRole("button", { name: "Cancel reply" }).click();

  // Reactions: the keyboard alone picks one; counts on both sides; Alice's own is pressed.
  const react = bubble(alice.page, "yes, see you there").getByRole("button", { name: "React" });
  await react.focus();
  await alice.page.keyboard.press("Enter");
  await alice.page.getByRole("button", { name: "React with 🎉" }).focus();
  await alice.page.keyboard.press("Enter");
  const mine = bubble(alice.page, "yes, see you there").getByRole("button", { name: "🎉 1" });
  await mine.waitFor(WAIT);
  assert.equal(await mine.getAttribute("aria-pressed"), "true");
  const theirs = bubble(bob.page, "yes, see you there").getByRole("button", { name: "🎉 1" });
  await theirs.waitFor(WAIT);
  assert.equal(await theirs.getAttribute("aria-pressed"), "false");
  await theirs.click(); // Bob adds his
  await bubble(alice.page, "yes, see you there").getByRole("button", { name: "🎉 2" }).waitFor(WAIT);
  await shot(alice.page, "desktop-replies-reactions");

  // A reload shows the same state, from history.
  await bob.page.reload();
  await open(bob.page, alice.name);
  const after = bubble(bob.page, "yes, see you there");
  assert.equal(await after.getByRole("button", { name: "🎉 2" }).getAttribute("aria-pressed"), "true");
  await bubble(bob.page, "lunch at one?").getByText("edited", { exact: true }).waitFor(WAIT);

  // Clicking the quote jumps to the original.
  await after.getByRole("button", { name: /^Go to the original from Rita Reply/ }).click();
  await bob.page.locator(".message.flash").filter({ hasText: "lunch at one?" }).waitFor(WAIT);

  // Delete asks first; Cancel keeps it, Delete removes it for everyone.
  await bubble(alice.page, "lunch at one?").getByRole("button", { name: "Delete" }).click();
  const confirm = alice.page.getByRole("alertdialog", { name: "Delete for everyone?" });
  await confirm.getByRole("button", { name: "Cancel" }).click();
  await bubble(alice.page, "lunch at one?").waitFor(WAIT);
  await bubble(alice.page, "lunch at one?").getByRole("button", { name: "Delete" }).click();
  await confirm.getByRole("button", { name: "Delete" }).click();
  await log(bob.page).getByText("Message deleted", { exact: true }).first().waitFor(WAIT);
  await log(alice.page).getByText("Message deleted", { exact: true }).first().waitFor(WAIT);
  assert.equal(await log(bob.page).getByText("lunch at one?").count(), 0, "the text is gone everywhere");
  // Bob cannot edit or delete Alice's messages: no such buttons.
  assert.equal(await bubble(bob.page, "yes, see you there").getByRole("button", { name: "Edit" }).count(), 1);
  const fromAlice = log(bob.page).locator('[data-direction="received"]');
  assert.equal(await fromAlice.getByRole("button", { name: "Edit" }).count(), 0);
  assert.equal(await fromAlice.getByRole("button", { name: "Delete" }).count(), 0);
  assert.deepEqual([...alice.page.errors, ...bob.page.errors], []);
  await alice.page.context().close();
  await bob.page.context().close();
});

test("the up arrow in an empty composer edits one's last message", async () => {
  const [alice, bob] = await talking(["Uma", "Park"], ["Vic", "Stone"], "first try");
  await say(alice.page, "secnod try");
  await say(bob.page, "got both");
  await received(alice.page, "got both");
  const composer = alice.page.getByLabel("Message");
  // With text in it, the arrow is only the caret's.
  await composer.fill("a line");
  await composer.press("ArrowUp");
  assert.equal(await composer.inputValue(), "a line");
  // Empty: her newest message (not Vic's, newer still) is opened for editing.
  await composer.fill("");
  await composer.press("ArrowUp");
  assert.equal(await composer.inputValue(), "secnod try");
  await alice.page.getByRole("button", { name: "Save" }).waitFor(WAIT);
  // The message being edited is marked in the log, and only it.
  const marked = () => log(alice.page).locator('[aria-current="true"]').allInnerTexts();
  const [editing] = await marked();
  assert.ok(editing.startsWith("secnod try"), editing);
  assert.equal((await marked()).length, 1);
  // Escape gives the composer back, empty.
  await composer.press("Escape");
  await alice.page.getByRole("button", { name: "Send" }).waitFor(WAIT);
  assert.equal(await composer.inputValue(), "");
  assert.deepEqual(await marked(), []);
  await composer.press("ArrowUp");
  await composer.fill("second try");
  await composer.press("Enter");
  await bubble(bob.page, "second try").getByText("edited", { exact: true }).waitFor(WAIT);
  assert.equal(await bubble(bob.page, "first try").getByText("edited", { exact: true }).count(), 0);
  assert.deepEqual([...alice.page.errors, ...bob.page.errors], []);
  await alice.page.context().close();
  await bob.page.context().close();
});

test("any emoji as a reaction: typed in the picker, refused when it is not one", async () => {
  const [alice, bob] = await talking(["Oda", "Emoji"], ["Ned", "Unicorn"], "look at this");
  const picker = async (page) => {
    await bubble(page, "look at this").getByRole("button", { name: "React" }).click();
    return page.getByRole("group", { name: "Pick a reaction" });
  };
  // Not an emoji: the server's reason, and nothing added.
  let open = await picker(bob.page);
  await open.getByLabel("Other emoji").fill("ok");
  await open.getByLabel("Other emoji").press("Enter");
  await bob.page.getByRole("alert").filter({ hasText: "emoji must be exactly one emoji" }).waitFor(WAIT);
  // One outside the picker's eight: on both sides, pressed for the one who gave it.
  open = await picker(bob.page);
  await open.getByLabel("Other emoji").fill("🦄");
  await open.getByRole("button", { name: "Add" }).click();
  const mine = bubble(bob.page, "look at this").getByRole("button", { name: "🦄 1" });
  await mine.waitFor(WAIT);
  assert.equal(await mine.getAttribute("aria-pressed"), "true");
  // The earlier refusal is out of date once a reaction succeeds.
  await bob.page.getByRole("alert").waitFor({ state: "detached", ...WAIT });
  await shot(bob.page, "desktop-other-emoji");
  const theirs = bubble(alice.page, "look at this").getByRole("button", { name: "🦄 1" });
  await theirs.waitFor(WAIT);
  assert.equal(await theirs.getAttribute("aria-pressed"), "false");
  // Given again, it stays (the field adds; it does not take back). A later
  // request's answer comes after that one's: once 👍 shows, 🦄's was handled.
  open = await picker(bob.page);
  await open.getByLabel("Other emoji").fill("🦄");
  await open.getByLabel("Other emoji").press("Enter");
  open = await picker(bob.page);
  await open.getByRole("button", { name: "React with 👍" }).click();
  await bubble(bob.page, "look at this").getByRole("button", { name: "👍 1" }).waitFor(WAIT);
  assert.equal(await bubble(bob.page, "look at this").getByRole("button", { name: "🦄 1" }).count(), 1);
  assert.deepEqual([...alice.page.errors, ...bob.page.errors], []);
  await alice.page.context().close();
  await bob.page.context().close();
});

test("phone width: reply and react", async () => {
  const phone = { width: 390, height: 844 };
  const alice = await signUp("Pia", "Phone", phone);
  const bob = await signUp("Pat", "Pocket", phone);
  await addContact(alice.page, bob.username, bob.name);
  await say(alice.page, "on my way");
  await open(bob.page, alice.name);
  await received(bob.page, "on my way");
  await bubble(bob.page, "on my way").getByRole("button", { name: "React" }).click();
  await bob.page.getByRole("button", { name: "React with 👍" }).click();
  await bubble(bob.page, "on my way").getByRole("button", { name: "Reply" }).click();
  await say(bob.page, "great");
  await bubble(alice.page, "on my way").getByRole("button", { name: "👍 1" }).waitFor(WAIT);
  await bubble(alice.page, "great").getByRole("button", { name: /^Go to the original from You/ }).waitFor(WAIT);
  await shot(alice.page, "phone-replies-reactions");
  assert.deepEqual([...alice.page.errors, ...bob.page.errors], []);
  await alice.page.context().close();
  await bob.page.context().close();
});

test("signing out all devices ends every session of the person", async () => {
  const alice = await signUp("Sia", "Everywhere");
  const other = await secondDevice(alice.username);
  await alice.page.getByRole("button", { name: "Account" }).click();
  await alice.page.getByRole("button", { name: "Sign out all devices" }).click();
  const ask = alice.page.getByRole("alertdialog", { name: "Sign out all devices?" });
  await ask.getByRole("button", { name: "Cancel" }).click();
  await status(other, "Connected");
  await alice.page.getByRole("button", { name: "Sign out all devices" }).click();
  await ask.getByRole("button", { name: "Sign out everywhere" }).click();
  for (const page of [alice.page, other]) {
    await page.getByRole("button", { name: "Log in" }).waitFor(WAIT);
  }
  await other.getByText(/signed out everywhere/).waitFor(WAIT);
  assert.deepEqual([...alice.page.errors, ...other.errors], []);
  await alice.page.context().close();
  await other.context().close();
});

test("markup in a message is shown as text", async () => {
  const alice = await signUp("Eve", "Hacker");
  const bob = await signUp("Tom", "Target");
  await addContact(alice.page, bob.username, bob.name);
  const evil = "<img src=x onerror=alert(1)>";
  await say(alice.page, evil);
  await open(bob.page, alice.name);
  await log(bob.page).getByText(evil, { exact: true }).waitFor(WAIT);
  assert.equal(await log(bob.page).locator("img").count(), 0);
  assert.equal(bob.page.dialogs + alice.page.dialogs, 0);
  await alice.page.context().close();
  await bob.page.context().close();
});

test("a right-to-left message reads right to left: its punctuation where its writer put it", async () => {
  // Hebrew: "Hello, how are you?" The question mark is written last, so
  // right to left it stands leftmost; on a left-to-right line it would
  // stand rightmost, after the first word.
  const hebrew = "שלום, מה שלומך?";
  const [alice, bob] = await talking(["Noa", "Levi"], ["Dan", "Cohen"], hebrew);
  await say(alice.page, "fine, thanks?");
  await received(bob.page, "fine, thanks?");
  // Where the first and the last character of a message's text are drawn.
  const ends = (text) =>
    log(bob.page)
      .locator(".text")
      .filter({ hasText: text })
      .evaluate((element) => {
        const node = element.firstChild;
        const at = (i) => {
          const range = document.createRange();
          range.setStart(node, i);
          range.setEnd(node, i + 1);
          return range.getBoundingClientRect().left;
        };
        return { first: at(0), last: at(node.length - 1) };
      });
  const rtl = await ends(hebrew);
  assert.ok(rtl.last < rtl.first, `the question mark is left of the first word: ${JSON.stringify(rtl)}`);
  const ltr = await ends("fine, thanks?");
  assert.ok(ltr.last > ltr.first, `left to right as before: ${JSON.stringify(ltr)}`);
  // The box one writes in takes the direction of what is typed.
  const box = bob.page.getByLabel("Message");
  await box.fill(hebrew);
  assert.equal(await box.evaluate((e) => getComputedStyle(e).direction), "rtl");
  await box.fill("hello");
  assert.equal(await box.evaluate((e) => getComputedStyle(e).direction), "ltr");
  assert.deepEqual([...alice.page.errors, ...bob.page.errors], []);
  await alice.page.context().close();
  await bob.page.context().close();
});

test("phone width, and a wrong password shows the server's message", async () => {
  const phone = { width: 390, height: 844 };
  const desktop = await person();
  await shot(desktop, "desktop-sign-in");
  await desktop.context().close();
  const page = await person(phone);
  await page.getByLabel("Username").fill("nobody");
  await page.getByLabel("Password").fill("wrong password");
  await page.getByRole("button", { name: "Log in" }).click();
  await page.getByRole("alert").filter({ hasText: "User not found" }).waitFor(WAIT);
  await shot(page, "phone-sign-in");
  await page.context().close();
  const alice = await signUp("Pia", "Phone", phone);
  const bob = await signUp("Pat", "Other");
  await addContact(alice.page, bob.username, bob.name);
  await say(alice.page, "from a phone");
  await shot(alice.page, "phone-conversation");
  await alice.page.getByRole("button", { name: "Back to conversations" }).click();
  await item(alice.page, bob.name).waitFor(WAIT);
  await shot(alice.page, "phone-conversations");
  await alice.page.context().close();
  await bob.page.context().close();
});

test("long names and words: nothing wider than a phone's window, and a long title leaves the buttons one line", async () => {
  const phone = { width: 390, height: 844 };
  const alice = await signUp("Pia", "Narrow", phone);
  const bob = await signUp("Bartholomew", "Featherstonehaugh-Wolfeschlegelsteinhausenbergerdorff");
  await addContact(alice.page, bob.username, bob.name);
  await say(alice.page, "Supercalifragilisticexpialidocious".repeat(4));
  // Nothing wider than the window: no sideways scrolling, and the header's
  // and the composer's buttons in sight.
  assert.equal(await alice.page.evaluate(() => document.documentElement.scrollWidth), phone.width);
  for (const name of ["Log out", "Mute", "Send"]) {
    const box = await alice.page.getByRole("button", { name }).boundingBox();
    assert.ok(box.x + box.width <= phone.width, `${name} is inside the window`);
  }
  // Replying to it: the bar's Cancel reply keeps one line beside the quote.
  await log(alice.page).locator('[data-direction="send"]').last().getByRole("button", { name: "Reply" }).click();
  const cancel = alice.page.getByRole("button", { name: "Cancel reply" });
  const lines = await cancel.evaluate((element) => {
    const range = document.createRange();
    range.selectNodeContents(element);
    return range.getClientRects().length;
  });
  assert.equal(lines, 1, "Cancel reply on one line");
  await shot(alice.page, "phone-long-name");
  // At desktop width a long group title takes the room it has, and the
  // count and Group settings beside it keep one line (as tall as Log out).
  await alice.page.setViewportSize({ width: 1280, height: 800 });
  await alice.page.getByRole("button", { name: "New group" }).click();
  const title = "The very long named weekend hiking and climbing trip of 2027";
  await alice.page.getByLabel("Title").fill(title);
  await alice.page.getByRole("checkbox", { name: bob.name }).check();
  await alice.page.getByRole("button", { name: "Create group" }).click();
  await alice.page.getByRole("heading", { name: title }).waitFor(WAIT);
  const settings = await alice.page.getByRole("button", { name: "Group settings" }).boundingBox();
  const logOut = await alice.page.getByRole("button", { name: "Log out" }).boundingBox();
  assert.ok(Math.abs(settings.height - logOut.height) < 1, `Group settings on one line: ${settings.height} against ${logOut.height}`);
  // On a phone the count and the buttons take a row of their own, and
  // the title has the first row's room (the back button beside it).
  await alice.page.setViewportSize(phone);
  const heading = await alice.page.getByRole("heading", { name: title }).boundingBox();
  assert.ok(heading.width > phone.width / 2, `the title has room: ${heading.width} px`);
  assert.equal(await alice.page.evaluate(() => document.documentElement.scrollWidth), phone.width);
  await shot(alice.page, "phone-long-title");
  await alice.page.context().close();
  await bob.page.context().close();
});

test("several tabs of one person stay in step; the keyboard alone is enough", async () => {
  const alice = await signUp("Tia", "Tabs");
  const bob = await signUp("Kai", "Keys");
  await addContact(alice.page, bob.username, bob.name);
  const second = watch(await alice.page.context().newPage());
  await second.goto(`${base}/`);
  await status(second, "Connected");
  // What one tab sends, the other shows (its list, live).
  await say(alice.page, "from the first tab");
  await item(second, bob.name).filter({ hasText: "from the first tab" }).waitFor(WAIT);

  // Bob, by keyboard: focus the conversation, Enter opens it, type, Enter sends.
  await item(bob.page, alice.name).getByRole("button").focus();
  await bob.page.keyboard.press("Enter");
  await bob.page.getByRole("heading", { name: alice.name }).waitFor(WAIT);
  await bob.page.getByLabel("Message").focus();
  await bob.page.keyboard.type("typed, not clicked");
  await bob.page.keyboard.press("Enter");
  await received(alice.page, "typed, not clicked");
  // The first tab has the conversation open and reads it: the second tab,
  // which only lists it, loses its unread count too.
  await item(second, bob.name).filter({ hasText: "typed, not clicked" }).waitFor(WAIT);
  await item(second, bob.name).filter({ hasNotText: "unread" }).waitFor(WAIT);
  await open(second, bob.name);
  await log(second).locator('[data-direction="send"]').filter({ hasText: "from the first tab" }).waitFor(WAIT);
  assert.deepEqual([...alice.page.errors, ...second.errors, ...bob.page.errors], []);
  await alice.page.context().close();
  await bob.page.context().close();
});

/** Connections to `port` go to each backend in turn (a layer-4 balancer). */
function roundRobin(listen, backends) {
  let next = 0;
  const proxy = createServer((client) => {
    const target = backends[next++ % backends.length];
    const upstream = connect(target, "127.0.0.1");
    client.pipe(upstream).pipe(client);
    const close = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on("error", close);
    upstream.on("error", close);
  });
  return new Promise((done) => proxy.listen(listen, "127.0.0.1", () => done(proxy)));
}

const POSTGRES = process.env.TEST_POSTGRES_URL;
const REDIS = process.env.TEST_REDIS_URL;

test(
  "two instances behind one address: any serves any page and any socket",
  { skip: !(POSTGRES && REDIS) && "needs TEST_POSTGRES_URL and TEST_REDIS_URL" },
  async () => {
    const database = `e2e_${process.pid}_${Date.now()}`;
    execFileSync("psql", [POSTGRES, "-qc", `CREATE DATABASE ${database}`]);
    const url = POSTGRES.replace(/\/[^/]*$/, `/${database}`);
    const ports = [await freePort(), await freePort()];
    // Both run in one directory: their attachments/ is one they share.
    const env = { DATABASE_URL: url, REDIS_URL: REDIS, REDIS_PREFIX: database, WORKERS: "1", ATTACHMENTS_SHARED: "1" };
    const instances = [];
    for (const p of ports) instances.push(await launch(p, env));
    const front = await freePort();
    const proxy = await roundRobin(front, ports);
    const at = `http://127.0.0.1:${front}`;
    try {
      const alice = await signUp("Una", "Front", undefined, at);
      const bob = await signUp("Duo", "Back", undefined, at);
      await addContact(alice.page, bob.username, bob.name);
      await say(alice.page, "through the balancer");
      await open(bob.page, alice.name);
      await received(bob.page, "through the balancer");
      // Reloads land on the other instance as often as not.
      for (let i = 0; i < 3; i++) {
        await bob.page.reload();
        await status(bob.page, "Connected");
        await open(bob.page, alice.name);
        await received(bob.page, "through the balancer");
        await say(bob.page, `reply ${i}`);
        await received(alice.page, `reply ${i}`);
      }
      await alice.page.context().close();
      await bob.page.context().close();
    } finally {
      proxy.close();
      for (const child of instances) await stop(child);
      execFileSync("psql", [POSTGRES, "-qc", `DROP DATABASE IF EXISTS ${database} WITH (FORCE)`]);
    }
  }
);

test("logging out revokes this device's token only", async () => {
  const alice = await signUp("Lou", "Logout");
  const other = await secondDevice(alice.username);
  const tokenOf = (page) =>
    page.evaluate(() => JSON.parse(localStorage.getItem("chat.session")).token);
  const [mine, theirs] = [await tokenOf(alice.page), await tokenOf(other)];
  const me = (token) => fetch(`${base}/api/me/`, { headers: { Authorization: `Bearer ${token}` } });
  const signedOut = alice.page.waitForResponse((r) => r.url().endsWith("/api/logout/"));
  await alice.page.getByRole("button", { name: "Log out" }).click();
  await alice.page.getByRole("button", { name: "Log in" }).waitFor(WAIT);
  assert.equal((await signedOut).status(), 204);
  assert.equal((await me(mine)).status, 401, "the token is revoked on the server");
  assert.equal((await me(theirs)).status, 200, "the other device's token is not");
  await status(other, "Connected");
  assert.deepEqual([...alice.page.errors, ...other.errors], []);
  await alice.page.context().close();
  await other.context().close();
});

test("a revoked token returns to sign-in with a message", async () => {
  const alice = await signUp("Rex", "Revoked");
  const session = await alice.page.evaluate(() => JSON.parse(localStorage.getItem("chat.session")));
  const res = await fetch(`${base}/api/password/`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${session.token}` },
    body: JSON.stringify({ old_password: PASSWORD, new_password: "another long passphrase" }),
  });
  assert.equal(res.status, 200);
  await alice.page.getByRole("alert").filter({ hasText: "log in again" }).waitFor(WAIT);
  await alice.page.getByRole("button", { name: "Log in" }).waitFor(WAIT);
  // A reload stays signed out: the token was dropped.
  await alice.page.reload();
  await alice.page.getByRole("button", { name: "Log in" }).waitFor(WAIT);
  await alice.page.context().close();
});

test("search finds a message by its words, marks them, and opens the conversation at it", async () => {
  const [alice, bob] = await talking(["Sol", "Search"], ["Tom", "Finder"], "Un <b>café</b> au lait?");
  await say(alice.page, "or tea instead");
  await say(alice.page, "the quick brown fox");
  await say(alice.page, "日本語のテキストを検索する");

  // Case and accents ignored; the matched word is marked, the markup shown as text.
  const box = bob.page.getByRole("searchbox", { name: "Search" });
  await box.fill("CAFE");
  const results = bob.page.getByRole("list", { name: "Search results" });
  const found = results.getByRole("listitem").filter({ hasText: "Un <b>café</b> au lait?" });
  await found.waitFor(WAIT);
  assert.equal(await results.getByRole("listitem").count(), 1);
  assert.equal(await found.locator("mark").textContent(), "café");
  assert.ok((await found.textContent()).startsWith(alice.name), "the conversation's name comes first");
  // Each of the two lists is captioned while searching, so that a result is
  // not taken for a conversation.
  const captions = bob.page.locator(".side .caption");
  assert.deepEqual(await captions.allTextContents(), ["Messages", "Conversations"]);
  await shot(bob.page, "desktop-search");

  // Clicking the result opens the conversation at the message.
  await open(bob.page, alice.name);
  await bob.page.getByRole("heading", { name: alice.name }).waitFor(WAIT);
  await found.getByRole("button").click();
  await bob.page.locator(".message.flash").filter({ hasText: "café" }).waitFor(WAIT);

  // A word in no message: said so. Escape goes back to the list alone.
  await box.fill("zebra");
  await bob.page.getByText("No messages found.").waitFor(WAIT);
  await box.press("Escape");
  await results.waitFor({ state: "detached", ...WAIT });
  assert.equal(await box.inputValue(), "");
  assert.equal(await captions.count(), 0);

  // Japanese, written without spaces: a word inside the text finds it, marked.
  await box.fill("テキスト");
  const japanese = results.getByRole("listitem").filter({ hasText: "日本語のテキストを検索する" });
  await japanese.waitFor(WAIT);
  assert.equal(await results.getByRole("listitem").count(), 1);
  assert.equal(await japanese.locator("mark").textContent(), "テキスト");
  await box.press("Escape");

  // Alice, at phone width, finds by a prefix of the last word.
  await alice.page.setViewportSize({ width: 390, height: 844 });
  await alice.page.goto(`${base}/`);
  await alice.page.getByRole("searchbox", { name: "Search" }).fill("quick bro");
  const hit = alice.page.getByRole("list", { name: "Search results" }).getByRole("listitem");
  await hit.filter({ hasText: "the quick brown fox" }).waitFor(WAIT);
  assert.deepEqual(await hit.locator("mark").allTextContents(), ["quick", "bro"]);
  await shot(alice.page, "phone-search");
  await hit.getByRole("button").click();
  await alice.page.getByRole("heading", { name: bob.name }).waitFor(WAIT);
  await alice.page.locator(".message.flash").filter({ hasText: "the quick brown fox" }).waitFor(WAIT);
  assert.deepEqual([...alice.page.errors, ...bob.page.errors], []);
  await alice.page.context().close();
  await bob.page.context().close();
});

/** Sends `count` messages as the page's person through a socket of its
 *  own (the app's token, from its storage) and waits for every answer.
 *  At most 200 go unanswered at a time: a client that sends faster than
 *  it reads the answers is closed as a slow consumer (PROTOCOL.md C1). */
async function sendMany(page, count, text) {
  await page.evaluate(
    ({ count, text }) =>
      new Promise((resolve, reject) => {
        const { token } = JSON.parse(localStorage.getItem("chat.session"));
        const ws = new WebSocket(`ws://${location.host}/chat`);
        let to;
        let sent = 0;
        let answered = 0;
        const more = () => {
          for (; sent < count && sent - answered < 200; sent += 1) {
            ws.send(JSON.stringify({ type: "message", data: { to, content: `${text} ${sent}` } }));
          }
        };
        ws.onopen = () => ws.send(JSON.stringify({ type: "authorization", data: { token } }));
        ws.onerror = reject;
        ws.onclose = ({ code, reason }) => reject(new Error(`closed after ${answered} answers: ${code} ${reason}`));
        ws.onmessage = ({ data }) => {
          const frame = JSON.parse(data);
          if (frame.type === "authorization_response") ws.send(JSON.stringify({ type: "get_contacts", data: {} }));
          if (frame.type === "get_contacts_response") {
            to = frame.data[0].pk;
            more();
          }
          if (frame.type !== "message_response") return;
          if (frame.data.status !== "success") reject(new Error(`message refused: ${JSON.stringify(frame.data)}`));
          answered += 1;
          if (answered === count) {
            ws.onclose = null;
            ws.close();
            resolve();
          } else more();
        };
      }),
    { count, text }
  );
}

test("a search result far back opens a window there that grows both ways, and Jump to latest", async () => {
  const [alice, bob] = await talking(["Ida", "Deep"], ["Max", "Reader"], "the lighthouse keeper");
  await sendMany(alice.page, 120, "filler line");
  await received(bob.page, "filler line 119");
  // Loaded afresh, Bob's client holds none of it.
  await bob.page.goto(`${base}/`);
  await status(bob.page, "Connected");

  await bob.page.getByRole("searchbox", { name: "Search" }).fill("lighthouse");
  const hit = bob.page.getByRole("list", { name: "Search results" }).getByRole("listitem");
  await hit.filter({ hasText: "the lighthouse keeper" }).click();
  await bob.page.locator(".message.flash").filter({ hasText: "the lighthouse keeper" }).waitFor(WAIT);
  // A window of one page from the result: the newest are not there yet.
  const latest = bob.page.getByRole("button", { name: "Jump to latest" });
  await latest.waitFor(WAIT);
  await shot(bob.page, "desktop-window");
  assert.equal(await log(bob.page).locator(".message").filter({ hasText: "filler line 119" }).count(), 0);

  // A message sent meanwhile waits below the window, and joins once the
  // window reaches the end by scrolling down.
  await say(alice.page, "are you there?");
  const history = log(bob.page);
  const messages = history.locator(".message");
  for (let page = 0; page < 10 && (await latest.count()) > 0; page += 1) {
    const shownBefore = await messages.count();
    await history.evaluate((el) => el.scrollTo(0, el.scrollHeight));
    await bob.page.waitForFunction(
      (n) => document.querySelectorAll('[role="log"] .message').length > n || !document.querySelector(".latest"),
      shownBefore,
      WAIT
    );
  }
  await received(bob.page, "are you there?");
  await latest.waitFor({ state: "detached", ...WAIT });
  const shown = await history.locator(".message .text").allTextContents();
  const fillers = shown.filter((t) => t.startsWith("filler line"));
  assert.deepEqual(fillers, [...Array(120).keys()].map((i) => `filler line ${i}`), "no gap, no repeat");
  assert.equal(shown.at(-1), "are you there?");

  // After a reload (nothing loaded), at phone width, the result opens a
  // window again, and Jump to latest leaves it for the newest page.
  await bob.page.setViewportSize({ width: 390, height: 844 });
  await bob.page.goto(`${base}/`);
  await bob.page.getByRole("searchbox", { name: "Search" }).fill("lighthouse");
  await hit.filter({ hasText: "the lighthouse keeper" }).click();
  await bob.page.locator(".message.flash").filter({ hasText: "the lighthouse keeper" }).waitFor(WAIT);
  await shot(bob.page, "phone-window");
  await latest.click();
  await latest.waitFor({ state: "detached", ...WAIT });
  await received(bob.page, "are you there?");
  assert.equal(await messages.filter({ hasText: "the lighthouse keeper" }).count(), 0, "only the newest page");
  assert.deepEqual([...alice.page.errors, ...bob.page.errors], []);
  await alice.page.context().close();
  await bob.page.context().close();
});

/** Records what the page shows and plays: the browser's own Notification
 *  (with the permission the test grants), wrapped to note each one in
 *  `window.__notes`, and an AudioContext stand-in counting tones in
 *  `__beeps` (a headless browser has no sound device). */
function notificationStub() {
  window.__notes = [];
  window.__beeps = 0;
  // The test grants the permission up front; the page sees "default" (not
  // asked yet) until it asks, so the question is the page's own, on a click.
  const Real = window.Notification;
  window.__asked = false;
  window.Notification = class extends Real {
    static get permission() {
      return window.__asked ? Real.permission : "default";
    }
    static requestPermission() {
      window.__asked = true;
      return Real.requestPermission();
    }
    constructor(title, options) {
      super(title, options);
      window.__notes.push({ title, ...options });
    }
  };
  class FakeAudio {
    state = "suspended";
    currentTime = 0;
    destination = {};
    resume() {
      this.state = "running";
      return Promise.resolve();
    }
    createOscillator() {
      window.__beeps += 1;
      return { frequency: {}, connect: (to) => to, start() {}, stop() {} };
    }
    createGain() {
      return { gain: { setValueAtTime() {}, exponentialRampToValueAtTime() {} }, connect: (to) => to };
    }
  }
  window.AudioContext = FakeAudio;
}

test("notifications: asked for on a click, shown for a conversation not looked at; the unread total in the title", async () => {
  const [alice, bob] = await talking(["Nora", "Notes"], ["Ned", "Noticed"], "first");
  await bob.page.context().addInitScript(notificationStub);
  // The person will say yes to the browser's question.
  await bob.page.context().grantPermissions(["notifications"], { origin: base });
  // Loaded afresh at the list: no conversation open.
  await bob.page.goto(`${base}/`);
  await status(bob.page, "Connected");
  const recorded = () => bob.page.evaluate(() => ({ notes: window.__notes, beeps: window.__beeps }));
  const icon = () => bob.page.locator('link[rel="icon"]').getAttribute("href");

  // Nothing asked on load; asked on the click.
  const enable = bob.page.getByRole("button", { name: "Enable notifications" });
  await enable.waitFor(WAIT);
  await ownIcon(enable, "Enable notifications");
  await shot(bob.page, "desktop-enable-notifications");
  await bob.page.setViewportSize({ width: 390, height: 844 });
  await shot(bob.page, "phone-enable-notifications");
  await bob.page.setViewportSize({ width: 1280, height: 800 });
  assert.equal(await bob.page.evaluate(() => window.__asked), false, "never asked on load");
  await enable.click();
  await enable.waitFor({ state: "detached", ...WAIT });
  assert.equal(await bob.page.title(), "Chat");

  // No conversation open: a notification, a sound, the title and the icon.
  await say(alice.page, "are you there?");
  await bob.page.waitForFunction(() => document.title === "(1) Chat", null, WAIT);
  const { notes, beeps } = await recorded();
  assert.equal(notes.length, 1);
  assert.deepEqual([notes[0].title, notes[0].body, beeps], [alice.name, "are you there?", 1]);
  assert.match(notes[0].tag, /^[0-9a-f-]{36}$/, "one notification per conversation, by its pk");
  assert.equal(await icon(), "/app/unread.svg");
  await shot(bob.page, "desktop-notification");

  // Opened and read: the title and icon go back.
  await open(bob.page, alice.name);
  await bob.page.waitForFunction(() => document.title === "Chat", null, WAIT);
  assert.equal(await icon(), "/favicon.svg");

  // Looking at the conversation: no notification, no sound.
  await say(alice.page, "good");
  await received(bob.page, "good");
  const after = await recorded();
  assert.equal(after.notes.length, 1);
  assert.equal(after.beeps, 1);

  // Muted: kept by the server (so after a reload too), counted in its item,
  // neither told nor in the title.
  await bob.page.getByRole("button", { name: "Mute", pressed: false }).click();
  await bob.page.getByRole("button", { name: "Mute", pressed: true }).waitFor(WAIT);
  await bob.page.reload();
  await status(bob.page, "Connected");
  await open(bob.page, alice.name);
  await bob.page.getByRole("button", { name: "Mute", pressed: true }).waitFor(WAIT);
  await bob.page.evaluate(() => Object.defineProperty(document, "visibilityState", { get: () => "hidden" }));
  await say(alice.page, "muted news");
  await item(bob.page, alice.name).getByText("1 unread").waitFor(WAIT);
  await item(bob.page, alice.name).getByText("Muted", { exact: true }).waitFor(WAIT);
  await ownIcon(bob.page.getByRole("button", { name: "Mute", pressed: true }), "Mute");
  await ownIcon(item(bob.page, alice.name).locator(".muted"), "Muted");
  await shot(bob.page, "desktop-muted");
  assert.equal(await bob.page.title(), "Chat");
  assert.deepEqual(await recorded(), { notes: [], beeps: 0 });
  assert.deepEqual([...alice.page.errors, ...bob.page.errors], []);
  await alice.page.context().close();
  await bob.page.context().close();
});

test("an unread count past the server's window shows as 10000+, in the item and the title", async () => {
  // A server of its own, whose rate limit lets one socket send 10,005
  // messages in a few seconds.
  const home = join(dir, "window");
  mkdirSync(home);
  const on = await freePort();
  const own = await launch(on, {
    DATABASE_URL: `sqlite://${join(home, "chat.db")}?mode=rwc`,
    RATE_LIMIT_PER_SECOND: "100000",
    RATE_LIMIT_BURST: "100000",
  });
  const at = `http://127.0.0.1:${on}`;
  try {
    const alice = await signUp("Wanda", "Window", undefined, at);
    const bob = await signUp("Bert", "Behind", undefined, at);
    await addContact(alice.page, bob.username, bob.name);
    // Away while it all arrives; alice sends from a page without the app,
    // so no page of hers draws ten thousand messages.
    await bob.page.goto(`${at}/readyz`);
    await alice.page.goto(`${at}/readyz`);
    await sendMany(alice.page, 10005, "backlog");
    await bob.page.goto(`${at}/`);
    await status(bob.page, "Connected");
    await item(bob.page, alice.name).getByText("10000+ unread").waitFor(WAIT);
    await bob.page.waitForFunction(() => document.title === "(10000+) Chat", null, WAIT);
    await shot(bob.page, "desktop-unread-window");
    await bob.page.setViewportSize({ width: 390, height: 844 });
    await shot(bob.page, "phone-unread-window");
    await bob.page.setViewportSize({ width: 1280, height: 800 });
    // A live message keeps it "at least".
    await sendMany(alice.page, 1, "one more");
    await bob.page.waitForFunction(() => document.title === "(10001+) Chat", null, WAIT);
    await item(bob.page, alice.name).getByText("10000+ unread").waitFor(WAIT);
    // Opened, it is all read.
    await open(bob.page, alice.name);
    await received(bob.page, "one more 0");
    await bob.page.waitForFunction(() => document.title === "Chat", null, WAIT);
    await item(bob.page, alice.name).filter({ hasNotText: "unread" }).waitFor(WAIT);
    assert.deepEqual([...alice.page.errors, ...bob.page.errors], []);
    await alice.page.context().close();
    await bob.page.context().close();
  } finally {
    await stop(own);
  }
});

test("each conversation has its own URL: a reload keeps it, a link opens it, Back returns to the list", async () => {
  const [alice, bob] = await talking(["Ula", "Url"], ["Ugo", "Urban"], "hello");
  const page = bob.page;
  const pk = /#\/c\/([0-9a-f-]{36})$/.exec(page.url())?.[1];
  assert.ok(pk, page.url());
  await page.reload();
  await page.getByRole("heading", { name: alice.name }).waitFor(WAIT);
  await received(page, "hello");

  // The browser's (or phone's) Back: the list; Forward: the conversation.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goBack();
  await page.getByRole("heading", { name: alice.name }).waitFor({ state: "detached", ...WAIT });
  await list(page).waitFor(WAIT);
  await page.waitForFunction(() => location.hash === "", null, WAIT);
  await shot(page, "phone-back-to-list");
  await page.goForward();
  await page.getByRole("heading", { name: alice.name }).waitFor(WAIT);
  // The page's own back button goes back through history too.
  await page.getByRole("button", { name: "Back to conversations" }).click();
  await list(page).waitFor(WAIT);
  await page.waitForFunction(() => location.hash === "", null, WAIT);

  // A link opens the conversation on another device of the person.
  const other = await secondDevice(bob.username);
  await other.goto(`${base}/#/c/${pk}`);
  await other.getByRole("heading", { name: alice.name }).waitFor(WAIT);
  await received(other, "hello");
  assert.deepEqual([...alice.page.errors, ...page.errors, ...other.errors], []);
  await alice.page.context().close();
  await page.context().close();
  await other.context().close();
});

test("Web Push: the service worker shows a push as a notification of its conversation", async () => {
  const [alice, bob] = await talking(["Pia", "Push"], ["Pat", "Pushed"], "hi");
  const page = bob.page;
  const pk = /#\/c\/([0-9a-f-]{36})$/.exec(page.url())?.[1];
  await page.context().grantPermissions(["notifications"], { origin: base });
  const cdp = await page.context().newCDPSession(page);
  const registrations = new Map();
  cdp.on("ServiceWorker.workerRegistrationUpdated", ({ registrations: updated }) => {
    for (const r of updated) if (!r.isDeleted) registrations.set(r.scopeURL, r.registrationId);
  });
  await cdp.send("ServiceWorker.enable");
  // Allowed: the page registers /sw.js (and asks the browser's push
  // service for a subscription, which this offline machine cannot reach).
  await page.reload();
  await status(page, "Connected");
  await page.waitForFunction(() => navigator.serviceWorker.getRegistration("/").then((r) => !!r?.active), null, WAIT);
  const scope = `${base}/`;
  for (let i = 0; i < 100 && !registrations.has(scope); i += 1) await new Promise((r) => setTimeout(r, 50));
  assert.ok(registrations.has(scope), JSON.stringify([...registrations]));

  const payload = { pk, title: alice.name, sender: alice.name, preview: "while you were away" };
  const deliver = () =>
    cdp.send("ServiceWorker.deliverPushMessage", {
      origin: base,
      registrationId: registrations.get(scope),
      data: JSON.stringify(payload),
    });
  const shown = async () =>
    page.evaluate(async () => {
      const registration = await navigator.serviceWorker.ready;
      const notes = await registration.getNotifications();
      return notes.map((n) => ({ title: n.title, body: n.body, tag: n.tag, pk: n.data?.pk }));
    });
  // A worker still starting may miss a push (a push service would retry):
  // delivered again until shown; one tag, so never two notifications.
  let notes = [];
  for (let i = 0; i < 150 && notes.length === 0; i += 1) {
    if (i % 20 === 0) await deliver();
    notes = await shown();
    if (notes.length === 0) await new Promise((r) => setTimeout(r, 100));
  }
  assert.deepEqual(notes, [{ title: alice.name, body: "while you were away", tag: pk, pk }]);
  assert.deepEqual([...alice.page.errors, ...page.errors], []);
  await alice.page.context().close();
  await page.context().close();
});

test("day to day: day separators, links, several lines, a draft per conversation, the length count, New messages, Jump to latest", async () => {
  const [alice, bob] = await talking(["Dora", "Daily"], ["Dan", "Dayto"], "first");
  const page = bob.page;
  await log(page).locator(".day").filter({ hasText: "Today" }).waitFor(WAIT);

  // Links: http(s) only, opened safely; anything else stays text.
  await say(alice.page, "see https://example.com/a?b=1. and javascript:alert(1)");
  await received(page, "see https://example.com/a?b=1.");
  const link = log(page).getByRole("link", { name: "https://example.com/a?b=1" });
  assert.deepEqual(
    [await link.getAttribute("href"), await link.getAttribute("rel"), await link.getAttribute("target")],
    ["https://example.com/a?b=1", "noopener noreferrer", "_blank"]
  );
  assert.equal(await log(page).getByRole("link").count(), 1);

  // Shift+Enter is a new line, Enter sends.
  const composer = page.getByLabel("Message");
  await composer.fill("line one");
  await composer.press("Shift+Enter");
  await composer.pressSequentially("line two");
  assert.equal(await composer.inputValue(), "line one\nline two");
  await composer.press("Enter");
  await received(alice.page, "line one");
  const text = await log(alice.page).locator('[data-direction="received"] .text').last().textContent();
  assert.equal(text, "line one\nline two");
  // Dora read it: "Read" shows, and still does after a reload.
  const read = log(page).locator('[data-direction="send"]').filter({ hasText: "line one" }).getByText("Read");
  await read.waitFor(WAIT);
  await page.reload();
  await status(page, "Connected");
  await read.waitFor(WAIT);

  // Too long: counted, refused with the reason, not cut.
  await composer.fill("x".repeat(4001));
  await page.getByText("4001 / 4000 characters: too long to send").waitFor(WAIT);
  await composer.press("Enter");
  await page.getByRole("alert").filter({ hasText: "at most 4000 characters; this one has 4001" }).waitFor(WAIT);
  assert.equal((await composer.inputValue()).length, 4001);

  // A draft stays with its conversation.
  const carol = await signUp("Cleo", "Drafts");
  await addContact(page, carol.username, carol.name);
  await composer.fill("for Cleo, later");
  await open(page, alice.name);
  assert.equal((await composer.inputValue()).length, 4001, "Dora's own draft is back");
  await composer.fill("");
  await open(page, carol.name);
  assert.equal(await composer.inputValue(), "for Cleo, later");

  // Away from Dora's conversation, three messages: opened, they follow a
  // "New messages" divider.
  for (const line of ["news one", "news two", "news three"]) await say(alice.page, line);
  await item(page, alice.name).getByText("3 unread").waitFor(WAIT);
  await open(page, alice.name);
  const divider = log(page).locator(".divider");
  await divider.waitFor(WAIT);
  assert.equal(await divider.textContent(), "New messages");
  const after = await divider.evaluate((d) => d.nextElementSibling.querySelector(".text").textContent);
  assert.equal(after, "news one");
  await shot(page, "desktop-day-to-day");

  // Scrolled up when a message comes: Jump to latest brings it into view.
  await sendMany(alice.page, 30, "filler");
  await received(page, "filler 29");
  await log(page).evaluate((e) => {
    e.scrollTop = 60;
    e.dispatchEvent(new Event("scroll"));
  });
  await say(alice.page, "down here");
  const latest = page.getByRole("button", { name: "Jump to latest" });
  await latest.waitFor(WAIT);
  await latest.click();
  await latest.waitFor({ state: "detached", ...WAIT });
  const atBottom = await log(page).evaluate((e) => e.scrollHeight - e.scrollTop - e.clientHeight < 40);
  assert.ok(atBottom, "scrolled to the newest");

  await page.emulateMedia({ colorScheme: "dark" });
  await shot(page, "desktop-dark");
  await page.setViewportSize({ width: 390, height: 844 });
  await shot(page, "phone-dark");
  assert.deepEqual([...alice.page.errors, ...page.errors, ...carol.page.errors], []);
  for (const p of [alice.page, page, carol.page]) await p.context().close();
});

test("the account panel changes the password: this device goes on, the others are signed out", async () => {
  const alice = await signUp("Pam", "Secret");
  const other = await secondDevice(alice.username);
  const page = alice.page;
  await page.getByRole("button", { name: "Account" }).click();
  const panel = page.getByRole("region", { name: "Account" });
  // Focus goes to the field that was opened.
  await page.waitForFunction(() => document.activeElement?.name === "old_password", null, WAIT);
  await panel.getByLabel("Current password").fill("wrong password here");
  await panel.getByLabel("New password").fill("a much better passphrase");
  await panel.getByRole("button", { name: "Change password" }).click();
  await panel.getByRole("alert").waitFor(WAIT);
  await panel.getByLabel("Current password").fill(PASSWORD);
  await panel.getByLabel("New password").fill("a much better passphrase");
  await shot(page, "desktop-account");
  await page.setViewportSize({ width: 390, height: 844 });
  await shot(page, "phone-account");
  await page.setViewportSize({ width: 1280, height: 800 });
  await panel.getByRole("button", { name: "Change password" }).click();
  await other.getByRole("button", { name: "Log in" }).waitFor(WAIT);
  await status(page, "Connected");
  await page.reload();
  await status(page, "Connected");
  // The new password works; Escape closes the panel.
  await page.getByRole("button", { name: "Account" }).click();
  await page.waitForFunction(() => document.activeElement?.name === "old_password", null, WAIT);
  await page.keyboard.press("Escape");
  await page.getByRole("region", { name: "Account" }).waitFor({ state: "detached", ...WAIT });
  await other.getByLabel("Username").fill(alice.username);
  await other.getByLabel("Password").fill("a much better passphrase");
  await other.getByRole("button", { name: "Log in" }).click();
  await status(other, "Connected");
  assert.deepEqual([...page.errors, ...other.errors], []);
  await page.context().close();
  await other.context().close();
});

/** A PNG of `width` × `height` pixels of one colour. */
function png(width, height, [r, g, b] = [40, 120, 200]) {
  const chunk = (type, data) => {
    const body = Buffer.concat([Buffer.from(type, "ascii"), data]);
    const length = Buffer.alloc(4);
    length.writeUInt32BE(data.length);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(body));
    return Buffer.concat([length, body, crc]);
  };
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header.set([8, 2, 0, 0, 0], 8);
  const row = Buffer.alloc(1 + width * 3);
  for (let x = 0; x < width; x++) row.set([r, g, b], 1 + x * 3);
  const pixels = Buffer.concat(Array.from({ length: height }, () => row));
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", header),
    chunk("IDAT", deflateSync(pixels)),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}

/** Hands `files` to the page as a drop on the conversation, or a paste in
 *  the composer: what a person's drag and drop or Ctrl+V does. */
async function hand(page, how, files) {
  const payload = files.map(({ name, mimeType, buffer }) => ({ name, type: mimeType, bytes: [...buffer] }));
  await page.evaluate(
    ({ how, payload }) => {
      const data = new DataTransfer();
      for (const f of payload) data.items.add(new File([new Uint8Array(f.bytes)], f.name, { type: f.type }));
      if (how === "paste") {
        const box = document.querySelector("textarea[aria-label=Message]");
        box.dispatchEvent(new ClipboardEvent("paste", { clipboardData: data, bubbles: true, cancelable: true }));
      } else {
        const pane = document.querySelector("section.chat");
        pane.dispatchEvent(new DragEvent("dragover", { dataTransfer: data, bubbles: true, cancelable: true }));
        pane.dispatchEvent(new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true }));
      }
    },
    { how, payload }
  );
}

test("attachments: a file picked, dropped or pasted; progress and cancel; thumbnails, links, deletion", async () => {
  const [alice, bob] = await talking(["Ada", "Attach"], ["Ben", "Files"], "the photos from Sunday");
  const page = alice.page;
  const tray = page.getByRole("list", { name: "Attachments" });

  // Picked with the Attach file button: an image and a document.
  const chooser = page.waitForEvent("filechooser");
  await page.getByRole("button", { name: "Attach file" }).click();
  await (await chooser).setFiles([
    { name: "beach.png", mimeType: "image/png", buffer: png(800, 600) },
    { name: "plan.txt", mimeType: "text/plain", buffer: Buffer.from("day 1: swim\nday 2: hike\n") },
  ]);
  await tray.getByRole("button", { name: "Remove beach.png" }).waitFor(WAIT);
  await tray.getByRole("button", { name: "Remove plan.txt" }).waitFor(WAIT);
  await shot(page, "desktop-attachments-tray");
  await page.getByRole("button", { name: "Send" }).click();
  await tray.waitFor({ state: "detached", ...WAIT });

  // Both sides: the image as a thumbnail that opens the full image, the
  // document as a link with its size; no text (the names are not repeated).
  for (const who of [alice.page, bob.page]) {
    const image = log(who).getByRole("link", { name: "beach.png" });
    await image.waitFor(WAIT);
    await who.waitForFunction(
      () => [...document.querySelectorAll(".files img")].some((i) => i.complete && i.naturalWidth === 320),
      null,
      WAIT
    );
    const file = log(who).getByRole("link", { name: "plan.txt (24 B)", exact: true });
    await file.waitFor(WAIT);
    await ownIcon(file, "plan.txt (24 B)");
    assert.equal(await file.getAttribute("download"), "plan.txt");
    assert.equal(await log(who).locator("span.text", { hasText: "beach.png, plan.txt" }).count(), 0);
  }
  const full = await log(bob.page).getByRole("link", { name: "beach.png" }).getAttribute("href");
  const answer = await bob.page.evaluate(async (url) => {
    const res = await fetch(url);
    return [res.status, res.headers.get("content-type"), (await res.arrayBuffer()).byteLength];
  }, full);
  assert.deepEqual(answer.slice(0, 2), [200, "image/png"]);
  await shot(bob.page, "desktop-attachments");

  // Dropped on the conversation, and pasted (a screenshot), with text.
  await hand(page, "drop", [{ name: "dropped.png", mimeType: "image/png", buffer: png(200, 100, [200, 60, 60]) }]);
  await tray.getByRole("button", { name: "Remove dropped.png" }).waitFor(WAIT);
  await hand(page, "paste", [{ name: "image.png", mimeType: "image/png", buffer: png(100, 200, [60, 160, 60]) }]);
  await tray.getByRole("button", { name: "Remove image.png" }).waitFor(WAIT);
  await say(page, "two more");
  await bubble(bob.page, "two more").getByRole("link", { name: "dropped.png" }).waitFor(WAIT);
  await bubble(bob.page, "two more").getByRole("link", { name: "image.png" }).waitFor(WAIT);

  // A slow upload shows its progress and can be cancelled.
  const cdp = await page.context().newCDPSession(page);
  await cdp.send("Network.emulateNetworkConditions", {
    offline: false,
    latency: 20,
    downloadThroughput: -1,
    uploadThroughput: 64 * 1024,
  });
  const slow = page.waitForEvent("filechooser");
  await page.getByRole("button", { name: "Attach file" }).click();
  await (await slow).setFiles([{ name: "video.bin", mimeType: "application/octet-stream", buffer: Buffer.alloc(3 << 20, 7) }]);
  await page.getByRole("progressbar", { name: "Uploading video.bin" }).waitFor(WAIT);
  await page.getByRole("button", { name: "Send" }).click();
  await page.getByRole("alert").filter({ hasText: "Wait for the files to finish uploading." }).waitFor(WAIT);
  await tray.getByRole("button", { name: "Cancel video.bin" }).click();
  await tray.waitFor({ state: "detached", ...WAIT });
  await cdp.send("Network.emulateNetworkConditions", {
    offline: false,
    latency: 0,
    downloadThroughput: -1,
    uploadThroughput: -1,
  });

  // After a reload, from history; then deleted with its message, for everyone.
  await bob.page.reload();
  await open(bob.page, alice.name);
  await log(bob.page).getByRole("link", { name: "beach.png" }).waitFor(WAIT);
  const sent = log(page).locator("[data-direction=send]").filter({ has: page.getByRole("link", { name: "beach.png" }) });
  await sent.getByRole("button", { name: "Delete" }).click();
  await page.getByRole("alertdialog", { name: "Delete for everyone?" }).getByRole("button", { name: "Delete" }).click();
  await log(bob.page).getByRole("link", { name: "beach.png" }).waitFor({ state: "detached", ...WAIT });
  // (Asked of the server: the browser may keep what it already showed.)
  const gone = await bob.page.evaluate(async (url) => (await fetch(url, { cache: "no-store" })).status, full);
  assert.equal(gone, 404);

  // Phone width: the files fit.
  await bob.page.setViewportSize({ width: 390, height: 844 });
  await bubble(bob.page, "two more").getByRole("link", { name: "dropped.png" }).scrollIntoViewIfNeeded();
  const fits = await bob.page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth);
  assert.ok(fits, "nothing wider than the phone");
  await shot(bob.page, "phone-attachments");
  assert.deepEqual([...alice.page.errors, ...bob.page.errors], []);
  await alice.page.context().close();
  await bob.page.context().close();
});

// End-to-end tests of the web client in a real browser (e2e/browser.mjs),
// the second half: history and its pages, search, files, day-to-day
// composing, conversation URLs, notifications and Web Push. Run beside
// e2e/client.test.mjs (its header has the command).

import { test } from "node:test";
import assert from "node:assert/strict";
import {
  addContact, base, browser, bubble, hand, item, list, log, notificationStub, open, person, png,
  received, say, secondDevice, sendMany, shot, signUp, status, talking, WAIT,
} from "./browser.mjs";

test("history survives a reload; older pages load on scrolling up", async () => {
  const alice = await signUp("Ann", "Lee");
  const bob = await signUp("Ben", "Ray");
  await addContact(alice.page, bob.username, bob.name);
  for (let i = 1; i <= 60; i++) {
    await alice.page.getByLabel("Message").fill(`line ${i}`);
    await alice.page.getByLabel("Message").press("Enter");
  }
  await say(alice.page, "line 61");
  await alice.page.reload();
  await alice.page.getByRole("button", { name: "Log out" }).waitFor(WAIT);
  await open(alice.page, bob.name);
  const messages = log(alice.page).locator("[data-direction]");
  await log(alice.page).getByText("line 61", { exact: true }).waitFor(WAIT);
  assert.equal(await messages.count(), 50, "the newest page");
  await log(alice.page).evaluate((element) => (element.scrollTop = 0));
  await log(alice.page).getByText("line 1", { exact: true }).waitFor(WAIT);
  assert.equal(await messages.count(), 61, "older page added, nothing twice");
  await alice.page.context().close();
  await bob.page.context().close();
});

test("search finds a message by its words, marks them, and opens the conversation at it", async () => {
  const [alice, bob] = await talking(["Sol", "Search"], ["Tom", "Finder"], "Un <b>café</b> au lait?");
  await say(alice.page, "or tea instead");
  await say(alice.page, "the quick brown fox");

  // Case and accents ignored; the matched word is marked, the markup shown as text.
  const box = bob.page.getByRole("searchbox", { name: "Search" });
  await box.fill("CAFE");
  const results = bob.page.getByRole("list", { name: "Search results" });
  const found = results.getByRole("listitem").filter({ hasText: "Un <b>café</b> au lait?" });
  await found.waitFor(WAIT);
  assert.equal(await results.getByRole("listitem").count(), 1);
  assert.equal(await found.locator("mark").textContent(), "café");
  assert.ok((await found.textContent()).startsWith(alice.name), "the conversation's name comes first");
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
  await shot(bob.page, "desktop-muted");
  assert.equal(await bob.page.title(), "Chat");
  assert.deepEqual(await recorded(), { notes: [], beeps: 0 });
  assert.deepEqual([...alice.page.errors, ...bob.page.errors], []);
  await alice.page.context().close();
  await bob.page.context().close();
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

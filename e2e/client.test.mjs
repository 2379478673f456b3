// End-to-end tests of the web client in a real browser (e2e/browser.mjs):
// signing up, contacts and groups, replies and reactions, reconnects and
// restarts, several tabs and devices, signing out. Each person is an
// independent browser profile (context).
//
//   CHAT_SERVER=target/debug/chat-server node --test e2e/client.test.mjs e2e/client-history.test.mjs
//   SCREENSHOTS=docs/screenshots ...   also saves the README's screenshots

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import {
  addContact, base, bubble, freePort, item, launch, list, log, open, PASSWORD, person, POSTGRES,
  received, REDIS, roundRobin, say, secondDevice, shot, signUp, startServer, status, stop,
  stopServer, talking, tapped, texts, WAIT, watch,
} from "./browser.mjs";

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
  await shot(alice.page, "desktop-conversation");
  await bob.page.getByRole("button", { name: "New group" }).click();
  await shot(bob.page, "desktop-new-group");
  assert.deepEqual([...alice.page.errors, ...bob.page.errors], []);
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
  await alice.page
    .getByRole("alert")
    .filter({ hasText: `Invited ${bob.name}, ${carol.name}: they join when they accept.` })
    .waitFor(WAIT);
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
  await carol.page.getByText("You are no longer in Trip 2027.").waitFor(WAIT);
  // Leaving asks too; the others are told.
  await bob.page.getByRole("button", { name: "Leave group" }).click();
  await bob.page.getByRole("alertdialog", { name: "Leave Trip 2027?" }).getByRole("button", { name: "Leave" }).click();
  await bob.page.getByText("You are no longer in Trip 2027.").waitFor(WAIT);
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

// What the browser scenarios share (e2e/client.test.mjs,
// e2e/client-history.test.mjs): Debian's chromium driven by playwright-core,
// against the real server on a free port (SQLite in a fresh directory), and
// the steps a person takes, found by role and accessible name as
// docs/WEBCLIENT.md names them. Each scenario file imports this in a process
// of its own: its own server, directory and browser, so the files run side
// by side (docs/CI.md) and a scenario that restarts the server stops only
// its own file's.

import { after, before } from "node:test";
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
export const WAIT = { timeout: 15000 };
export const PASSWORD = "correct horse battery";

export let browser;
let server;
let port;
export let base;
const dir = mkdtempSync(join(tmpdir(), "chat-e2e-"));

/**
 * A port that is free now, below the kernel's ephemeral range (32768 and
 * up): no outgoing connection of another process (CI runs the Rust tests
 * beside these) takes it as its local port while a scenario restarts the
 * server on it.
 */
export async function freePort() {
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
export async function launch(on, env = {}) {
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

export async function startServer() {
  server = await launch(port);
}

export async function stop(child) {
  if (child.exitCode !== null) return;
  const exited = new Promise((r) => child.once("exit", r));
  child.kill("SIGTERM");
  await exited;
}

export const stopServer = () => stop(server);

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

export function watch(page) {
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
export async function person(viewport = { width: 1280, height: 800 }, at = base) {
  const context = await browser.newContext({ viewport });
  const page = watch(await context.newPage());
  await page.goto(`${at}/`);
  return page;
}

let counter = 0;
/** Signs a new person up through the form; returns their page and names. */
export async function signUp(first, last, viewport, at) {
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
export async function secondDevice(username) {
  const page = await person();
  await page.getByLabel("Username").fill(username);
  await page.getByLabel("Password").fill(PASSWORD);
  await page.getByRole("button", { name: "Log in" }).click();
  await status(page, "Connected");
  return page;
}

export async function status(page, text) {
  await page.getByRole("status").filter({ hasText: text }).waitFor(WAIT);
}

export const list = (page) => page.getByRole("list", { name: "Conversations" });
export const item = (page, name) => list(page).getByRole("listitem").filter({ hasText: name });
export const log = (page) => page.getByRole("log");

export async function addContact(page, username, name) {
  await page.getByRole("button", { name: "Add contact" }).click();
  await page.getByLabel("Username").fill(username);
  await page.getByRole("button", { name: "Add", exact: true }).click();
  await page.getByRole("heading", { name }).waitFor(WAIT);
}

export async function open(page, name) {
  await item(page, name).click();
  await page.getByRole("heading", { name }).waitFor(WAIT);
}

export async function say(page, text) {
  await page.getByLabel("Message").fill(text);
  await page.getByLabel("Message").press("Enter");
  // Acknowledged: no longer pending.
  await log(page)
    .locator('[data-direction="send"]:not(.pending)')
    .filter({ hasText: text })
    .last()
    .waitFor(WAIT);
}

export async function received(page, text) {
  await log(page).locator('[data-direction="received"]').filter({ hasText: text }).first().waitFor(WAIT);
}

/** Two new people: the first added the second and said `text`, which
 *  the second has open. */
export async function talking(first, second, text) {
  const alice = await signUp(...first);
  const bob = await signUp(...second);
  await addContact(alice.page, bob.username, bob.name);
  await say(alice.page, text);
  await open(bob.page, alice.name);
  await received(bob.page, text);
  return [alice, bob];
}

export async function shot(page, name) {
  if (!SHOTS) return;
  mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: join(SHOTS, `${name}.png`) });
}

/** Routes a page's socket through the test (after a reload): `sent` and
 *  `got` record the frames each way; live `message` frames holding
 *  `tap.drop` are not passed on; while `tap.hold`, connecting fails; and
 *  `tap.cut()` drops the connection. */
export async function tapped(page) {
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

export const texts = (page) => log(page).locator("[data-direction] .text").allInnerTexts();

/** The message in `page`'s log whose own text (not a quote of it) holds `text`. */
export const bubble = (page, text) =>
  log(page)
    .locator("[data-direction]")
    .filter({ has: page.locator("span.text", { hasText: text }) })
    .last();

/** Connections to `port` go to each backend in turn (a layer-4 balancer). */
export function roundRobin(listen, backends) {
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

export const POSTGRES = process.env.TEST_POSTGRES_URL;
export const REDIS = process.env.TEST_REDIS_URL;

/** Sends `count` messages as the page's person through a socket of its
 *  own (the app's token, from its storage) and waits for every answer. */
export async function sendMany(page, count, text) {
  await page.evaluate(
    ({ count, text }) =>
      new Promise((resolve, reject) => {
        const { token } = JSON.parse(localStorage.getItem("chat.session"));
        const ws = new WebSocket(`ws://${location.host}/chat`);
        let answered = 0;
        ws.onopen = () => ws.send(JSON.stringify({ type: "authorization", data: { token } }));
        ws.onerror = reject;
        ws.onmessage = ({ data }) => {
          const frame = JSON.parse(data);
          if (frame.type === "authorization_response") ws.send(JSON.stringify({ type: "get_contacts", data: {} }));
          if (frame.type === "get_contacts_response") {
            for (let i = 0; i < count; i += 1) {
              ws.send(JSON.stringify({ type: "message", data: { to: frame.data[0].pk, content: `${text} ${i}` } }));
            }
          }
          if (frame.type === "message_response" && ++answered === count) {
            ws.close();
            resolve();
          }
        };
      }),
    { count, text }
  );
}

/** Records what the page shows and plays: the browser's own Notification
 *  (with the permission the test grants), wrapped to note each one in
 *  `window.__notes`, and an AudioContext stand-in counting tones in
 *  `__beeps` (a headless browser has no sound device). */
export function notificationStub() {
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

/** A PNG of `width` × `height` pixels of one colour. */
export function png(width, height, [r, g, b] = [40, 120, 200]) {
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
export async function hand(page, how, files) {
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

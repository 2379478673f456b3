// Telling the person about messages they are not looking at: a desktop
// notification (once they have allowed it, asked on a click, never on
// load), a short sound, and the unread total in the tab's title and icon.

import { h } from "./vendor/preact.module.js";
import * as api from "./api.js";
import { Bell } from "./icons.js";
import { memo } from "./memo.js";
import { useEffect, useState } from "./vendor/hooks.module.js";
import htm from "./vendor/htm.module.js";

const html = htm.bind(h);
const TITLE = "Chat";
const ICON = "/favicon.svg";
const ICON_UNREAD = "/app/unread.svg";
const PREVIEW_CHARS = 120;

const supported = () => typeof Notification !== "undefined";

/** A button that asks for permission, shown while the browser has not
 *  been asked (a browser asks at most once per site unless reset). Once
 *  allowed, the browser is subscribed to Web Push. Drawn again only when
 *  the token or the permission changes (`memo`): reading
 *  `Notification.permission` asks the browser's process (a third of the
 *  page's time while 120 messages arrived, before). */
export const EnableNotifications = memo(function EnableNotifications({ token }) {
  const [, setAsked] = useState(0);
  // A permission changed in the browser's settings while the page is open.
  useEffect(() => {
    let status = null;
    const changed = () => setAsked((n) => n + 1);
    navigator.permissions
      ?.query({ name: "notifications" })
      .then((s) => {
        status = s;
        status.addEventListener("change", changed);
      })
      .catch(() => {});
    return () => status?.removeEventListener("change", changed);
  }, []);
  if (!supported() || Notification.permission !== "default") return null;
  async function ask() {
    unlockSound();
    const answer = await Notification.requestPermission();
    setAsked((n) => n + 1);
    if (answer === "granted") subscribePush(token);
  }
  return html`<button type="button" class="link notify" onClick=${ask}>
    <${Bell} />
    <span class="label">Enable notifications</span>
  </button>`;
});

/** A new message `message` in conversation `pk`: told unless the person
 *  is looking at that conversation. */
export function notifyMessage(chat, pk, message) {
  if (chat.state.open === pk && document.visibilityState === "visible") return;
  const conversation = chat.state.conversations.get(pk);
  if (!conversation || conversation.muted) return;
  beep();
  if (!supported() || Notification.permission !== "granted") return;
  const body = message.content.length > PREVIEW_CHARS ? `${message.content.slice(0, PREVIEW_CHARS)}…` : message.content;
  // One notification per conversation: a newer one replaces it (`tag`).
  const notification = new Notification(conversation.name, { body, tag: pk });
  notification.onclick = () => {
    window.focus();
    chat.openConversation(pk);
    notification.close();
  };
}

/** The unread total in the tab's title ("(3) Chat"; "(10004+) Chat" when
 *  a count reached the server's window) and as a dot on its icon. */
export function showUnread(total, atLeast = false) {
  document.title = total > 0 ? `(${total}${atLeast ? "+" : ""}) ${TITLE}` : TITLE;
  const link = document.querySelector('link[rel="icon"]');
  const href = total > 0 ? ICON_UNREAD : ICON;
  if (link && link.getAttribute("href") !== href) link.setAttribute("href", href);
}

// --- sound ------------------------------------------------------------------

let audio = null;

/** Browsers let a page make sound only after the person has interacted
 *  with it: the audio context is made (or resumed) on the first click or
 *  key press. */
function unlockSound() {
  const Context = window.AudioContext || window.webkitAudioContext;
  if (!Context) return;
  audio ||= new Context();
  if (audio.state === "suspended") audio.resume();
}
addEventListener("pointerdown", unlockSound, { once: true });
addEventListener("keydown", unlockSound, { once: true });

/** A short soft tone (no sound file to fetch). */
function beep() {
  if (!audio || audio.state !== "running") return;
  const oscillator = audio.createOscillator();
  const gain = audio.createGain();
  oscillator.frequency.value = 880;
  gain.gain.setValueAtTime(0.08, audio.currentTime);
  gain.gain.exponentialRampToValueAtTime(0.0001, audio.currentTime + 0.15);
  oscillator.connect(gain).connect(audio.destination);
  oscillator.start();
  oscillator.stop(audio.currentTime + 0.15);
}

// --- Web Push (B11) ---------------------------------------------------------

const pushSupported = () =>
  typeof navigator !== "undefined" && "serviceWorker" in navigator && typeof PushManager !== "undefined";

/** The key as the browser wants it: base64url to bytes. */
function keyBytes(base64url) {
  const base64 = base64url.replace(/-/g, "+").replace(/_/g, "/");
  return Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
}

/** Registers the service worker and this browser's push subscription, so
 *  messages reach the person while no tab is open. Called on every start
 *  once notifications are allowed (the server keeps one row per browser).
 *  Quietly does nothing where the browser or the server has no Web Push. */
export async function subscribePush(token) {
  if (!pushSupported() || !supported() || Notification.permission !== "granted") return;
  try {
    const registration = await navigator.serviceWorker.register("/sw.js");
    await navigator.serviceWorker.ready;
    let subscription = await registration.pushManager.getSubscription();
    if (!subscription) {
      const { public_key: key } = await api.pushKey();
      subscription = await registration.pushManager.subscribe({
        userVisibleOnly: true,
        applicationServerKey: keyBytes(key),
      });
    }
    await api.subscribePush(token, subscription.toJSON());
  } catch (e) {
    console.info("Web Push is not available here:", e.message);
  }
}

/** Before signing out: this browser gets no more pushes for the person. */
export async function unsubscribePush(token) {
  if (!pushSupported()) return;
  try {
    const registration = await navigator.serviceWorker.getRegistration("/");
    const subscription = await registration?.pushManager.getSubscription();
    if (!subscription) return;
    await api.unsubscribePush(token, subscription.endpoint).catch(() => {});
    await subscription.unsubscribe();
  } catch {
    // Signing out goes on: the server drops the subscription when the
    // push service says it is gone.
  }
}

/** A click on a push's notification asks the open tab to show its conversation. */
export function onPushClick(open) {
  if (!pushSupported()) return () => {};
  const listener = (event) => event.data?.open && open(event.data.open);
  navigator.serviceWorker.addEventListener("message", listener);
  return () => navigator.serviceWorker.removeEventListener("message", listener);
}

// The service worker (served at /sw.js, scope /): shows a Web Push the
// server sent while no tab of the person was connected (PROTOCOL.md B11),
// and opens its conversation on a click.

self.addEventListener("push", (event) => {
  let data = {};
  try {
    data = event.data ? event.data.json() : {};
  } catch {
    // Not ours, or damaged: still say something (browsers require it).
  }
  const group = data.title && data.sender && data.title !== data.sender;
  const text = data.preview || "New message";
  const body = group ? `${data.sender}: ${text}` : text;
  // One notification per conversation: a newer one replaces it (`tag`).
  const shown = self.registration.showNotification(data.title || "Chat", {
    body,
    tag: data.pk || "chat",
    data: { pk: data.pk || null },
  });
  event.waitUntil(shown);
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const pk = event.notification.data?.pk;
  const url = pk ? `/#/c/${pk}` : "/";
  event.waitUntil(
    (async () => {
      const tabs = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
      const tab = tabs.find((t) => new URL(t.url).origin === self.location.origin);
      if (!tab) return self.clients.openWindow(url);
      await tab.focus();
      tab.postMessage({ open: pk });
    })()
  );
});

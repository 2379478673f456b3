// REST calls (PROTOCOL.md A1, the README's API list). Every failure becomes
// an Error whose message is the server's own words.

/** The first human-readable message in a DRF-style error body. */
export function errorText(body, status) {
  if (body && typeof body === "object") {
    if (typeof body.detail === "string") return body.detail;
    for (const value of Object.values(body)) {
      if (Array.isArray(value) && typeof value[0] === "string") return value[0];
      if (typeof value === "string") return value;
    }
  }
  return `The server answered ${status}.`;
}

async function call(method, path, { token, body } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new Error("Cannot reach the server. Check your connection.");
  }
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const error = new Error(errorText(data, response.status));
    error.status = response.status;
    throw error;
  }
  return data;
}

export const login = (username, password) =>
  call("POST", "/api/login/", { body: { username, password } });

export const register = (fields) => call("POST", "/api/register/", { body: fields });

export const addContact = (token, username) =>
  call("POST", "/api/contacts/", { token, body: { username } });

/** Revokes this token only: the person's other devices stay signed in (PROTOCOL.md C15). */
export const signOut = (token) => call("POST", "/api/logout/", { token });

/** Revokes every token of the person, this one too (PROTOCOL.md C14). */
export const signOutEverywhere = (token) => call("POST", "/api/logout/everywhere/", { token });

/** The server's Web Push key (B11); 404 when the server has Web Push off. */
export const pushKey = () => call("GET", "/api/push/key/");

/** Registers this browser's push subscription for the person. */
export const subscribePush = (token, subscription) =>
  call("POST", "/api/push/subscriptions/", { token, body: subscription });

/** Stops pushes to this browser. */
export const unsubscribePush = (token, endpoint) =>
  call("DELETE", "/api/push/subscriptions/", { token, body: { endpoint } });

/** Changes the password: every token of the person is revoked, and the
 *  answer carries a new one for this device (PROTOCOL.md A1). */
export const changePassword = (token, oldPassword, newPassword) =>
  call("POST", "/api/password/", { token, body: { old_password: oldPassword, new_password: newPassword } });

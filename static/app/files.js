// Attachments (PROTOCOL.md B9): uploads with progress and cancel, the tray
// of files waiting to be sent, and the files of a message (images as
// thumbnails that open the full image, other files as a link with size).

import { h } from "./vendor/preact.module.js";
import htm from "./vendor/htm.module.js";
import { Document } from "./icons.js";
import { errorText } from "./api.js";

const html = htm.bind(h);

/** Most files one message carries (the server's limit too). */
export const MAX_FILES = 10;
/** Thumbnails are at most this many pixels on their longer side. */
const THUMBNAIL = 320;

/** "12 KB", "3.4 MB". */
export function formatSize(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  const units = ["KB", "MB", "GB"];
  let size = bytes / 1024;
  let unit = 0;
  while (size >= 1024 && unit < units.length - 1) {
    size /= 1024;
    unit += 1;
  }
  return `${size < 10 ? size.toFixed(1) : Math.round(size)} ${units[unit]}`;
}

/**
 * Uploads `file` (POST /api/attachments/): `promise` resolves to the
 * server's answer, `cancel()` stops it; `onProgress` gets the share sent
 * so far. XMLHttpRequest, because fetch reports no upload progress.
 */
export function upload(token, file, onProgress) {
  const request = new XMLHttpRequest();
  const name = file.name || "pasted image";
  const promise = new Promise((resolve, reject) => {
    request.open("POST", `/api/attachments/?name=${encodeURIComponent(name)}`);
    request.setRequestHeader("Authorization", `Bearer ${token}`);
    request.setRequestHeader("Content-Type", file.type || "application/octet-stream");
    request.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
    request.onload = () => {
      let body = null;
      try {
        body = JSON.parse(request.responseText);
      } catch {
        // not JSON: the status says enough
      }
      if (request.status === 201) resolve(body);
      else if (request.status === 413) reject(new Error(`${name} is too large to send.`));
      else reject(new Error(errorText(body, request.status)));
    };
    request.onerror = () => reject(new Error("Cannot reach the server. Check your connection."));
    request.onabort = () => {
      const error = new Error("Cancelled.");
      error.cancelled = true;
      reject(error);
    };
    request.send(file);
  });
  return { name, size: file.size, promise, cancel: () => request.abort() };
}

const fileUrl = (token, file, part = "") =>
  `/api/attachments/${file.id}/${part}?token=${encodeURIComponent(token)}`;

/** A message's text as shown: none when it is only its files' names (what
 *  the server writes there for clients that show no files). */
export function textOf(message) {
  const files = message.attachments || [];
  if (files.length && message.content === files.map((f) => f.name).join(", ")) return "";
  return message.content;
}

/** The files of a message. */
export function Files({ files, token }) {
  if (!files?.length) return null;
  return html`<div class="files">
    ${files.map((file) => {
      if (file.width && file.height) {
        const scale = Math.min(1, THUMBNAIL / Math.max(file.width, file.height));
        return html`<a key=${file.id} class="image" href=${fileUrl(token, file)} target="_blank" rel="noopener noreferrer">
          <img
            src=${fileUrl(token, file, "thumbnail/")}
            alt=${file.name}
            width=${Math.round(file.width * scale)}
            height=${Math.round(file.height * scale)}
            loading="lazy"
          />
        </a>`;
      }
      return html`<a key=${file.id} class="file" href=${fileUrl(token, file)} download=${file.name}>
        <${Document} /> ${file.name} <span class="size">(${formatSize(file.size)})</span>
      </a>`;
    })}
  </div>`;
}

/** Files chosen for the next message: each uploading (with its progress
 *  and Cancel), ready, or failed (with why), and removable. */
export function Tray({ uploads, onRemove }) {
  if (!uploads.length) return null;
  return html`<ul class="tray" role="list" aria-label="Attachments">
    ${uploads.map(
      (u) => html`<li key=${u.key} class=${u.error ? "failed" : ""}>
        <span class="name">${u.name}</span> <span class="size">${formatSize(u.size)}</span>
        ${u.status === "uploading" &&
        html`<progress max="1" value=${u.progress} aria-label=${`Uploading ${u.name}`}></progress>`}
        ${u.error && html`<span class="error">${u.error}</span>`}
        <button type="button" class="link" onClick=${() => onRemove(u)}>
          ${u.status === "uploading" ? "Cancel" : "Remove"}<span class="hidden"> ${u.name}</span>
        </button>
      </li>`
    )}
  </ul>`;
}

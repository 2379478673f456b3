// Search (PROTOCOL.md B10): the box above the conversation list and its
// results. Matched words are marked with <mark> elements built from the
// text's pieces: a message is only ever rendered as text, never as HTML.

import { h } from "./vendor/preact.module.js";
import { useEffect, useRef, useState } from "./vendor/hooks.module.js";
import htm from "./vendor/htm.module.js";

const html = htm.bind(h);

/** How long typing pauses before the query is sent. */
const TYPING_PAUSE_MS = 250;

/** The words of a query as the server reads them: runs of letters and digits. */
export function queryWords(query) {
  return query.split(/[^\p{L}\p{N}]+/u).filter(Boolean);
}

/** Characters of scripts written without spaces between words (Chinese,
 *  Japanese), which the server searches a character at a time: a match
 *  may start at any of them. The server's ranges (`src/chat/unspaced.rs`). */
const UNSPACED = /[\u3005-\u3007\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f\u{20000}-\u{3ffff}]/u;

/** A character as search compares it: no accents, lower case. */
function fold(ch) {
  return ch.normalize("NFD").replace(/\p{M}/gu, "").toLowerCase();
}

/**
 * Splits `text` into pieces, `{ text, hit }`, where a hit is a word of the
 * text that starts with one of `words` (compared without case or
 * accents), up to that word's length: "Café au lait" and "cafe" give
 * [{ "Café", hit }, { " au lait" }]. In Chinese or Japanese text a match
 * may start at any character: "日本語のテキスト" and "テキスト" give
 * [{ "日本語の" }, { "テキスト", hit }].
 */
export function highlightParts(text, words) {
  const wanted = words.map((w) => [...w].map(fold).join("")).filter(Boolean);
  const chars = [...text];
  const folded = chars.map(fold);
  const isWord = (ch) => /[\p{L}\p{N}]/u.test(ch);
  const hit = new Array(chars.length).fill(false);
  for (let i = 0; i < chars.length; i++) {
    const starts = isWord(chars[i]) && (i === 0 || !isWord(chars[i - 1]) || UNSPACED.test(chars[i]));
    if (!starts) continue;
    for (const word of wanted) {
      // Walk the text from i, matching the folded word char by char.
      let j = i;
      let matched = "";
      while (j < chars.length && matched.length < word.length && word.startsWith(matched + folded[j])) {
        matched += folded[j];
        j += 1;
      }
      if (matched.length === word.length) hit.fill(true, i, j);
    }
  }
  const parts = [];
  chars.forEach((ch, i) => {
    const last = parts[parts.length - 1];
    if (last && last.hit === hit[i]) last.text += ch;
    else parts.push({ text: ch, hit: hit[i] });
  });
  return parts;
}

function Highlighted({ text, words }) {
  return highlightParts(text, words).map((part) =>
    part.hit ? html`<mark>${part.text}</mark>` : part.text
  );
}

// Made once: `toLocaleString` builds a formatter on every call.
const WHEN = new Intl.DateTimeFormat([], { dateStyle: "medium", timeStyle: "short" });

function when(iso) {
  const date = new Date(iso);
  return isNaN(date) ? "" : WHEN.format(date);
}

/** The search box: sends the query when typing pauses or on Enter;
 *  Escape (or emptying it) goes back to the conversation list. */
export function SearchBox({ chat }) {
  const [text, setText] = useState(chat.state.search?.query || "");
  const timer = useRef(null);
  useEffect(() => () => clearTimeout(timer.current), []);
  function ask(value) {
    clearTimeout(timer.current);
    chat.search(value);
  }
  function onInput(event) {
    const value = event.target.value;
    setText(value);
    clearTimeout(timer.current);
    timer.current = setTimeout(() => chat.search(value), TYPING_PAUSE_MS);
  }
  function onKeyDown(event) {
    if (event.key === "Escape" && text) {
      event.preventDefault();
      setText("");
      ask("");
    }
  }
  return html`
    <form role="search" class="search" onSubmit=${(e) => (e.preventDefault(), ask(text))}>
      <input
        type="search"
        aria-label="Search"
        placeholder="Search messages"
        dir="auto"
        autocomplete="off"
        value=${text}
        onInput=${onInput}
        onKeyDown=${onKeyDown}
      />
    </form>
  `;
}

/** The results of the current search, newest first; a click opens the
 *  conversation at the message. */
export function SearchResults({ chat }) {
  const search = chat.state.search;
  if (!search) return null;
  const words = queryWords(search.query);
  const nameOf = (pk) => chat.state.conversations.get(pk)?.name || "Conversation";
  return html`
    <section class="results">
      <p class="caption" aria-hidden="true">Messages</p>
      ${search.error && html`<p role="alert" class="error">${search.error}</p>`}
      <ul role="list" aria-label="Search results" class="results-list">
        ${search.results.map(
          (r) => html`<li key=${r.id}>
            <button type="button" class="result" onClick=${() => chat.openAt(r.pk, r.id)}>
              <span class="result-head">
                <span class="name">${nameOf(r.pk)}</span>
                <time datetime=${r.time}>${when(r.time)}</time>
              </span>
              <span class="result-text"><${Highlighted} text=${r.content} words=${words} /></span>
            </button>
          </li>`
        )}
      </ul>
      ${search.loading && html`<p class="hint">Searching…</p>`}
      ${!search.loading && !search.error && search.results.length === 0 &&
      html`<p class="hint">No messages found.</p>`}
      ${search.hasMore && !search.loading &&
      html`<button type="button" class="link" onClick=${() => chat.search(search.query, true)}>More results</button>`}
    </section>
  `;
}

// The client's own icons: SVG drawn in the text's colour (`.icon` in
// style.css), so that they show the same everywhere, with or without an
// emoji font (many Linux desktops have none). Each is decorative
// (`aria-hidden`): the control or text beside it carries the meaning.
// Reactions stay emoji: they are what people send.

import { h } from "./vendor/preact.module.js";
import htm from "./vendor/htm.module.js";

const html = htm.bind(h);

const icon = (d, transform) =>
  html`<svg class="icon" viewBox="0 0 24 24" aria-hidden="true"><path d=${d} transform=${transform} /></svg>`;

const BELL = "M18 16v-5a6 6 0 0 0-12 0v5l-2 2h16z M10 21a2 2 0 0 0 4 0";

export const Paperclip = () =>
  icon("M17 7v9.5a5 5 0 0 1-10 0V5.5a3.5 3.5 0 0 1 7 0V16a1.5 1.5 0 0 1-3 0V8", "rotate(40 12 12)");
export const Bell = () => icon(BELL);
/** The bell struck through: muted. */
export const BellOff = () => icon(`${BELL} M3 3l18 18`);
/** A page with a folded corner: a file that is not an image. */
export const Document = () => icon("M14 3H7a2 2 0 0 0-2 2v14a2 2 0 0 0 2 2h10a2 2 0 0 0 2-2V8z M14 3v5h5 M9 13h6 M9 17h4");

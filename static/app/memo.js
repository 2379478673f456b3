// Drawing less: a component drawn again only when its props change.

import { Component, h } from "./vendor/preact.module.js";

/** `Inner`, drawn again only when one of its props is not the same (`!==`)
 *  as at its last drawing, or when its own state changes: Preact's `memo`,
 *  which needs preact/compat. The signed-in view is drawn again for every
 *  frame that arrives (a message, a typing notice, a read mark), and so,
 *  without it, is every message of the open conversation. */
export function memo(Inner) {
  return class extends Component {
    shouldComponentUpdate(next) {
      for (const key in next) if (next[key] !== this.props[key]) return true;
      for (const key in this.props) if (!(key in next)) return true;
      return false;
    }
    render(props) {
      return h(Inner, props);
    }
  };
}

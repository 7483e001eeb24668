// Building and updating the page's elements. Every piece of data goes in as text (textContent), never as HTML:
// task bodies, headers and names come from whoever created the task.

/** An element: h("td", {class: "num"}, "12", otherNode). Attributes that are null or false are left out;
 * `style` is an object of CSS properties. */
export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    // Through the CSSOM: the page's Content-Security-Policy refuses inline style attributes.
    else if (name === "style") Object.assign(element.style, value);
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  element.append(...children.flat().filter((child) => child !== null && child !== undefined && child !== false));
  return element;
}

/** Show `element` when `visible`, hide it otherwise. */
export function show(element, visible) {
  element.hidden = !visible;
}

/**
 * Make `tbody` hold one row per item, in order, keyed by `key(item)`. A row is rebuilt by `build(item)` only
 * when `signature(item)` has changed, so a poll every second touches only the rows whose content moved, and
 * only the rows shown (one page) are ever built.
 */
export function syncRows(tbody, items, key, signature, build) {
  const existing = new Map([...tbody.rows].map((row) => [row.dataset.key, row]));
  let previous = null;
  for (const item of items) {
    const id = key(item);
    const sig = signature(item);
    let row = existing.get(id);
    existing.delete(id);
    if (!row || row.dataset.sig !== sig) {
      const fresh = build(item);
      fresh.dataset.key = id;
      fresh.dataset.sig = sig;
      if (row) row.replaceWith(fresh);
      row = fresh;
    }
    const wanted = previous ? previous.nextSibling : tbody.firstChild;
    if (wanted !== row) tbody.insertBefore(row, wanted);
    previous = row;
  }
  for (const row of existing.values()) row.remove();
}

/** Replace the children of `element` with `children`. */
export function fill(element, ...children) {
  element.replaceChildren(...children.flat().filter((child) => child !== null && child !== undefined));
}

// How numbers, times and durations read on the page.

const pad = (n, width = 2) => String(n).padStart(width, "0");

/** A wall-clock time (epoch seconds) as HH:MM:SS.mmm, local time. */
export function clock(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const d = new Date(seconds * 1000);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

/** A duration in seconds, in the largest unit that keeps it short: 250 ms, 1.5 s, 2 min 5 s, 1 h 4 min. */
export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const sign = seconds < 0 ? "−" : "";
  const s = Math.abs(seconds);
  if (s < 1) return `${sign}${Math.round(s * 1000)} ms`;
  if (s < 60) return `${sign}${trim(s < 10 ? s.toFixed(2) : s.toFixed(1))} s`;
  if (s < 3600) return `${sign}${Math.floor(s / 60)} min${s % 60 >= 1 ? ` ${Math.floor(s % 60)} s` : ""}`;
  if (s < 86400) return `${sign}${Math.floor(s / 3600)} h${s % 3600 >= 60 ? ` ${Math.floor((s % 3600) / 60)} min` : ""}`;
  return `${sign}${trim((s / 86400).toFixed(1))} d`;
}

const trim = (text) => text.replace(/\.?0+$/, "");

/** `then` relative to `now`: "in 3.2 s", "5 s ago", "now". */
export function relative(then, now) {
  if (then === null || then === undefined) return "";
  const delta = then - now;
  if (Math.abs(delta) < 0.05) return "now";
  return delta > 0 ? `in ${duration(delta)}` : `${duration(-delta)} ago`;
}

export function count(n) {
  return n === null || n === undefined ? "—" : n.toLocaleString("en-US");
}

export function rate(perSecond) {
  if (perSecond === null || perSecond === undefined) return "—";
  return `${perSecond < 10 ? trim(perSecond.toFixed(2)) : Math.round(perSecond)}/s`;
}

export function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${trim((n / 1024).toFixed(1))} KiB`;
  return `${trim((n / 1024 / 1024).toFixed(2))} MiB`;
}

/** The last part of a resource name: queues/q -> q, tasks/t -> t. */
export function shortName(name) {
  return name ? name.slice(name.lastIndexOf("/") + 1) : "";
}

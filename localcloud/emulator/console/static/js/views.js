// What each part of the page shows, from the API's documents. Every function here only builds elements.

import { fill, h, show, syncRows } from "./dom.js";
import { bytes, clock, count, duration, rate, relative, shortName } from "./format.js";

const $ = (selector) => document.querySelector(selector);

export function badge(text, kind = text) {
  return h("span", { class: `badge ${String(kind).toLowerCase().replace(/\s+/g, "-")}` }, text);
}

/** An attempt's HTTP status as a badge: 2xx green, others red; "no response" for a deadline or connection error. */
export function statusBadge(attempt) {
  if (!attempt) return h("span", { class: "muted" }, "—");
  if (attempt.response === null) return badge("in flight", "running");
  if (attempt.status === null) return badge("no response", "failed");
  return badge(String(attempt.status), attempt.status >= 200 && attempt.status < 300 ? "succeeded" : "failed");
}

function backoffRange(retry) {
  const attempts = retry.maxAttempts < 0 ? "unlimited attempts" : `${count(retry.maxAttempts)} attempts`;
  return `${attempts} · ${duration(retry.minBackoff)} → ${duration(retry.maxBackoff)}`;
}

// ----- the queues table -----

export function renderQueues(doc, selected) {
  const tbody = $("#queues tbody");
  show($("#no-queues"), doc.queues.length === 0);
  syncRows(
    tbody,
    doc.queues,
    (q) => q.name,
    (q) => JSON.stringify([q, q.name === selected]),
    (q) => {
      const paused = q.state !== "RUNNING";
      const counts = ["running", "retrying", "waiting", "scheduled"]
        .filter((state) => q.counts[state])
        .map((state) => h("span", { class: `count ${state}` }, `${count(q.counts[state])} ${state}`));
      const limits = q.rateLimits;
      return h(
        "tr",
        { class: q.name === selected ? "selected clickable" : "clickable", "data-select-queue": q.name },
        h("td", { class: "queue-name" }, h("a", { href: `#queue=${encodeURIComponent(q.name)}` }, q.id),
          q.deadLetters ? badge("dead letters", "dead-letters") : null),
        h("td", { class: "state" }, badge(q.state)),
        h("td", { class: "num depth" }, count(q.depth)),
        h("td", { class: "num in-flight" }, count(q.inFlight)),
        h("td", { class: "num rate" }, rate(q.rate)),
        h("td", { class: "counts" }, counts.length ? counts : h("span", { class: "muted" }, "empty")),
        h("td", { class: "muted" }, `${rate(limits.maxDispatchesPerSecond)} · burst ${limits.maxBurstSize} · ${count(limits.maxConcurrentDispatches)} concurrent`),
        h("td", { class: "muted" }, backoffRange(q.retry)),
        h("td", { class: "actions" },
          h("button", { type: "button", "data-action": paused ? "resume" : "pause", "data-queue": q.name }, paused ? "Resume" : "Pause"),
          h("button", { type: "button", class: "danger", "data-action": "purge", "data-queue": q.name, disabled: q.depth === 0 }, "Purge")),
      );
    },
  );
}

// ----- one queue: its configuration -----

function fact(label, ...value) {
  return [h("dt", {}, label), h("dd", {}, ...value)];
}

export function renderQueueHead(queue) {
  fill($("#queue-title"), queue.id, h("span", { class: "muted mono small" }, ` ${queue.name}`));
  const state = $("#queue-state");
  state.className = `badge ${queue.state.toLowerCase()}`;
  state.textContent = queue.state;
  const paused = queue.state !== "RUNNING";
  show($("#pause"), !paused);
  show($("#resume"), paused);
  $("#purge").disabled = queue.depth === 0;
  const retry = queue.retry;
  const limits = queue.rateLimits;
  const schedule = retry.backoffSchedule;
  const shown = schedule.map((delay, i) => h("li", { title: `after failed attempt ${i + 1}` }, duration(delay)));
  const more = retry.maxAttempts < 0 || retry.maxAttempts - 1 > schedule.length;
  const blocks = [
    h("div", { class: "block" }, h("h4", {}, "Rate limits"), h("dl", { class: "facts" },
      fact("Max dispatches", rate(limits.maxDispatchesPerSecond)),
      fact("Burst", count(limits.maxBurstSize)),
      fact("Max concurrent", count(limits.maxConcurrentDispatches)),
      fact("Now", `${rate(queue.rate)} · ${count(queue.inFlight)} in flight · ${count(queue.depth)} tasks`))),
    h("div", { class: "block wide" }, h("h4", {}, "Retry policy"), h("dl", { class: "facts" },
      fact("Max attempts", retry.maxAttempts < 0 ? "unlimited" : count(retry.maxAttempts)),
      fact("Max retry duration", retry.maxRetryDuration > 0 ? duration(retry.maxRetryDuration) : "unlimited"),
      fact("Backoff", `${duration(retry.minBackoff)} → ${duration(retry.maxBackoff)}, ${retry.maxDoublings} doublings`),
      fact("Retry window", retry.retryWindow === null ? "—" : `${duration(retry.retryWindow)} if every attempt fails at once`)),
      h("div", { class: "schedule" }, h("span", { class: "muted" }, "Backoff after each failed attempt:"),
        h("ol", { id: "backoff-schedule" }, shown, more ? h("li", { class: "more" }, "…") : null))),
  ];
  if (queue.routing) {
    const r = queue.routing;
    const uri = r.uri ? Object.entries(r.uri).filter(([key, v]) => v !== null && key !== "mode").map(([key, v]) => `${key} ${v}`).join(", ") : "";
    blocks.push(h("div", { class: "block" }, h("h4", {}, "Queue-level routing"), h("dl", { class: "facts" },
      r.method ? fact("Method", r.method) : null,
      uri ? fact(`URI (${r.uri.mode})`, uri) : null,
      r.auth ? fact("Token", `${r.auth.kind} for ${r.auth.account}`) : null,
      r.headers.length ? fact("Headers", r.headers.map(([k, v]) => `${k}: ${v}`).join("; ")) : null)));
  }
  fill($("#queue-config"), blocks);
}

// ----- one queue: a page of its tasks -----

export function renderTasks(doc, selectedTask) {
  const now = doc.now;
  syncRows(
    $("#tasks tbody"),
    doc.tasks,
    (t) => t.name,
    (t) => JSON.stringify([t, t.name === selectedTask, Math.round(now)]),
    (t) => {
      const next = t.state === "running" ? h("span", { class: "muted" }, "running now")
        : [clock(t.schedule), h("div", { class: "muted small" }, relative(t.schedule, now))];
      const last = t.lastAttempt && t.lastAttempt.response !== null ? t.lastAttempt : null;
      return h(
        "tr",
        { class: t.name === selectedTask ? "selected clickable" : "clickable", "data-select-task": t.name },
        h("td", { class: "mono" }, h("a", { href: `#queue=${encodeURIComponent(doc.queue)}&task=${encodeURIComponent(t.name)}` }, t.id)),
        h("td", { class: "state" }, badge(t.state)),
        h("td", { class: "num attempts" }, count(t.attempts)),
        h("td", {}, next),
        h("td", {}, last ? [statusBadge(last), h("div", { class: "muted small" }, relative(last.response, now))] : h("span", { class: "muted" }, "—")),
      );
    },
  );
  show($("#no-tasks"), doc.tasks.length === 0);
  const first = doc.total ? doc.offset + 1 : 0;
  $("#tasks-range").textContent = `${count(first)}–${count(doc.offset + doc.tasks.length)} of ${count(doc.total)}`;
}

export function renderFilter(current, counts) {
  const states = ["", "running", "retrying", "waiting", "scheduled"];
  fill($("#state-filter"), states.map((state) => h("button", {
    type: "button",
    class: state === current ? "chip on" : "chip",
    "data-filter": state,
    "aria-pressed": state === current ? "true" : "false",
  }, state || "all", counts ? h("span", { class: "muted" }, ` ${count(state ? counts[state] : Object.values(counts).reduce((a, b) => a + b, 0))}`) : null)));
}

// ----- one task -----

export function renderTask(doc) {
  const task = doc.task;
  const now = doc.now;
  fill($("#task-title"), task.id);
  const state = $("#task-state");
  const label = doc.ending ?? task.state;
  state.className = `badge ${label}`;
  state.textContent = label;
  show($("#run-task"), !doc.ending);
  show($("#delete-task"), !doc.ending);
  const policy = doc.policy;
  fill($("#task-facts"),
    fact("Queue", shortName(doc.queue)),
    fact("Created", clock(task.created), h("span", { class: "muted" }, ` ${relative(task.created, now)}`)),
    fact("Attempts", `${count(task.attempts)} dispatched, ${count(task.responses)} answered`),
    doc.firstDispatch ? fact("First attempt", clock(doc.firstDispatch)) : null,
    doc.ending ? fact("Ended", badge(doc.ending), ` ${clock(doc.endedAt)} (${relative(doc.endedAt, now)})`)
      : task.state === "running" ? fact("Next attempt", "running now")
        : fact("Next attempt", clock(task.schedule), h("span", { class: "muted" }, ` ${relative(task.schedule, now)}`)),
    fact("Dispatch deadline", duration(doc.deadline)),
    fact("Retry policy", `${backoffRange(policy)} (${doc.policySource === "task" ? "the task's own" : doc.policySource === "queue" ? "the queue's" : "default"})`),
  );
  const backoffs = doc.timeline.map((a) => a.backoff ?? 0);
  const widest = Math.max(...backoffs, 1e-9);
  syncRows(
    $("#timeline tbody"),
    doc.timeline,
    (a) => String(a.number),
    (a) => JSON.stringify([a, widest]),
    (a) => h("tr", { class: `attempt ${a.outcome.replace(" ", "-")}` },
      h("td", { class: "num" }, String(a.number)),
      h("td", {}, clock(a.schedule)),
      h("td", {}, clock(a.dispatch)),
      h("td", { class: "status" }, a.outcome === "abandoned" ? badge("abandoned", "deleted") : statusBadge(a)),
      h("td", { class: "num latency" }, a.latency === null ? "—" : duration(a.latency)),
      h("td", { class: "backoff", "data-seconds": a.backoff ?? "" },
        a.backoff === null ? h("span", { class: "muted" }, a.outcome === "failed" || a.outcome === "no response" ? (doc.ending ? "retrying stopped" : "—") : "")
          : h("div", { class: "bar-cell" },
            h("span", { class: "backoff-bar", style: { width: `${Math.max(2, (100 * a.backoff) / widest)}%` } }),
            h("span", { class: "bar-label" }, duration(a.backoff),
              a.lawBackoff !== null && Math.abs(a.lawBackoff - a.backoff) > 0.001
                ? h("span", { class: "muted" }, ` (law: ${duration(a.lawBackoff)})`) : null)))),
  );
  show($("#no-attempts"), doc.timeline.length === 0);
  const upcoming = $("#upcoming");
  const notes = [];
  if (doc.attemptsNotKept) notes.push(`${count(doc.attemptsNotKept)} earlier attempts are not kept. `);
  if (doc.upcoming.length) {
    notes.push(`If attempt ${doc.upcoming[0].afterAttempt} fails too, the retry law waits `,
      doc.upcoming.map((u) => duration(u.backoff)).join(", then "), " before the next ones.");
  }
  if (!doc.ending && policy.maxAttempts > 0) notes.push(` Retrying stops after attempt ${count(policy.maxAttempts)}${policy.maxRetryDuration > 0 ? ` and ${duration(policy.maxRetryDuration)} of retrying` : ""}.`);
  upcoming.textContent = notes.join("");
  show(upcoming, notes.length > 0);
  renderRequest(doc.request);
}

function renderRequest(request) {
  const body = request.body;
  const bodyView = body.size === 0 ? h("p", { class: "muted" }, "No body.")
    : body.text !== null ? [h("p", { class: "muted" }, `${bytes(body.size)}, UTF-8${body.cut ? " (cut)" : ""}`), h("pre", { class: "body" }, body.text)]
      : [h("p", { class: "muted" }, `${bytes(body.size)}, binary (not UTF-8); the first bytes in hex:`), h("pre", { class: "body hex" }, body.hex + (body.cut ? " …" : ""))];
  fill($("#task-request"),
    h("p", { class: "mono request-line" }, h("strong", {}, request.method), " ", request.url),
    request.url !== request.taskUrl ? h("p", { class: "muted small" }, `The task's own URL: ${request.taskUrl || "(none)"}; its queue's http_target rewrites it.`) : null,
    request.auth ? h("p", { class: "muted small" }, `${request.auth.kind} token for ${request.auth.account}${request.auth.audience ? `, audience ${request.auth.audience}` : ""}`) : null,
    request.headers.length
      ? h("table", { class: "grid headers" }, h("tbody", {}, request.headers.map(([key, value]) => h("tr", {}, h("th", {}, key), h("td", { class: "mono" }, value)))))
      : h("p", { class: "muted" }, "No headers of its own."),
    h("h5", {}, "Body"),
    bodyView,
  );
}

// ----- finished tasks -----

export function renderFinished(doc, queue) {
  const now = doc.now;
  syncRows(
    $("#finished tbody"),
    doc.tasks,
    (t) => `${t.name}@${t.at}`,
    (t) => JSON.stringify([t, Math.round(now)]),
    (t) => h("tr", { class: "clickable", "data-select-task": t.name },
      h("td", { class: "mono" }, h("a", { href: `#queue=${encodeURIComponent(queue)}&task=${encodeURIComponent(t.name)}` }, t.id)),
      h("td", {}, badge(t.ending)),
      h("td", {}, clock(t.at), h("span", { class: "muted" }, ` ${relative(t.at, now)}`)),
      h("td", { class: "num" }, count(t.attempts)),
      h("td", {}, statusBadge(t.lastAttempt))),
  );
  show($("#no-finished"), doc.tasks.length === 0);
}

// ----- dead letters -----

export function renderDeadLetters(doc) {
  const now = doc.now;
  fill($("#dead-letter-queue"), doc.queue ?? "");
  const note = $("#replay-note");
  const reason = doc.problem ?? (doc.replay.enabled ? null : `Replay is off: ${doc.replay.reason}`);
  note.textContent = reason ?? "";
  show(note, Boolean(reason));
  syncRows(
    $("#dead-letters tbody"),
    doc.letters,
    (l) => l.name,
    (l) => JSON.stringify([l, doc.replay, Math.round(now)]),
    (l) => {
      const preview = l.bodyOmitted ? h("span", { class: "muted" }, `omitted: ${l.bodyOmitted}`)
        : [h("span", { class: "muted" }, `${bytes(l.size ?? 0)} `), h("code", { class: "preview" }, l.preview.text + (l.preview.cut ? "…" : ""))];
      return h("tr", { class: "letter" },
        h("td", { class: "mono" }, l.task ?? l.id, h("div", { class: "muted small" }, l.id)),
        h("td", {}, l.queueKey ?? l.queue ?? "—"),
        h("td", { class: "num" }, l.attempt ?? "—", l.final === false ? h("div", { class: "muted small" }, "provisional") : null),
        h("td", { class: "reason" }, l.reason ?? l.problem ?? ""),
        h("td", {}, l.recordedAt ? relative(Date.parse(l.recordedAt) / 1000, now) : "—"),
        h("td", { class: "body-cell" }, preview),
        h("td", { class: "actions" },
          h("button", { type: "button", "data-action": "replay", "data-letter": l.id, disabled: !doc.replay.enabled, title: doc.replay.enabled ? "Create the task again on its queue, then remove this letter" : doc.replay.reason }, "Replay"),
          h("button", { type: "button", class: "danger", "data-action": "discard", "data-letter": l.id }, "Discard")),
      );
    },
  );
  show($("#no-letters"), doc.letters.length === 0 && !doc.problem);
  const first = doc.total ? doc.offset + 1 : 0;
  $("#letters-range").textContent = `${count(first)}–${count(doc.offset + doc.letters.length)} of ${count(doc.total)}`;
}

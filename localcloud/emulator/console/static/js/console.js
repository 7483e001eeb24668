// The console page: which queue and task are open (kept in the URL's #fragment, so Back works and a view can
// be linked), a poll every second of just what is shown (one page of tasks, never all of them), and the actions.

import * as api from "./api.js";
import { show } from "./dom.js";
import { clock } from "./format.js";
import * as views from "./views.js";

const POLL_MS = 1000;
const LETTERS_PAGE = 50;
const FINISHED_SHOWN = 20;
const $ = (selector) => document.querySelector(selector);

const view = {
  queue: null, // full queue name
  task: null, // full task name
  filter: "", // a task state, or "" for all
  taskCursors: [""], // the cursor of each page up to the one shown: Previous pops one
  letterCursors: [""],
};
let timer = null;
let polling = false;

function readHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  const queue = params.get("queue");
  const filter = params.get("state") ?? "";
  if (queue !== view.queue || filter !== view.filter) view.taskCursors = [""];
  view.queue = queue;
  view.task = params.get("task");
  view.filter = filter;
  if (location.hash === "#dead-letters") $("#dead-letters-section").scrollIntoView();
}

function writeHash(changes) {
  const next = { queue: view.queue, task: view.task, state: view.filter, ...changes };
  const params = new URLSearchParams(Object.entries(next).filter(([, value]) => value));
  location.hash = params.toString();
}

function say(text, kind = "error") {
  const message = $("#message");
  message.textContent = text;
  message.className = `message ${kind}`;
  show(message, Boolean(text));
}

async function refresh() {
  const taskCursor = view.taskCursors.at(-1);
  const letterCursor = view.letterCursors.at(-1);
  const [queues, tasks, finished, task, letters] = await Promise.allSettled([
    api.get("/api/queues"),
    view.queue ? api.get(`${api.pathOf(view.queue)}/tasks`, { cursor: taskCursor, state: view.filter }) : null,
    view.queue ? api.get("/api/finished", { queue: view.queue, limit: FINISHED_SHOWN }) : null,
    view.task ? api.get(api.pathOf(view.task)) : null,
    api.get("/api/dead-letters", { cursor: letterCursor, limit: LETTERS_PAGE }),
  ]);
  const live = $("#live");
  if (queues.status === "rejected") {
    live.textContent = `disconnected (${queues.reason.message}); retrying`;
    live.className = "live down";
    return;
  }
  live.textContent = `live · ${clock(queues.value.now)}`;
  live.className = "live up";
  views.renderQueues(queues.value, view.queue);
  const queue = queues.value.queues.find((q) => q.name === view.queue);
  show($("#queue-section"), Boolean(queue));
  if (view.queue && !queue) say(`queue ${view.queue} is not on this emulator (any more)`);
  if (queue) {
    views.renderQueueHead(queue);
    views.renderFilter(view.filter, queue.counts);
    if (tasks.status === "fulfilled") {
      views.renderTasks(tasks.value, view.task);
      $("#tasks-prev").disabled = view.taskCursors.length < 2;
      $("#tasks-first").disabled = view.taskCursors.length < 2;
      $("#tasks-next").disabled = !tasks.value.nextCursor;
      $("#tasks-next").dataset.cursor = tasks.value.nextCursor ?? "";
    }
    if (finished.status === "fulfilled") views.renderFinished(finished.value, view.queue);
  }
  show($("#task-panel"), Boolean(view.task) && task.status === "fulfilled");
  if (view.task && task.status === "fulfilled") views.renderTask(task.value);
  if (view.task && task.status === "rejected") say(task.reason.message);
  if (letters.status === "fulfilled") {
    views.renderDeadLetters(letters.value);
    $("#letters-prev").disabled = view.letterCursors.length < 2;
    $("#letters-first").disabled = view.letterCursors.length < 2;
    $("#letters-next").disabled = !letters.value.nextCursor;
    $("#letters-next").dataset.cursor = letters.value.nextCursor ?? "";
  }
}

/** Poll now, then every second while the tab is visible; never two polls at once. */
async function poll() {
  clearTimeout(timer);
  if (polling) return;
  polling = true;
  try {
    await refresh();
  } catch (error) {
    say(`the console failed to draw: ${error.message}`);
  } finally {
    polling = false;
    if (!document.hidden) timer = setTimeout(poll, POLL_MS);
  }
}

async function act(button) {
  const { action } = button.dataset;
  const queue = button.dataset.queue ?? view.queue;
  const confirmations = {
    purge: () => `Purge every task of ${queue}?`,
    delete: () => `Delete the task ${view.task}?`,
    discard: () => `Discard the dead letter ${button.dataset.letter}? It cannot be replayed afterwards.`,
  };
  if (confirmations[action] && !window.confirm(confirmations[action]())) return;
  const paths = {
    pause: () => `${api.pathOf(queue)}/pause`,
    resume: () => `${api.pathOf(queue)}/resume`,
    purge: () => `${api.pathOf(queue)}/purge`,
    run: () => `${api.pathOf(view.task)}/run`,
    delete: () => `${api.pathOf(view.task)}/delete`,
    replay: () => `/api/dead-letters/${encodeURIComponent(button.dataset.letter)}/replay`,
    discard: () => `/api/dead-letters/${encodeURIComponent(button.dataset.letter)}/discard`,
  };
  button.disabled = true;
  try {
    const done = await api.post(paths[action]());
    say(action === "replay" ? `replayed as ${done.result.task}` : "", "info");
  } catch (error) {
    say(error.message);
  } finally {
    button.disabled = false;
    poll();
  }
}

document.addEventListener("click", (event) => {
  const target = event.target;
  const button = target.closest("button");
  if (button?.dataset.action) return act(button);
  if (button?.id === "pause" || button?.id === "resume" || button?.id === "purge") {
    button.dataset.action = button.id;
    return act(button);
  }
  if (button?.id === "run-task" || button?.id === "delete-task") {
    button.dataset.action = button.id === "run-task" ? "run" : "delete";
    return act(button);
  }
  if (button?.id === "close-task") return writeHash({ task: null });
  if (button?.dataset.filter !== undefined) return writeHash({ state: button.dataset.filter, task: view.task });
  const pagers = {
    "tasks-next": () => view.taskCursors.push(button.dataset.cursor),
    "tasks-prev": () => view.taskCursors.pop(),
    "tasks-first": () => (view.taskCursors = [""]),
    "letters-next": () => view.letterCursors.push(button.dataset.cursor),
    "letters-prev": () => view.letterCursors.pop(),
    "letters-first": () => (view.letterCursors = [""]),
  };
  if (button && pagers[button.id]) {
    pagers[button.id]();
    return poll();
  }
  if (target.closest("a")) return undefined; // a link changes the #fragment itself
  const row = target.closest("tr");
  if (row?.dataset.selectTask) return writeHash({ task: row.dataset.selectTask });
  if (row?.dataset.selectQueue) return writeHash({ queue: row.dataset.selectQueue, task: null, state: "" });
  return undefined;
});

window.addEventListener("hashchange", () => {
  readHash();
  say("");
  poll();
});
document.addEventListener("visibilitychange", () => {
  if (!document.hidden) poll();
});
readHash();
poll();

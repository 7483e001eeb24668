// The console's JSON API (localcloud/emulator/console/app.py). Every error is one line: {"error": "..."}.

async function answer(response) {
  let document = null;
  try {
    document = await response.json();
  } catch {
    // not JSON: a proxy or a crash; the status says enough
  }
  if (!response.ok) throw new Error(document?.error ?? `HTTP ${response.status}`);
  return document;
}

export async function get(path, params = {}) {
  const query = new URLSearchParams(Object.entries(params).filter(([, value]) => value !== null && value !== ""));
  const url = query.size ? `${path}?${query}` : path;
  return answer(await fetch(url, { headers: { Accept: "application/json" } }));
}

/** An action: always a POST from this page (the server refuses one sent from another site). */
export async function post(path) {
  return answer(await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" }));
}

/** The API path of a queue or task name (projects/P/locations/L/queues/Q[/tasks/T]). */
export function pathOf(name) {
  return `/api/${name.split("/").map(encodeURIComponent).join("/")}`;
}

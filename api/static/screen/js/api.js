// The API client: same origin as the page, ETag/If-None-Match on every GET, the API key (if the
// user typed one) from sessionStorage only, so it never outlives the tab.

const KEY_STORAGE = "cityneuron.apiKey";
const validators = new Map(); // url -> {etag, body}

export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(value) {
  if (value) sessionStorage.setItem(KEY_STORAGE, value);
  else sessionStorage.removeItem(KEY_STORAGE);
}

function headers(extra = {}) {
  const h = { Accept: "application/json", ...extra };
  const key = apiKey();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function failure(response) {
  let code = "http_" + response.status;
  let message = response.statusText;
  try {
    const body = await response.json();
    if (body && body.error) ({ code, message } = body.error);
  } catch (_) { /* not JSON */ }
  return new ApiError(response.status, code, message);
}

export function url(path, params = {}) {
  const u = new URL(path, window.location.origin);
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") u.searchParams.set(k, v);
  }
  return u.pathname + u.search;
}

// GET with the validator of the last answer for the same URL.
// Returns {body, changed}: changed is false when the server answered 304 (body is the cached one).
export async function getJSON(path, params = {}) {
  const target = url(path, params);
  const known = validators.get(target);
  const extra = known ? { "If-None-Match": known.etag } : {};
  const response = await fetch(target, { headers: headers(extra), cache: "no-store" });
  if (response.status === 304 && known) return { body: known.body, changed: false };
  if (!response.ok) throw await failure(response);
  const body = await response.json();
  const etag = response.headers.get("ETag");
  if (etag) validators.set(target, { etag, body });
  return { body, changed: true };
}

// Forget validators of URLs starting with prefix (e.g. a since= URL that will not be asked again).
export function forget(prefix) {
  for (const key of validators.keys()) if (key.startsWith(prefix)) validators.delete(key);
}

export async function postJSON(path, body) {
  const response = await fetch(url(path), {
    method: "POST",
    headers: headers({ "Content-Type": "application/json" }),
    body: JSON.stringify(body),
  });
  if (!response.ok) throw await failure(response);
  return response.json();
}

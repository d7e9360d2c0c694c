// Tollgate's dashboard. Every figure on the page is read from the public
// REST API with the signed-in credential; nothing is computed that the API
// does not answer, and money is summed as exact decimals (decimal.js).
// The credential lives in sessionStorage and is sent only as
// `Authorization: Bearer` to this same origin.

import * as dec from "/dashboard/decimal.js";

const STORE = "tollgate.dashboard.token";
const DAY = 86400;
const STATUSES = ["completed", "incomplete", "failed", "cancelled", "upstream_error",
  "rejected", "interrupted", "queued"];
const PALETTE = ["#2f5fd7", "#e07b39", "#2a9d8f", "#c8553d", "#7b5ea7", "#5b8e23",
  "#d4a017", "#3d7ea6", "#a63d73", "#6c757d"];

const state = { token: null, admin: false, range: null, recordsCursor: null, charts: [], keyNames: new Map() };
const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------- the API

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, { method = "GET", body, raw = false } = {}) {
  const headers = { Authorization: `Bearer ${state.token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "omit", cache: "no-store",
  });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error?.message ?? message; } catch { /* not JSON */ }
    throw new ApiError(response.status, message);
  }
  return raw ? response : response.json();
}

const usagePath = () => (state.admin ? "/admin/usage" : "/v1/usage");
const recordsPath = () => (state.admin ? "/admin/usage/records" : "/v1/usage/records");

function query(params) {
  const search = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== "") search.set(k, v);
  return search.toString();
}

/** Every bucket of the range for one grouping, following `next_page`. */
async function usage(groupBy) {
  const { start, end } = state.range;
  const buckets = [];
  let page;
  do {
    const body = await api(`${usagePath()}?${query({
      start_time: start, end_time: end, bucket_width: "1d", limit: 31, group_by: groupBy, page,
    })}`);
    buckets.push(...body.data);
    page = body.has_more ? body.next_page : undefined;
  } while (page);
  return buckets;
}

// ---------------------------------------------------------------- sign-in

/** Admin if `/admin/prices` accepts the token, tenant if `/v1/usage` does. */
async function identify() {
  try { await api("/admin/prices"); return "admin"; } catch (e) { if (!(e instanceof ApiError)) throw e; }
  const now = Math.floor(Date.now() / 1000);
  await api(`/v1/usage?${query({ start_time: now - DAY, end_time: now })}`);
  return "tenant";
}

async function signIn(token) {
  state.token = token;
  const role = await identify();
  state.admin = role === "admin";
  sessionStorage.setItem(STORE, token);
  $("sign-in").hidden = true;
  $("app").hidden = false;
  $("session").hidden = false;
  $("role").textContent = state.admin ? "Admin · all tenants" : "Tenant key";
  $("tenants-card").hidden = !state.admin;
  document.querySelector('[data-tab="reconcile"]').hidden = !state.admin;
  $("price-form-card").hidden = !state.admin;
  $("prices-note").hidden = state.admin;
  await guarded(refresh);
}

function signOut() {
  sessionStorage.removeItem(STORE);
  state.token = null;
  location.reload();
}

// ---------------------------------------------------------------- range

/** Default: the last 30 UTC days, today included. */
function defaultRange() {
  const today = Math.floor(Date.now() / 1000 / DAY) * DAY;
  return { start: today - 29 * DAY, end: today + DAY };
}

const isoDay = (seconds) => new Date(seconds * 1000).toISOString().slice(0, 10);
const fromIsoDay = (text) => Math.floor(Date.parse(`${text}T00:00:00Z`) / 1000);

function setRange(range) {
  state.range = range;
  $("range-start").value = isoDay(range.start);
  $("range-end").value = isoDay(range.end - DAY);
  const totals = $("totals");
  totals.dataset.start = range.start;
  totals.dataset.end = range.end;
}

// ---------------------------------------------------------------- key names

/** Names of the keys the credential may see: every key for an admin
 * (`/admin/keys`), the tenant's own for a tenant key (`/v1/keys`). */
async function loadKeyNames() {
  const body = await api(state.admin ? "/admin/keys" : "/v1/keys");
  state.keyNames = new Map(body.data.map((k) => [k.id, k.name]));
}

/** A key as people recognise it: its name next to its id. */
function keyLabel(id) {
  if (id === null || id === undefined) return id;
  const name = state.keyNames.get(id);
  return name ? `${name} · ${id}` : id;
}

// ---------------------------------------------------------------- overview

/** Folds bucket results into per-group totals, costs summed exactly. */
function fold(buckets, key) {
  const groups = new Map();
  for (const bucket of buckets) {
    for (const r of bucket.results) {
      const name = key(r) ?? "(none)";
      const g = groups.get(name) ?? { name, requests: 0, input: 0, cached: 0, output: 0,
        reasoning: 0, cost: "0", unpriced: 0, otherCurrency: 0 };
      g.requests += r.num_model_requests;
      g.input += r.input_tokens;
      g.cached += r.input_cached_tokens;
      g.output += r.output_tokens;
      g.reasoning += r.output_reasoning_tokens;
      g.unpriced += r.unpriced_requests;
      if (r.cost.currency === "usd") g.cost = dec.add(g.cost, r.cost.value);
      else g.otherCurrency += r.num_model_requests;
      groups.set(name, g);
    }
  }
  return [...groups.values()];
}

const money = (value) => `$${dec.group(dec.round(value, 4))}`;
const int = (n) => n.toLocaleString("en-US");

function setMetric(name, value, text) {
  const el = document.querySelector(`[data-metric="${name}"]`);
  el.dataset.value = value;
  el.textContent = text;
  el.title = String(value);
}

function renderTotals(buckets) {
  const [all] = fold(buckets, () => "all").concat([{ requests: 0, input: 0, cached: 0,
    output: 0, reasoning: 0, cost: "0", unpriced: 0, otherCurrency: 0 }]);
  setMetric("total-cost", all.cost, money(all.cost));
  setMetric("requests", all.requests, int(all.requests));
  setMetric("input-tokens", all.input, int(all.input));
  setMetric("output-tokens", all.output, int(all.output));
  $("currency-note").textContent = `USD, exact: ${all.cost}`;
  $("unpriced-note").textContent = `${int(all.unpriced)} unpriced`;
  $("unpriced-note").dataset.value = all.unpriced;
  $("cached-note").textContent = `${int(all.cached)} cached`;
  $("reasoning-note").textContent = `${int(all.reasoning)} reasoning`;
}

function table(el, columns, rows, { empty = "No data in this range.", onRow } = {}) {
  el.replaceChildren();
  const head = el.createTHead().insertRow();
  for (const c of columns) {
    const th = document.createElement("th");
    th.textContent = c.title;
    if (c.num) th.className = "num";
    head.appendChild(th);
  }
  const body = el.createTBody();
  if (rows.length === 0) {
    const td = body.insertRow().insertCell();
    td.colSpan = columns.length;
    td.className = "empty";
    td.textContent = empty;
    return;
  }
  for (const row of rows) {
    const tr = body.insertRow();
    for (const c of columns) {
      const td = tr.insertCell();
      const value = c.value(row);
      td.textContent = value ?? "–";
      td.dataset.label = c.title;
      if (c.num) td.className = "num";
      if (c.key) td.dataset.col = c.key;
    }
    if (onRow) { tr.classList.add("clickable"); tr.addEventListener("click", () => onRow(row)); }
  }
}

const GROUP_COLUMNS = (title, label = (name) => name) => [
  { title, key: "name", value: (g) => label(g.name) },
  { title: "Requests", num: true, value: (g) => int(g.requests) },
  { title: "Input", num: true, value: (g) => int(g.input) },
  { title: "Output", num: true, value: (g) => int(g.output) },
  { title: "Cost (USD)", num: true, key: "cost", value: (g) => dec.group(g.cost) },
  { title: "Unpriced", num: true, value: (g) => int(g.unpriced) },
];

const byCost = (a, b) => dec.compare(b.cost, a.cost) || b.requests - a.requests;

function renderCharts(buckets) {
  for (const chart of state.charts) chart.destroy();
  state.charts = [];
  if (!window.Chart) return;
  const models = fold(buckets, (r) => r.model).sort(byCost).map((g) => g.name);
  const labels = buckets.map((b) => isoDay(b.start_time).slice(5));
  // The chart's bar heights are the one place a cost becomes a float: a
  // picture cannot be exact. Every printed figure comes from the tables.
  const series = (pick) => models.map((model, i) => ({
    label: model,
    backgroundColor: PALETTE[i % PALETTE.length],
    data: buckets.map((b) => b.results.filter((r) => (r.model ?? "(none)") === model)
      .reduce((acc, r) => acc + pick(r), 0)),
    borderRadius: 2,
  }));
  const options = (ticks) => ({
    responsive: true, maintainAspectRatio: false, animation: false,
    interaction: { mode: "index", intersect: false },
    plugins: { legend: { position: "bottom", labels: { boxWidth: 12 } } },
    scales: { x: { stacked: true, grid: { display: false } },
      y: { stacked: true, beginAtZero: true, ticks } },
  });
  state.charts.push(new window.Chart($("cost-chart"), {
    type: "bar",
    data: { labels, datasets: series((r) => (r.cost.currency === "usd" ? Number(r.cost.value) : 0)) },
    options: options({ callback: (v) => `$${v}` }),
  }));
  state.charts.push(new window.Chart($("tokens-chart"), {
    type: "bar",
    data: { labels, datasets: series((r) => r.input_tokens + r.output_tokens) },
    options: options({}),
  }));
}

async function renderOverview() {
  const [byModel, byKey, byStatus, byTenant] = await Promise.all([
    usage("model"), usage("api_key_id"), usage("status"),
    state.admin ? usage("tenant") : Promise.resolve(null),
  ]);
  renderTotals(byModel);
  renderCharts(byModel);
  const models = fold(byModel, (r) => r.model).sort(byCost);
  const keys = fold(byKey, (r) => r.api_key_id).sort(byCost);
  const statuses = fold(byStatus, (r) => r.status).sort((a, b) => b.requests - a.requests);
  table($("models-table"), GROUP_COLUMNS("Model"), models);
  table($("keys-table"), GROUP_COLUMNS("Key", keyLabel).slice(0, 5), keys.slice(0, 10));
  table($("statuses-table"), GROUP_COLUMNS("Status").slice(0, 2).concat(
    GROUP_COLUMNS("").slice(4)), statuses);
  if (byTenant) table($("tenants-table"), GROUP_COLUMNS("Tenant"), fold(byTenant, (r) => r.tenant).sort(byCost));
  fillFilter($("filter-model"), models.map((g) => g.name));
  fillFilter($("filter-key"), keys.map((g) => g.name), keyLabel);
  fillFilter($("filter-status"), STATUSES);
}

function fillFilter(select, values, label = (v) => v) {
  const current = select.value;
  select.replaceChildren(new Option("any", ""));
  for (const v of values) if (v !== "(none)") select.add(new Option(label(v), v));
  select.value = values.includes(current) ? current : "";
}

// ---------------------------------------------------------------- records

function recordFilters() {
  return {
    start_time: state.range.start, end_time: state.range.end,
    models: $("filter-model").value, statuses: $("filter-status").value,
    api_key_ids: $("filter-key").value,
  };
}

const RECORD_COLUMNS = () => [
  { title: "Started (UTC)", value: (r) => r.started_at.replace("T", " ").slice(0, 19) },
  ...(state.admin ? [{ title: "Tenant", key: "tenant", value: (r) => r.tenant }] : []),
  { title: "Key", key: "api_key_id", value: (r) => keyLabel(r.api_key_id) },
  { title: "Model", key: "model", value: (r) => r.model },
  { title: "Status", key: "status", value: (r) => r.status },
  { title: "HTTP", num: true, value: (r) => r.http_status },
  { title: "Input", num: true, value: (r) => r.input_tokens },
  { title: "Output", num: true, value: (r) => r.output_tokens },
  { title: "Cost (USD)", num: true, key: "cost", value: (r) => r.cost ?? (r.unpriced_reason ? `unpriced: ${r.unpriced_reason}` : null) },
  { title: "Request id", key: "request_id", value: (r) => r.request_id },
];

async function loadRecords(append = false) {
  const after = append ? state.recordsCursor : undefined;
  const page = await api(`${recordsPath()}?${query({ ...recordFilters(), limit: 50, after })}`);
  const el = $("records-table");
  const rows = append ? (state.records ?? []).concat(page.data) : page.data;
  state.records = rows;
  table(el, RECORD_COLUMNS(), rows, { empty: "No records match." });
  el.dataset.rows = rows.length;
  state.recordsCursor = page.next_cursor;
  $("records-more").hidden = !page.has_more;
  $("records-count").textContent = `${rows.length} record${rows.length === 1 ? "" : "s"} shown${page.has_more ? ", more available" : ""}`;
}

/** CSV needs the Authorization header, so it is fetched, then saved from a Blob. */
async function downloadCsv() {
  const response = await api(`${recordsPath()}?${query({ ...recordFilters(), format: "csv" })}`, { raw: true });
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = `tollgate-records-${isoDay(state.range.start)}-${isoDay(state.range.end - DAY)}.csv`;
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

// ---------------------------------------------------------------- prices

const PRICE_FIELDS = [
  ["input_cost_per_token", "Input"], ["cache_read_input_token_cost", "Cached input"],
  ["output_cost_per_token", "Output"], ["output_cost_per_reasoning_token", "Reasoning"],
];

const priceColumns = (first) => [
  first,
  ...PRICE_FIELDS.map(([field, title]) => ({ title, num: true, key: field, value: (p) => p[field] })),
  { title: "Effective from", value: (p) => p.effective_from.replace("T", " ").slice(0, 19) },
];

async function loadPrices() {
  if (!state.admin) { $("prices-table").replaceChildren(); return; }
  const prices = await api("/admin/prices");
  table($("prices-table"), priceColumns({ title: "Model", key: "model", value: (p) => p.model }),
    prices.data, { empty: "No prices set.", onRow: (p) => loadHistory(p.model) });
  if (prices.data.length && $("history-card").hidden) await loadHistory(prices.data[0].model);
}

async function loadHistory(model) {
  const body = await api(`/admin/prices/${encodeURIComponent(model)}`);
  $("history-model").textContent = model;
  const currentId = body.current?.id;
  table($("history-table"), priceColumns({ title: "Version", value: (p) =>
    `#${p.id}${p.id === currentId ? " (current)" : ""}${Date.parse(p.effective_from) > Date.now() ? " (scheduled)" : ""}${p.retired ? " retired" : ""}` })
    .concat([{ title: "Created by", value: (p) => p.created_by }]),
    [...body.history].reverse());
  $("history-card").hidden = false;
  $("price-form").elements.model.value = model;
}

async function savePrice(event) {
  event.preventDefault();
  const form = event.target;
  const body = {};
  for (const [field] of PRICE_FIELDS) {
    const v = form.elements[field].value.trim();
    if (v) body[field] = v; // sent as a decimal string: never through a float
  }
  const from = form.elements.effective_from.value;
  if (from) body.effective_from = `${from.length === 16 ? `${from}:00` : from}Z`;
  const model = form.elements.model.value.trim();
  $("price-error").hidden = true;
  $("price-ok").hidden = true;
  try {
    const version = await api(`/admin/prices/${encodeURIComponent(model)}`, { method: "PUT", body });
    $("price-ok").textContent = `Saved version #${version.id} of ${model}.`;
    $("price-ok").hidden = false;
    await loadPrices();
    await loadHistory(model);
  } catch (e) {
    $("price-error").textContent = e.message;
    $("price-error").hidden = false;
  }
}

// ---------------------------------------------------------------- provider vs ledger

const diff = (line, field) => (line.difference ? line.difference[field] : null);
const RECONCILE_COLUMNS = [
  { title: "Day", key: "day", value: (l) => l.day },
  { title: "Model", key: "model", value: (l) => l.model ?? "(none)" },
  { title: "Status", key: "status", value: (l) => l.status.replace("_", " ") },
  { title: "Requests", num: true, key: "requests", value: (l) => int(l.ledger.requests) },
  { title: "Provider requests", num: true, key: "provider_requests", value: (l) => (l.provider ? int(l.provider.requests) : null) },
  { title: "Δ requests", num: true, value: (l) => diff(l, "requests") },
  { title: "Δ input", num: true, value: (l) => diff(l, "input_tokens") },
  { title: "Δ cached", num: true, value: (l) => diff(l, "cached_tokens") },
  { title: "Δ output", num: true, value: (l) => diff(l, "output_tokens") },
  { title: "Cost (USD)", num: true, key: "cost", value: (l) => l.ledger.cost },
  { title: "Provider cost", num: true, key: "provider_cost", value: (l) => l.provider?.cost ?? null },
  { title: "Δ cost", num: true, key: "cost_diff", value: (l) => diff(l, "cost") },
];

/** `GET /admin/reconciliation` for the range, by day and model, as it answers. */
async function loadReconciliation() {
  if (!state.admin) return;
  const { start, end } = state.range;
  const body = await api(`/admin/reconciliation?${query({ start_time: start, end_time: end, group_by: "model" })}`);
  const el = $("reconcile-table");
  table(el, RECONCILE_COLUMNS, body.data, { empty: "Nothing to compare in this range." });
  for (const [i, line] of body.data.entries()) el.tBodies[0].rows[i].dataset.status = line.status;
  const fetched = body.fetched_at ? new Date(body.fetched_at * 1000).toISOString().replace(".000Z", "Z") : "never";
  $("reconcile-note").textContent = `Provider last fetched: ${fetched}. A day is pending until fetched ${body.settle_hours} h after it ends; `
    + `tokens must be equal, cost within ${body.tolerance.cost} USD or ${body.tolerance.cost_ratio} of the provider's.`;
}

// ---------------------------------------------------------------- limits

async function loadLimits() {
  const el = $("limits");
  let body;
  try {
    body = await api(state.admin ? "/admin/limits" : "/v1/key");
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) {
      el.replaceChildren(note("Spend control not configured: this gateway does not serve budgets or rate limits yet."));
      return;
    }
    throw e;
  }
  const scopes = limitScopes(body);
  el.replaceChildren();
  if (scopes.length === 0) { el.appendChild(note("No budgets or rate limits are set.")); return; }
  for (const [title, limits] of scopes) el.appendChild(limitCard(title, limits));
}

/** The scopes of a §8 status answer: `/v1/key` (key + tenant) or `/admin/limits` (a list). */
function limitScopes(body) {
  const scopes = [];
  const push = (title, raw) => {
    const value = raw?.status ?? raw; // a scope may carry {settings, status} or the status itself
    if (value && (value.budget || value.rate)) scopes.push([title, value]);
  };
  if (Array.isArray(body?.data)) {
    for (const item of body.data) {
      const name = item.key_id ? keyLabel(item.key_id) : (item.tenant ?? item.id ?? "");
      push(`${item.scope ?? (item.key_id ? "key" : "tenant")} ${name}`.trim(), item.status ?? item.limits ?? item);
    }
    return scopes;
  }
  const limits = body?.limits ?? body;
  push(`key ${keyLabel(body?.id) ?? ""}`.trim(), limits?.key);
  push(`tenant ${body?.tenant ?? ""}`.trim(), limits?.tenant);
  return scopes;
}

function limitCard(title, limits) {
  const card = document.createElement("div");
  card.className = "limit";
  const h = document.createElement("h3");
  h.textContent = title;
  card.appendChild(h);
  const b = limits.budget;
  if (b) {
    const spent = dec.add(b.spent ?? "0", b.reserved ?? "0");
    const amount = b.amount ?? "0";
    const share = dec.compare(amount, "0") > 0 ? Math.min(1, Number(spent) / Number(amount)) : 0;
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = `${(share * 100).toFixed(1)}%`;
    if (share >= 1) fill.className = "over";
    bar.appendChild(fill);
    card.append(line(`Budget: ${b.spent ?? "0"} spent + ${b.reserved ?? "0"} reserved of ${amount} USD per ${b.period} (${b.mode})`),
      bar, line(`Remaining ${b.remaining ?? "–"} · resets ${b.resets_at ?? "never"} · overrun ${b.overrun ?? "0"}`));
  }
  for (const [name, r] of Object.entries(limits.rate ?? {})) {
    if (r && typeof r === "object") card.appendChild(line(`${name.replaceAll("_", " ")}: ${r.remaining ?? "–"} of ${r.limit ?? "–"} left${r.reset_seconds !== undefined ? `, resets in ${r.reset_seconds}s` : ""}`));
  }
  return card;
}

const line = (text) => Object.assign(document.createElement("p"), { textContent: text });
const note = (text) => Object.assign(document.createElement("p"), { textContent: text, className: "muted" });

// ---------------------------------------------------------------- wiring

function showTab(name) {
  for (const tab of document.querySelectorAll("[data-tab]")) tab.setAttribute("aria-selected", String(tab.dataset.tab === name));
  for (const panel of document.querySelectorAll("[data-panel]")) panel.hidden = panel.dataset.panel !== name;
  document.body.dataset.tab = name;
  for (const chart of state.charts) chart.resize();
}

async function guarded(work) {
  const error = $("app-error");
  error.hidden = true;
  document.body.classList.add("busy");
  try { await work(); } catch (e) {
    if (e instanceof ApiError && e.status === 401) { signOut(); return; }
    error.textContent = e.message;
    error.hidden = false;
  } finally { document.body.classList.remove("busy"); }
}

async function refresh() {
  await loadKeyNames();
  await renderOverview();
  await Promise.all([loadRecords(), loadPrices(), loadLimits(), loadReconciliation()]);
  document.body.dataset.ready = "true";
}

function wire() {
  setRange(defaultRange());
  $("sign-in-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = event.target.elements.token.value.trim();
    $("sign-in-error").hidden = true;
    try { await signIn(token); } catch (e) {
      state.token = null;
      $("sign-in-error").textContent = e instanceof ApiError && e.status === 401
        ? "This token is not accepted by the gateway." : e.message;
      $("sign-in-error").hidden = false;
    }
  });
  $("sign-out").addEventListener("click", signOut);
  for (const tab of document.querySelectorAll("[data-tab]")) tab.addEventListener("click", () => showTab(tab.dataset.tab));
  $("range-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const start = fromIsoDay($("range-start").value);
    const end = fromIsoDay($("range-end").value) + DAY;
    if (!(end > start)) return;
    setRange({ start, end });
    document.body.dataset.ready = "false";
    guarded(refresh);
  });
  $("records-form").addEventListener("submit", (event) => {
    event.preventDefault();
    document.body.dataset.records = "loading";
    guarded(async () => { await loadRecords(); document.body.dataset.records = "ready"; });
  });
  $("records-more").addEventListener("click", () => guarded(() => loadRecords(true)));
  $("csv-download").addEventListener("click", () => guarded(downloadCsv));
  $("price-form").addEventListener("submit", savePrice);
  const saved = sessionStorage.getItem(STORE);
  if (saved) signIn(saved).catch(() => sessionStorage.removeItem(STORE));
}

wire();

// Drives the dashboard in Debian's Chromium (headless, through
// playwright-core; no browser is ever downloaded) against a live gateway
// that tests/dashboard.rs started and filled with known traffic.
//
//   node dashboard.test.mjs <base_url> <admin_token> <tenant_key> <info JSON>
//
// info: {"tenant", "other_tenant", "other_models": [...], "other_key_ids": [...],
//        "expected": {"admin": {"cost", "requests"}, "tenant": {"cost", "requests"}},
//        "filter_model"}
// The expected figures are the ledger's own sums (SQL), computed by the Rust
// side; the page must equal them and the REST API to the last digit.
// TOLLGATE_SCREENSHOTS=<dir> saves screenshots of the main views there.
// Exits non-zero on the first failed check.

import { chromium } from "playwright-core";
import assert from "node:assert/strict";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";

const [base, adminToken, tenantKey, infoJson] = process.argv.slice(2);
if (!infoJson) {
  console.error("usage: node dashboard.test.mjs <base_url> <admin_token> <tenant_key> <info JSON>");
  process.exit(2);
}
const info = JSON.parse(infoJson);
const origin = new URL(base).origin;
const shots = process.env.TOLLGATE_SCREENSHOTS;
const browserPath = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";

// ------------------------------------------------ exact decimals, written
// independently of the page's decimal.js so that one bug cannot hide in both.
function normalize(text) {
  const m = /^(-?)(\d+)(?:\.(\d+))?$/.exec(text);
  assert.ok(m, `not a decimal: ${text}`);
  const whole = m[2].replace(/^0+(?=\d)/, "");
  const frac = (m[3] ?? "").replace(/0+$/, "");
  const t = frac ? `${whole}.${frac}` : whole;
  return t === "0" ? "0" : `${m[1]}${t}`;
}
function addDecimal(a, b) {
  const split = (t) => { const [w, f = ""] = normalize(t).replace("-", "").split("."); return { neg: t.startsWith("-"), w, f }; };
  const x = split(a); const y = split(b);
  const scale = Math.max(x.f.length, y.f.length);
  const big = (v) => BigInt(v.w + v.f.padEnd(scale, "0")) * (v.neg ? -1n : 1n);
  const s = big(x) + big(y);
  const abs = (s < 0n ? -s : s).toString().padStart(scale + 1, "0");
  const t = scale ? `${abs.slice(0, -scale)}.${abs.slice(-scale)}` : abs;
  return normalize((s < 0n ? "-" : "") + t);
}

// ------------------------------------------------ the REST API
async function api(token, pathAndQuery) {
  const r = await fetch(base + pathAndQuery, { headers: { Authorization: `Bearer ${token}` } });
  assert.equal(r.status, 200, `${pathAndQuery}: ${r.status} ${await r.clone().text()}`);
  return pathAndQuery.includes("format=csv") ? r.text() : r.json();
}

async function apiTotals(token, usagePath, start, end) {
  let cost = "0"; let requests = 0; let page;
  do {
    const q = new URLSearchParams({ start_time: start, end_time: end, bucket_width: "1d", limit: "31", group_by: "model" });
    if (page) q.set("page", page);
    const body = await api(token, `${usagePath}?${q}`);
    for (const b of body.data) for (const r of b.results) {
      requests += r.num_model_requests;
      if (r.cost.currency === "usd") cost = addDecimal(cost, r.cost.value);
    }
    page = body.has_more ? body.next_page : undefined;
  } while (page);
  return { cost, requests };
}

async function apiRecordCount(token, recordsPath, params) {
  let count = 0; let after;
  do {
    const q = new URLSearchParams({ ...params, limit: "1000" });
    if (after) q.set("after", after);
    const body = await api(token, `${recordsPath}?${q}`);
    count += body.data.length;
    after = body.has_more ? body.next_cursor : undefined;
  } while (after);
  return count;
}

// ------------------------------------------------ the page
const leaks = [];
const pageErrors = [];
function watch(page) {
  page.on("request", (request) => {
    const url = request.url();
    if (!(url.startsWith(`${origin}/`) || url.startsWith(`blob:${origin}/`))) leaks.push(url);
    // The credential travels only in the Authorization header, never in a URL.
    if (url.includes(adminToken) || url.includes(tenantKey)) leaks.push(`credential in URL: ${url}`);
  });
  page.on("pageerror", (error) => pageErrors.push(error.message));
}

async function signIn(page, token) {
  await page.goto(`${base}/`);
  assert.equal(new URL(page.url()).pathname, "/dashboard", "/ redirects to /dashboard");
  await page.fill('input[name="token"]', token);
  await page.click('#sign-in-form button[type="submit"]');
  await page.waitForSelector('body[data-ready="true"]', { timeout: 20_000 });
  const appError = await page.locator("#app-error");
  assert.ok(await appError.isHidden(), `page shows an error: ${await appError.textContent()}`);
}

async function pageTotals(page) {
  return page.evaluate(() => {
    const totals = document.getElementById("totals");
    const value = (name) => document.querySelector(`[data-metric="${name}"]`).dataset.value;
    return { cost: value("total-cost"), requests: value("requests"), start: totals.dataset.start, end: totals.dataset.end };
  });
}

async function checkTotals(page, token, usagePath, expected, who) {
  const shown = await pageTotals(page);
  const day = 86400;
  const today = Math.floor(Date.now() / 1000 / day) * day;
  assert.equal(Number(shown.start), today - 29 * day, `${who}: default range starts 29 UTC days before today`);
  assert.equal(Number(shown.end), today + day, `${who}: default range ends after today`);
  const fromApi = await apiTotals(token, usagePath, shown.start, shown.end);
  assert.equal(shown.cost, fromApi.cost, `${who}: total cost equals the API`);
  assert.equal(Number(shown.requests), fromApi.requests, `${who}: requests equal the API`);
  assert.equal(shown.cost, normalize(expected.cost), `${who}: total cost equals the ledger`);
  assert.equal(Number(shown.requests), expected.requests, `${who}: requests equal the ledger`);
  console.log(`ok ${who}: total-cost ${shown.cost}, requests ${shown.requests}`);
  return shown;
}

async function shot(page, name) {
  if (!shots) return;
  await fs.mkdir(shots, { recursive: true });
  await page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
}

async function tab(page, name) {
  await page.click(`[data-tab="${name}"]`);
  await page.waitForSelector(`[data-panel="${name}"]:not([hidden])`);
}

async function checkRecordsAndCsv(page, token, recordsPath, range, model) {
  await tab(page, "records");
  await page.selectOption("#filter-model", model);
  await page.click('#records-form button[type="submit"]');
  await page.waitForSelector('body[data-records="ready"]');
  const models = await page.$$eval('#records-table td[data-col="model"]', (tds) => tds.map((td) => td.textContent));
  const expected = await apiRecordCount(token, recordsPath, { start_time: range.start, end_time: range.end, models: model });
  assert.ok(expected > 0, "the filter matches some records");
  assert.equal(models.length, Math.min(expected, 50), "filtered table shows the API's rows");
  assert.ok(models.every((m) => m === model), `every row is ${model}: ${models}`);
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#csv-download")]);
  const csv = await fs.readFile(await download.path(), "utf8");
  const lines = csv.split(/\r?\n/).filter((l) => l.length > 0);
  assert.equal(lines.length - 1, expected, "CSV download has one line per record plus a header");
  const apiCsv = await api(token, `${recordsPath}?${new URLSearchParams({ start_time: range.start, end_time: range.end, models: model, format: "csv" })}`);
  assert.equal(csv, apiCsv, "the downloaded CSV is the API's CSV byte for byte");
  console.log(`ok records filter ${model}: ${models.length} rows; CSV ${lines.length - 1} rows`);
}

/** Unfiltered records: more than one page; "Next page" appends the rest. */
async function checkPaging(page, token, recordsPath, range) {
  await page.selectOption("#filter-model", "");
  await page.click('#records-form button[type="submit"]');
  await page.waitForSelector('body[data-records="ready"]');
  const expected = await apiRecordCount(token, recordsPath, { start_time: range.start, end_time: range.end });
  assert.ok(expected > 50, `the test needs more than one page of records (has ${expected})`);
  assert.equal(await page.locator("#records-table tbody tr").count(), 50, "first page: 50 rows");
  while (await page.locator("#records-more").isVisible()) {
    const shown = await page.locator("#records-table tbody tr").count();
    await page.click("#records-more");
    await page.waitForFunction((n) => document.querySelectorAll("#records-table tbody tr").length > n, shown);
  }
  const ids = await page.$$eval('#records-table td[data-col="request_id"]', (tds) => tds.map((td) => td.textContent));
  assert.equal(ids.length, expected, "all pages together show every record");
  assert.equal(new Set(ids).size, ids.length, "no record shown twice across pages");
  console.log(`ok paging: ${ids.length} records over ${Math.ceil(ids.length / 50)} pages`);
}

/** A reload keeps the session (sessionStorage); a range with no traffic shows zero, as the API does. */
async function checkReloadAndRange(page, token, usagePath) {
  await page.reload();
  await page.waitForSelector('body[data-ready="true"]', { timeout: 20_000 });
  assert.ok(await page.locator("#sign-in").isHidden(), "a reload keeps the tab signed in");
  await tab(page, "overview");
  await page.fill("#range-start", "2020-01-01");
  await page.fill("#range-end", "2020-01-31");
  await page.click('#range-form button[type="submit"]');
  await page.waitForFunction(() => document.getElementById("totals").dataset.start === String(Date.UTC(2020, 0, 1) / 1000)
    && document.body.dataset.ready === "true");
  const shown = await pageTotals(page);
  assert.equal(Number(shown.end), Date.UTC(2020, 1, 1) / 1000, "the range's last day is included");
  const fromApi = await apiTotals(token, usagePath, shown.start, shown.end);
  assert.deepEqual([shown.cost, Number(shown.requests)], [fromApi.cost, fromApi.requests]);
  assert.deepEqual([shown.cost, shown.requests], ["0", "0"], "no traffic in January 2020");
  console.log("ok reload keeps the session; a chosen range equals the API");
}

/**
 * The limits panel against the gateway's real `GET /v1/key`: the test set a
 * tenant budget and a key rate; the panel must show the budget's figures to
 * the last digit, and its spend must equal the ledger's sum for the tenant.
 */
async function checkLimitsRendering(context) {
  const page = await context.newPage();
  watch(page);
  await page.setViewportSize({ width: 1280, height: 900 });
  await signIn(page, tenantKey);
  await tab(page, "limits");
  await page.waitForFunction(() => document.getElementById("limits").textContent.includes("Budget"));
  const text = await page.textContent("#limits");
  const b = info.limits.tenant_budget;
  assert.equal(b.spent, info.expected.tenant.cost, "spent is the ledger's sum for the tenant");
  assert.ok(text.includes(`${b.spent} spent + ${b.reserved} reserved of ${b.amount} USD per month (hard)`), text);
  assert.ok(text.includes(`Remaining ${b.remaining}`), text);
  assert.ok(text.includes("requests per minute: 600 of 600 left"), text);
  assert.match(text, /key test · \S+/, "the key's limits are titled with its name");
  console.log(`ok limits panel shows the real status: ${b.spent} of ${b.amount} spent`);
  await shot(page, "limits-sample");
  await page.close();
}

/** Every table of every panel fits its card at phone width (no cell cut off,
 * no sideways scrolling needed). */
async function checkPhoneTables(page, panels) {
  await page.setViewportSize({ width: 390, height: 844 });
  for (const name of panels) {
    await tab(page, name);
    const bad = await page.evaluate((panel) => [...document.querySelectorAll(`[data-panel="${panel}"] table`)]
      .filter((t) => t.offsetParent !== null)
      .filter((t) => t.getBoundingClientRect().right > window.innerWidth + 1
        || t.scrollWidth > t.parentElement.clientWidth + 1
        || [...t.querySelectorAll("td")].some((td) => td.getBoundingClientRect().right > window.innerWidth + 1))
      .map((t) => `${t.id} (${t.scrollWidth}px in ${t.parentElement.clientWidth}px)`), name);
    assert.deepEqual(bad, [], `${name}: every table readable at 390 px`);
  }
  console.log(`ok phone width: every table of ${panels.join(", ")} fits 390 px`);
  await page.setViewportSize({ width: 1280, height: 900 });
}

/** The "Provider vs ledger" view shows `GET /admin/reconciliation` line by line. */
async function checkReconciliation(page, range) {
  await tab(page, "reconcile");
  const body = await api(adminToken, `/admin/reconciliation?${new URLSearchParams({ start_time: range.start, end_time: range.end, group_by: "model" })}`);
  const statuses = body.data.map((l) => l.status);
  assert.ok(statuses.includes("pending") && statuses.includes("provider_only"), `the test's lines: ${statuses}`);
  const rows = await page.$$eval("#reconcile-table tbody tr", (trs) => trs.map((tr) => {
    const cell = (col) => tr.querySelector(`td[data-col="${col}"]`)?.textContent;
    return { status: tr.dataset.status, day: cell("day"), model: cell("model"), cost: cell("cost"),
      provider_cost: cell("provider_cost"), cost_diff: cell("cost_diff") };
  }));
  assert.equal(rows.length, body.data.length, "one row per line of the API");
  body.data.forEach((l, i) => {
    assert.deepEqual(rows[i], {
      status: l.status, day: l.day, model: l.model, cost: l.ledger.cost,
      provider_cost: l.provider?.cost ?? "–", cost_diff: l.difference?.cost ?? "–",
    }, `line ${i} equals the API`);
  });
  console.log(`ok provider vs ledger: ${rows.length} lines (${statuses.join(", ")}) as the API`);
  await shot(page, "reconciliation");
}

async function checkAdmin(context) {
  const page = await context.newPage();
  watch(page);
  await page.setViewportSize({ width: 1280, height: 900 });
  await signIn(page, adminToken);
  assert.match(await page.textContent("#role"), /Admin/);
  const range = await checkTotals(page, adminToken, "/admin/usage", info.expected.admin, "admin");
  const tenants = await page.textContent("#tenants-table");
  assert.ok(tenants.includes(info.tenant) && tenants.includes(info.other_tenant), "admin sees both tenants");
  const keys = await page.textContent("#keys-table");
  assert.ok(keys.includes(`globex-key · ${info.other_key_ids[0]}`), `top keys name their keys: ${keys}`);
  await shot(page, "overview");
  await checkRecordsAndCsv(page, adminToken, "/admin/usage/records", range, info.filter_model);
  await shot(page, "records");

  await tab(page, "prices");
  const model = info.filter_model;
  await page.click(`#prices-table td[data-col="model"]:text-is("${model}")`);
  await page.waitForFunction((m) => document.getElementById("history-model").textContent === m, model);
  const before = await page.locator("#history-table tbody tr").count();
  await page.fill('#price-form input[name="model"]', model);
  await page.fill('#price-form input[name="input_cost_per_token"]', "0.0000001234");
  await page.fill('#price-form input[name="output_cost_per_token"]', "0.0000009876");
  await page.fill('#price-form input[name="effective_from"]', "2099-01-01T00:00");
  await page.click('#price-form button[type="submit"]');
  await page.waitForSelector("#price-ok:not([hidden])");
  await page.waitForFunction((n) => document.querySelectorAll("#history-table tbody tr").length === n, before + 1);
  const history = await api(adminToken, `/admin/prices/${encodeURIComponent(model)}`);
  assert.equal(history.history.length, before + 1, "the form added one price version");
  assert.ok(history.history.some((v) => v.input_cost_per_token === "0.0000001234"), "exact decimal stored");
  console.log(`ok prices: history of ${model} grew to ${before + 1} versions`);
  await shot(page, "prices");

  await tab(page, "limits");
  await page.waitForFunction(() => document.getElementById("limits").textContent.length > 0);
  await shot(page, "limits");
  await checkReconciliation(page, range);
  await checkPhoneTables(page, ["overview", "records", "prices", "limits", "reconcile"]);

  await tab(page, "overview");
  await page.setViewportSize({ width: 390, height: 844 });
  // Chart.js resizes its canvases from a ResizeObserver: wait until it has.
  await page.waitForFunction(() => [...document.querySelectorAll("canvas")]
    .every((c) => c.getBoundingClientRect().right <= window.innerWidth));
  const { overflow, culprits } = await page.evaluate(() => ({
    overflow: document.documentElement.scrollWidth - window.innerWidth,
    culprits: [...document.querySelectorAll("body *")]
      .filter((el) => !el.closest(".scroll") && el.getBoundingClientRect().right > window.innerWidth + 1)
      .slice(0, 5).map((el) => `${el.tagName}#${el.id}.${el.className}`),
  }));
  assert.ok(overflow <= 1, `no horizontal scrolling at phone width (overflow ${overflow}px: ${culprits})`);
  await shot(page, "overview-phone");
  await page.close();
}

async function checkTenant(context) {
  const page = await context.newPage();
  watch(page);
  await page.setViewportSize({ width: 1280, height: 900 });
  await signIn(page, tenantKey);
  assert.match(await page.textContent("#role"), /Tenant/);
  const range = await checkTotals(page, tenantKey, "/v1/usage", info.expected.tenant, "tenant");
  assert.ok(await page.locator('[data-tab="reconcile"]').isHidden(), "the provider view is admin-only");
  const ownKeys = await api(tenantKey, "/v1/keys");
  assert.ok(ownKeys.data.length > 0 && ownKeys.data.every((k) => k.tenant === info.tenant), "GET /v1/keys: the tenant's own keys");
  const keysText = await page.textContent("#keys-table");
  for (const k of ownKeys.data) assert.ok(keysText.includes(`${k.name} · ${k.id}`), `top keys show ${k.name} · ${k.id}: ${keysText}`);
  await checkRecordsAndCsv(page, tenantKey, "/v1/usage/records", range, info.filter_model);
  const recordKeys = await page.$$eval('#records-table td[data-col="api_key_id"]', (tds) => tds.map((td) => td.textContent));
  assert.ok(recordKeys.length > 0 && recordKeys.every((t) => / · /.test(t)), `records name their keys: ${recordKeys.slice(0, 3)}`);
  await checkPaging(page, tenantKey, "/v1/usage/records", range);
  await checkReloadAndRange(page, tenantKey, "/v1/usage");
  await tab(page, "limits");
  await page.waitForFunction(() => document.getElementById("limits").textContent.length > 0);
  // Everything the page holds, hidden panels and select options included.
  const text = await page.evaluate(() => document.body.textContent + [...document.querySelectorAll("option")].map((o) => o.value).join(" "));
  for (const secret of [info.other_tenant, ...info.other_models, ...info.other_key_ids]) {
    assert.ok(!text.includes(secret), `the tenant's page never shows '${secret}'`);
  }
  console.log("ok tenant isolation: no trace of the other tenant");
  await checkPhoneTables(page, ["overview", "records", "prices", "limits"]);
  await page.close();
}

async function checkBadToken(context) {
  const page = await context.newPage();
  watch(page);
  await page.goto(`${base}/dashboard`);
  await page.fill('input[name="token"]', "tg-not-a-real-key");
  await page.click('#sign-in-form button[type="submit"]');
  await page.waitForSelector("#sign-in-error:not([hidden])");
  assert.ok(await page.locator("#app").isHidden(), "a bad token does not open the dashboard");
  console.log("ok bad token refused");
  await page.close();
}

const userDataDir = await fs.mkdtemp(path.join(os.tmpdir(), "tollgate-chromium-"));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: browserPath,
  headless: true,
  acceptDownloads: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let failed = false;
try {
  await checkBadToken(context);
  await checkAdmin(context);
  await checkTenant(context);
  await checkLimitsRendering(context);
  assert.deepEqual(pageErrors, [], "no script error on the page");
  assert.deepEqual(leaks, [], "no request left the gateway's origin");
  console.log("ok no request left the origin");
} catch (error) {
  failed = true;
  console.error(`FAILED: ${error.stack ?? error}`);
} finally {
  await context.close();
  await fs.rm(userDataDir, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);

// Exact decimal arithmetic on the API's decimal strings ("0.0334", "-1.5").
// Money never passes through a JavaScript number: a value is held as a
// BigInt of units plus a scale (digits after the point), so a sum shown by
// the page equals the API's figures to the last digit.

const DECIMAL = /^(-)?(\d+)(?:\.(\d+))?$/;

/** Parses a decimal string into {units: BigInt, scale: number}. */
export function parse(text) {
  const match = DECIMAL.exec(String(text).trim());
  if (!match) throw new Error(`not a decimal: ${text}`);
  const [, sign, whole, fraction = ""] = match;
  const units = BigInt(whole + fraction) * (sign ? -1n : 1n);
  return { units, scale: fraction.length };
}

function rescale(value, scale) {
  return value.units * 10n ** BigInt(scale - value.scale);
}

/** Exact a + b of two decimal strings, normalized (see `normalize`). */
export function add(a, b) {
  const x = parse(a);
  const y = parse(b);
  const scale = Math.max(x.scale, y.scale);
  return format({ units: rescale(x, scale) + rescale(y, scale), scale });
}

/** Exact sum of a list of decimal strings; "0" for none. */
export function sum(values) {
  return values.reduce((total, value) => add(total, value), "0");
}

/** Exact a - b. */
export function sub(a, b) {
  const y = parse(b);
  return add(a, format({ units: -y.units, scale: y.scale }));
}

/** Compares two decimal strings: -1, 0 or 1. */
export function compare(a, b) {
  const d = parse(sub(a, b)).units;
  return d < 0n ? -1 : d > 0n ? 1 : 0;
}

function format({ units, scale }) {
  const negative = units < 0n;
  let digits = (negative ? -units : units).toString().padStart(scale + 1, "0");
  let text = scale === 0 ? digits : `${digits.slice(0, -scale)}.${digits.slice(-scale)}`;
  text = normalize(text);
  return negative && text !== "0" ? `-${text}` : text;
}

/** Drops trailing fraction zeros and a bare point: "1.2300" -> "1.23", "0.0" -> "0". */
export function normalize(text) {
  let t = String(text);
  if (t.includes(".")) t = t.replace(/0+$/, "").replace(/\.$/, "");
  if (t === "-0") t = "0";
  return t;
}

/** Rounds half away from zero to `places` fraction digits, for display only. */
export function round(text, digits) {
  const places = Number(digits);
  const value = parse(text);
  if (value.scale <= places) return fixed(text, places);
  const drop = 10n ** BigInt(value.scale - places);
  const abs = value.units < 0n ? -value.units : value.units;
  let kept = abs / drop;
  if ((abs % drop) * 2n >= drop) kept += 1n;
  const units = value.units < 0n ? -kept : kept;
  return fixed(format({ units, scale: places }), places);
}

/** Pads the fraction to exactly `places` digits (display). */
function fixed(text, places) {
  const [whole, fraction = ""] = normalize(text).split(".");
  if (places === 0) return whole;
  return `${whole}.${fraction.padEnd(places, "0")}`;
}

/** Groups the integer part with thin separators: "12345.6" -> "12,345.6". */
export function group(text) {
  const [whole, fraction] = String(text).split(".");
  const sign = whole.startsWith("-") ? "-" : "";
  const digits = whole.replace("-", "").replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  return fraction === undefined ? `${sign}${digits}` : `${sign}${digits}.${fraction}`;
}

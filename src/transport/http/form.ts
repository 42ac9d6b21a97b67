/**
 * application/x-www-form-urlencoded bodies (the OAuth endpoints' only body
 * type, RFC 6749 §3.2), parsed as node:querystring parses them: `&`
 * separates pairs, the first `=` splits a pair, `+` is a space, percent
 * escapes are decoded leniently (a malformed escape stays as written), a
 * repeated name becomes an array, at most 1000 pairs, and the result has no
 * prototype. Faster on token-sized values: a pair with neither `%` nor `+`
 * (a JWT never has either) is split as it is, and only the others go through
 * node:querystring, one pair at a time, so their decoding (including its
 * leniency with malformed escapes) is node's.
 */
import { parse } from 'node:querystring';

/** node:querystring's default maxKeys: pairs beyond it are ignored. */
const MAX_PAIRS = 1000;

export type FormBody = Record<string, string | string[]>;

/** Index of the next `ch` from `from`, or the length of `s` when there is none. */
function next(s: string, ch: string, from: number): number {
  const i = s.indexOf(ch, from);
  return i === -1 ? s.length : i;
}

export function parseForm(body: string): FormBody {
  const out = Object.create(null) as FormBody;
  const n = body.length;
  let pairs = 0;
  // Where the next `%` and `+` are (n: none left), kept across pairs so the body is scanned once.
  let pct = -1;
  let plus = -1;
  for (let start = 0; start < n && pairs < MAX_PAIRS; ) {
    let end = body.indexOf('&', start);
    if (end === -1) end = n;
    if (end > start) {
      let key: string;
      let value: string;
      if (pct < start) pct = next(body, '%', start);
      if (plus < start) plus = next(body, '+', start);
      if (pct >= end && plus >= end) {
        let eq = body.indexOf('=', start);
        if (eq === -1 || eq > end) eq = end;
        key = body.slice(start, eq);
        value = eq < end ? body.slice(eq + 1, end) : '';
      } else {
        // One pair (no `&` in it): node's own decoding.
        const one = parse(body.slice(start, end));
        key = Object.keys(one)[0] ?? '';
        value = String(one[key] ?? '');
      }
      const prev = out[key];
      if (prev === undefined) out[key] = value;
      else if (typeof prev === 'string') out[key] = [prev, value];
      else prev.push(value);
    }
    pairs++;
    start = end + 1;
  }
  return out;
}

/**
 * Errors are classified by code (and structured details), never by their
 * message text: a message is for people and may be reworded at any time.
 * This reads every source file under src/ and fails on any place that
 * inspects an error's `.message` for control flow: a regex test or exec, a
 * string search (includes, startsWith, endsWith, match, indexOf, search), an
 * equality comparison, or a switch on it. Reading a message to pass it on
 * (logging, wrapping, audit reasons) is fine; `typeof x.message` is fine.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';

const SRC = join(__dirname, '..', '..', 'src');

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = join(dir, e.name);
    if (e.isDirectory()) return sourceFiles(p);
    return /\.(c|m)?ts$/.test(e.name) ? [p] : [];
  });
}

// `x.message` or `(x as T).message`, possibly optional-chained.
const MSG = String.raw`(?:[\w$\]\)]\??\.message\b)`;
const PATTERNS: Array<[string, RegExp]> = [
  ['string search on a message', new RegExp(String.raw`${MSG}\s*\)?\s*\??\.\s*(?:includes|startsWith|endsWith|match|matchAll|indexOf|lastIndexOf|search|localeCompare)\s*\(`)],
  ['regex test/exec on a message', new RegExp(String.raw`\.(?:test|exec)\(\s*[^;]*?${MSG}`)],
  ['message compared', new RegExp(String.raw`(?<!typeof\s+\(?[^;]*)${MSG}\s*\)?\s*[!=]==?`)],
  ['message compared', new RegExp(String.raw`[!=]==?\s*[\w$.()?! ]*${MSG}`)],
  ['switch on a message', new RegExp(String.raw`switch\s*\([^)]*${MSG}`)],
];

/** Lines of `text` that inspect an error message for control flow, as `line: text` entries. */
function offences(text: string): string[] {
  return text.split('\n').flatMap((line, i) => {
    const code = line.replace(/\/\/.*$/, '');
    return PATTERNS.filter(([, re]) => re.test(code)).map(([what]) => `${i + 1}: ${what}: ${line.trim()}`);
  });
}

describe('errors are classified by code, not message', () => {
  it('the scan recognises each way of inspecting a message, and lets passing it on through', () => {
    const bad = [
      "if (/not yet valid/.test(err.message)) x();",
      "const r = /issuer/.exec((e as Error).message);",
      "if (e.message.includes('mismatch')) y();",
      "if ((err as Error).message.startsWith('x')) y();",
      "if (err?.message?.match(/x/)) y();",
      "if (err.message === 'store is closed') y();",
      "if ('x' !== e.message) y();",
      "switch (err.message) {}",
    ];
    for (const line of bad) expect(offences(line), line).toHaveLength(1);
    const fine = [
      "log.warn({ err: (e as Error).message }, 'failed');",
      "throw mayflyError('ERR_CONFIG_INVALID', `cannot read: ${(e as Error).message}`);",
      "if (typeof (err as { message?: unknown }).message === 'string') return err.message;",
      "rec.reason = err.message;",
    ];
    for (const line of fine) expect(offences(line), line).toEqual([]);
  });

  it('no file under src/ inspects an error message for control flow', () => {
    const found = sourceFiles(SRC).flatMap((f) => offences(readFileSync(f, 'utf8')).map((o) => `${relative(SRC, f)}:${o}`));
    expect(found).toEqual([]);
  });
});

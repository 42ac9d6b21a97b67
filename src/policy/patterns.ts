/**
 * Match patterns of the built-in rules: an exact string, `glob:` or `re:`.
 * Globs split on `/` (SPIFFE ID paths, git refs, URLs): `*` and `?` stay
 * inside one segment, `**` crosses segments; these are the semantics of
 * OPA's `glob.match(p, ["/"], s)` so the example Rego policy agrees. `re:`
 * patterns are anchored (the whole value must match) and compiled once.
 */

/** A compiled pattern; `text` is what the operator wrote, shown in deny reasons. */
export interface Pattern {
  readonly text: string;
  test(value: string): boolean;
}

/** Thrown for an invalid pattern; the message names the rule and the pattern. */
export class PatternError extends Error {}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
}

/** Translates a glob body to an anchored RegExp source (`**` any, `*` and `?` within a segment). */
export function globToRegExpSource(glob: string): string {
  let out = '';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!;
    if (c === '*' && glob[i + 1] === '*') {
      out += '.*';
      i++;
    } else if (c === '*') out += '[^/]*';
    else if (c === '?') out += '[^/]';
    else out += escapeRe(c);
  }
  return `^${out}$`;
}

/** Compiles one pattern; `where` names the rule and field for the error message. */
export function compilePattern(text: string, where: string): Pattern {
  if (text.startsWith('re:')) {
    const body = text.slice(3);
    let re: RegExp;
    try {
      re = new RegExp(`^(?:${body})$`, 'u');
    } catch (err) {
      throw new PatternError(`${where}: invalid regular expression ${JSON.stringify(text)}: ${(err as Error).message}`);
    }
    return { text, test: (v) => re.test(v) };
  }
  if (text.startsWith('glob:')) {
    const body = text.slice(5);
    if (body.length === 0) throw new PatternError(`${where}: empty glob pattern`);
    const re = new RegExp(globToRegExpSource(body), 'u');
    return { text, test: (v) => re.test(v) };
  }
  return { text, test: (v) => v === text };
}

/** Compiles a pattern or list of patterns (any may match). */
export function compilePatterns(texts: string | readonly string[], where: string): Pattern[] {
  return (typeof texts === 'string' ? [texts] : texts).map((t) => compilePattern(t, where));
}

/** Human form of a pattern list for reasons: `"a"` or `["a", "glob:b/*"]`. */
export function showPatterns(ps: readonly Pattern[]): string {
  return ps.length === 1 ? JSON.stringify(ps[0]!.text) : `[${ps.map((p) => JSON.stringify(p.text)).join(', ')}]`;
}

/**
 * The import rules of src/, checked on every `npm test`. Each file's import
 * specifiers (static imports, re-exports, dynamic imports) are read with the
 * TypeScript pre-processor, resolved, and named by their top-level folder
 * under src/ (core, service, transport, ...). The README's "Architecture"
 * section states the same rules.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, normalize, relative, sep } from 'node:path';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

const SRC = join(__dirname, '..', '..', 'src');

interface Edge {
  file: string;
  from: string;
  to: string;
  specifier: string;
}

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = join(dir, e.name);
    if (e.isDirectory()) return sourceFiles(p);
    return /\.(c|m)?ts$/.test(e.name) && !e.name.endsWith('.d.ts') ? [p] : [];
  });
}

/** Top-level folder of a path under src/ (`index` for src/index.ts). */
function area(abs: string): string {
  const first = relative(SRC, abs).split(sep)[0]!;
  return first.replace(/\.(c|m)?[jt]s$/, '');
}

/** Every import of one file that resolves inside src/. */
function importsOf(file: string, text: string): Edge[] {
  const { importedFiles } = ts.preProcessFile(text, true, true);
  return importedFiles
    .map((f) => f.fileName)
    .filter((s) => s.startsWith('.'))
    .map((specifier) => ({ specifier, target: normalize(join(dirname(file), specifier)) }))
    .filter(({ target }) => !relative(SRC, target).startsWith('..'))
    .map(({ specifier, target }) => ({ file: relative(SRC, file), from: area(file), to: area(target), specifier }));
}

const edges: Edge[] = sourceFiles(SRC).flatMap((f) => importsOf(f, readFileSync(f, 'utf8')));

/** The imports that break a rule, as `file -> specifier` lines (empty when the rule holds). */
function violations(fromAreas: readonly string[], forbidden: (to: string) => boolean): string[] {
  return edges.filter((e) => fromAreas.includes(e.from) && e.to !== e.from && forbidden(e.to)).map((e) => `${e.file} -> ${e.specifier}`);
}

describe('import rules of src/', () => {
  it('reads the imports it checks (a sanity check of the parser)', () => {
    expect(edges.length).toBeGreaterThan(100);
    expect(edges.some((e) => e.from === 'transport' && e.to === 'service')).toBe(true);
    expect(importsOf(join(SRC, 'x', 'a.ts'), "import a from '../core/b.js';\nexport * from '../service/c.js';\nconst d = await import('../cli/e.js');\nimport 'node:fs';")
      .map((e) => e.to)).toEqual(['core', 'service', 'cli']);
  });

  it('core imports nothing of src', () => {
    expect(violations(['core'], () => true)).toEqual([]);
  });

  it('service does not import transport', () => {
    expect(violations(['service'], (to) => to === 'transport')).toEqual([]);
  });

  it('the SDKs (verifier, client) import none of identity, policy, store, service, transport', () => {
    const broker = ['identity', 'policy', 'store', 'service', 'transport', 'audit', 'config', 'observability', 'pki', 'cli'];
    expect(violations(['verifier', 'client'], (to) => broker.includes(to))).toEqual([]);
  });

  it('nothing imports cli', () => {
    expect(violations(edges.map((e) => e.from).filter((a) => a !== 'cli'), (to) => to === 'cli')).toEqual([]);
  });

  it('the layers below the use-cases import neither service nor transport', () => {
    const below = ['core', 'gen', 'net', 'tokens', 'config', 'store', 'audit', 'pki', 'identity', 'policy', 'observability'];
    expect(violations(below, (to) => to === 'service' || to === 'transport' || to === 'cli')).toEqual([]);
  });
});

#!/usr/bin/env node
// Drift check: regenerate the protobuf code into a temp dir with the same
// template and fail if it differs from what is committed in src/gen.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { parse } from 'yaml';

const committed = 'src/gen';
const tmp = mkdtempSync(join(tmpdir(), 'mayfly-gen-'));
try {
  const template = parse(readFileSync('buf.gen.yaml', 'utf8'));
  for (const p of template.plugins) p.out = join(tmp, 'gen');
  const templatePath = join(tmp, 'buf.gen.yaml');
  writeFileSync(templatePath, JSON.stringify(template));
  const buf = join('node_modules', '.bin', 'buf');
  execFileSync(buf, ['lint'], { stdio: 'inherit' });
  execFileSync(buf, ['generate', '--template', templatePath], { stdio: 'inherit' });
  const list = (dir) =>
    readdirSync(dir, { recursive: true })
      .map(String)
      .filter((f) => statSync(join(dir, f)).isFile())
      .sort();
  const want = list(join(tmp, 'gen'));
  const have = list(committed);
  const problems = [];
  for (const f of new Set([...want, ...have])) {
    if (!want.includes(f)) problems.push(`${join(committed, f)}: not produced by buf generate (stale file)`);
    else if (!have.includes(f)) problems.push(`${join(committed, f)}: missing (run npm run generate)`);
    else if (readFileSync(join(tmp, 'gen', f), 'utf8') !== readFileSync(join(committed, f), 'utf8')) {
      problems.push(`${join(committed, f)}: differs from generated output (run npm run generate and commit)`);
    }
  }
  if (problems.length > 0) {
    console.error('generated code drift:\n  ' + problems.join('\n  '));
    process.exit(1);
  }
  console.log(`generated code up to date (${want.length} file(s) under ${relative('.', committed)})`);
} finally {
  rmSync(tmp, { recursive: true, force: true });
}

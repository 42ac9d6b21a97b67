// Top allocation sites of a sampling heap profile written by BENCH_HEAP=<dir> npm run bench:
// the bytes that outlived a young-generation collection, by allocating function and by the
// nearest frame in a library (node_modules) or the broker (dist).
// Usage: node bench/heap-top.mjs <file.heapprofile> [count]
import { readFileSync } from 'node:fs';

const [file, n = '25'] = process.argv.slice(2);
if (!file) {
  console.error('usage: node bench/heap-top.mjs <file.heapprofile> [count]');
  process.exit(2);
}
const profile = JSON.parse(readFileSync(file, 'utf8'));
const bySite = new Map();
const byOwner = new Map();
let total = 0;
const name = (f) => `${f.functionName || '(anonymous)'} ${f.url.replace(/^.*\/(node_modules|dist)\//, '$1/')}:${f.lineNumber + 1}`;
const walk = (node, stack) => {
  const here = name(node.callFrame);
  const path = [...stack, here];
  if (node.selfSize > 0) {
    total += node.selfSize;
    bySite.set(here, (bySite.get(here) ?? 0) + node.selfSize);
    const owner = [...path].reverse().find((k) => /(node_modules|dist)\//.test(k)) ?? here;
    byOwner.set(owner, (byOwner.get(owner) ?? 0) + node.selfSize);
  }
  for (const c of node.children) walk(c, path);
};
walk(profile.head, []);
const table = (title, m) => {
  console.log(`\n## ${title} (% of ${(total / 1048576).toFixed(1)} MB sampled)\n\n| % | function |\n|---|---|`);
  for (const [k, v] of [...m].sort((a, b) => b[1] - a[1]).slice(0, Number(n))) console.log(`| ${((100 * v) / total).toFixed(1)} | ${k} |`);
};
table('by allocating function', bySite);
table('by nearest library or broker frame', byOwner);

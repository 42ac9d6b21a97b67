// Top self-time functions of a V8 .cpuprofile (from BENCH_PROFILE=<dir> npm run bench).
// Usage: node bench/profile-top.mjs <file.cpuprofile> [count]
import { readFileSync } from 'node:fs';

const [file, n = '30'] = process.argv.slice(2);
if (!file) {
  console.error('usage: node bench/profile-top.mjs <file.cpuprofile> [count]');
  process.exit(2);
}
const prof = JSON.parse(readFileSync(file, 'utf8'));
const byId = new Map(prof.nodes.map((x) => [x.id, x]));
const parent = new Map();
for (const x of prof.nodes) for (const c of x.children ?? []) parent.set(c, x.id);
const dt = prof.timeDeltas;
const self = new Map();
const total = new Map();
let all = 0;
prof.samples.forEach((id, i) => {
  const d = dt[i] ?? 0;
  all += d;
  const key = (x) => `${x.callFrame.functionName || '(anonymous)'} ${x.callFrame.url.replace(/^.*\/(node_modules|dist|node:)/, '$1')}:${x.callFrame.lineNumber + 1}`;
  const node = byId.get(id);
  self.set(key(node), (self.get(key(node)) ?? 0) + d);
  const seen = new Set();
  for (let cur = id; cur !== undefined; cur = parent.get(cur)) {
    const k = key(byId.get(cur));
    if (seen.has(k)) continue;
    seen.add(k);
    total.set(k, (total.get(k) ?? 0) + d);
  }
});
const idle = [...self].filter(([k]) => k.startsWith('(idle)')).reduce((a, [, v]) => a + v, 0);
const busy = all - idle;
const show = (title, m) => {
  console.log(`\n## ${title} (% of ${(busy / 1e6).toFixed(1)} s busy; ${(all / 1e6).toFixed(1)} s sampled, ${(idle / 1e6).toFixed(1)} s idle)\n`);
  console.log('| % busy | ms | function |\n|---|---|---|');
  for (const [k, v] of [...m].filter(([k]) => !k.startsWith('(idle)') && !k.startsWith('(root)')).sort((a, b) => b[1] - a[1]).slice(0, Number(n))) console.log(`| ${((100 * v) / busy).toFixed(1)} | ${(v / 1000).toFixed(0)} | ${k} |`);
};
show('self time', self);
show('inclusive time', total);

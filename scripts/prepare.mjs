// `npm ci` / `npm install` in a checkout run `prepare`: build dist/ so bin/mayfly.js works.
// `npm pack` / `npm publish` run `prepack` (a clean build) and then `prepare`: nothing left to do.
import { spawnSync } from 'node:child_process';

if (process.env.npm_command === 'pack' || process.env.npm_command === 'publish') process.exit(0);
const r = spawnSync('npm', ['run', 'build'], { stdio: 'inherit', shell: process.platform === 'win32' });
process.exit(r.status ?? 1);

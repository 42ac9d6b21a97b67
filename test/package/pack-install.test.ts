/**
 * The package as a user gets it: `npm pack` a copy of this checkout (its own
 * prepack build, so the repository's dist/ is never touched while other
 * tests use it), install the tarball into a fresh app, import the three
 * entry points, type-check a strict TypeScript file against them and run
 * the installed `mayfly` bin end to end (dev init, serve, task begin).
 *
 * Install is `--prefer-offline` (the npm cache `npm ci` filled) and
 * `--ignore-scripts`: better-sqlite3's install script compiles SQLite from
 * source for about a minute. Instead the app gets the binding this checkout
 * built for the very same better-sqlite3 version (checked below; a different
 * version is rebuilt from source instead), and the bin is then proven by
 * running a broker that opens its SQLite store.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const REPO = resolve('.');
const NPM = process.platform === 'win32' ? 'npm.cmd' : 'npm';

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function run(cmd: string, args: string[], cwd: string, timeout = 240_000): Promise<Run> {
  return new Promise((done) => {
    execFile(cmd, args, { cwd, timeout, maxBuffer: 32 * 1024 * 1024, env: { ...process.env, npm_config_update_notifier: 'false', npm_config_fund: 'false', npm_config_audit: 'false' } }, (err, stdout, stderr) => {
      done({ code: err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : 1) : 0, stdout: stdout.trim(), stderr: stderr.trim() });
    });
  });
}

function version(pkgDir: string): string {
  return (JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8')) as { version: string }).version;
}

describe('npm pack → npm install → use', { timeout: 180_000 }, () => {
  let work: string;
  let app: string;
  let files: string[] = [];
  let serve: ChildProcess | undefined;
  const pkgVersion = version(REPO);

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'mayfly-pack-'));
    const src = join(work, 'src-copy');
    // A copy of the checkout as a fresh clone has it: no dist/, no dev setup; node_modules shared.
    cpSync(REPO, src, {
      recursive: true,
      filter: (p) => {
        const rel = p.slice(REPO.length + 1).split(/[\\/]/)[0];
        return rel !== 'node_modules' && rel !== 'dist' && rel !== '.git' && rel !== '.mayfly' && rel !== 'coverage';
      },
    });
    symlinkSync(join(REPO, 'node_modules'), join(src, 'node_modules'), 'dir');
    const pack = await run(NPM, ['pack', '--json', '--pack-destination', work], src);
    expect(pack.code, pack.stderr).toBe(0);
    const json = pack.stdout.slice(pack.stdout.indexOf('['));
    const info = (JSON.parse(json) as Array<{ filename: string; files: Array<{ path: string }> }>)[0]!;
    files = info.files.map((f) => f.path);

    app = join(work, 'app');
    mkdirSync(app);
    writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'mayfly-consumer', version: '1.0.0', private: true, type: 'module' }));
    const typesNode = version(join(REPO, 'node_modules', '@types', 'node'));
    const install = await run(NPM, ['install', '--prefer-offline', '--ignore-scripts', '--no-audit', '--no-fund', join(work, info.filename), `@types/node@${typesNode}`], app);
    expect(install.code, install.stderr).toBe(0);

    // The native SQLite binding (see the header): same version → this checkout's build, else compile it.
    const theirs = join(app, 'node_modules', 'better-sqlite3');
    const ours = join(REPO, 'node_modules', 'better-sqlite3');
    if (version(theirs) === version(ours) && existsSync(join(ours, 'build', 'Release', 'better_sqlite3.node'))) {
      mkdirSync(join(theirs, 'build', 'Release'), { recursive: true });
      copyFileSync(join(ours, 'build', 'Release', 'better_sqlite3.node'), join(theirs, 'build', 'Release', 'better_sqlite3.node'));
    } else {
      const rebuild = await run(NPM, ['rebuild', 'better-sqlite3'], app, 600_000);
      expect(rebuild.code, rebuild.stderr).toBe(0);
    }
  }, 600_000);

  afterAll(async () => {
    if (serve && serve.exitCode === null) {
      const exited = new Promise((r) => serve!.once('exit', r));
      serve.kill('SIGTERM');
      await exited;
    }
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it('the tarball holds dist/ with type declarations, the bin and its runtime files, and no sources, tests or benchmarks', () => {
    for (const f of ['package.json', 'README.md', 'bin/mayfly.js', 'dist/index.js', 'dist/index.d.ts', 'dist/client/index.js', 'dist/client/index.d.ts', 'dist/verifier/index.js', 'dist/verifier/index.d.ts', 'dist/cli/main.js', 'policies/default-rules.yaml', 'proto/mayfly/v1/broker.proto']) {
      expect(files, f).toContain(f);
    }
    const stray = files.filter((f) => /^(src|test|bench|examples|scripts|\.mayfly|node_modules)\//.test(f) || f.endsWith('.map') || f.endsWith('.key') || f.startsWith('tsconfig'));
    expect(stray).toEqual([]);
  });

  it('imports mayfly, mayfly/client and mayfly/verifier from the installed package', async () => {
    writeFileSync(
      join(app, 'check.mjs'),
      `import * as root from 'mayfly';
import * as client from 'mayfly/client';
import * as verifier from 'mayfly/verifier';
console.log(JSON.stringify({
  root: [typeof root.BrokerClient, typeof root.MayflyVerifier, typeof root.withTask, typeof root.ERROR_CODES],
  client: [typeof client.BrokerClient, typeof client.withTask, typeof client.beginTask, typeof client.MayflyError],
  verifier: [typeof verifier.MayflyVerifier, typeof verifier.certificateThumbprint, typeof verifier.MayflyError],
}));
`,
    );
    const r = await run(process.execPath, ['check.mjs'], app, 30_000);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({
      root: ['function', 'function', 'function', 'object'],
      client: ['function', 'function', 'function', 'function'],
      verifier: ['function', 'function', 'function'],
    });
  });

  it('a strict TypeScript app type-checks against the shipped declarations', async () => {
    writeFileSync(
      join(app, 'tsconfig.json'),
      JSON.stringify({ compilerOptions: { target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, noUncheckedIndexedAccess: true, exactOptionalPropertyTypes: true, noEmit: true, types: ['node'] }, files: ['app.ts'] }),
    );
    writeFileSync(
      join(app, 'app.ts'),
      `import { readFileSync } from 'node:fs';
import { BrokerClient, withTask, isMayflyError, type ErrorCode } from 'mayfly/client';
import { MayflyVerifier, type MayflyClaims } from 'mayfly/verifier';
import { ERROR_CODES } from 'mayfly';

const ca = readFileSync('ca.pem');
const client = new BrokerClient({ address: '127.0.0.1:8443', ca, cert: readFileSync('w.pem'), key: readFileSync('w.key') });
export async function job(): Promise<string> {
  return withTask({ client, purpose: 'nightly export', ttlSeconds: 600 }, async (task) => {
    const token: string = await task.token('demo-api', { scopes: ['read'] });
    return token;
  });
}
const verifier = new MayflyVerifier({ issuer: 'https://localhost:8444', audience: 'demo-api', jwks: { url: 'https://localhost:8444/.well-known/jwks.json', ca } });
export async function check(token: string): Promise<MayflyClaims> {
  try {
    return await verifier.verify(token, { requiredScopes: ['read'] });
  } catch (e) {
    if (isMayflyError(e)) {
      const code: ErrorCode = e.code;
      const kind: string = ERROR_CODES[code];
      throw new Error(code + ' ' + kind);
    }
    throw e;
  }
}
// @ts-expect-error: the declarations are real, so a wrong option type is an error
new BrokerClient({ address: 8443 });
`,
    );
    const r = await run(process.execPath, [join(REPO, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.json'], app, 120_000);
    expect(r.stdout + r.stderr).toBe('');
    expect(r.code).toBe(0);
  });

  it('npx mayfly --version prints the package version', async () => {
    const r = await run(NPM, ['exec', '--no', '--', 'mayfly', '--version'], app, 60_000);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe(pkgVersion);
  });

  it('the installed bin sets up a dev broker, serves it and begins a task', async () => {
    const bin = join(app, 'node_modules', '.bin', 'mayfly');
    const init = await run(bin, ['dev', 'init', '--dir', '.mayfly'], app, 60_000);
    expect(init.code, init.stderr).toBe(0);
    serve = spawn(bin, ['serve', '--config', '.mayfly/mayfly.yaml', '--grpc-listen', '127.0.0.1:0', '--http-listen', '127.0.0.1:0'], { cwd: app, stdio: ['ignore', 'ignore', 'pipe'] });
    let banner = '';
    const grpc = await new Promise<string>((done, fail) => {
      const t = setTimeout(() => fail(new Error(`broker did not start: ${banner}`)), 30_000);
      serve!.stderr!.on('data', (c: Buffer) => {
        banner += c.toString();
        const m = /gRPC \(mTLS\) on (\S+);/.exec(banner);
        if (m) {
          clearTimeout(t);
          done(m[1]!);
        }
      });
      serve!.on('exit', (code) => fail(new Error(`broker exited ${code}: ${banner}`)));
    });
    const begin = await run(bin, ['task', 'begin', '--broker', grpc, '--purpose', 'packaged', '--ttl', '1m'], app, 30_000);
    expect(begin.code, begin.stderr).toBe(0);
    expect(begin.stdout).toMatch(/^[A-Za-z0-9_-]{24}$/);
  });
});

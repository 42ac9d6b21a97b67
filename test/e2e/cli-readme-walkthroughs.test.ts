/**
 * The README's walkthroughs, run as written: the shell blocks are read from
 * README.md, so the test breaks when the README drifts. Each command line
 * runs in one bash session (variables carry over) with `npx mayfly` bound to
 * this checkout's bin. A `# mayfly: ERR_…` line after a command is that
 * command's expected error line; a trailing `# "active": true`-style comment
 * is text its output must contain. Only the ports differ from a user's run
 * (ephemeral, through MAYFLY_BROKER / MAYFLY_URL and the generated config).
 *
 * The Kubernetes section is run from its YAML and TypeScript blocks: the
 * broker config and rule as written, with the cluster's issuer URL replaced
 * by a local `mayfly dev oidc-issuer`, and the pod's code compiled and run
 * against the broker with a service-account-shaped token.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import ts from 'typescript';
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';
import { afterEach, describe, expect, it } from 'vitest';
import { devInit } from '../../src/cli/dev-init.js';

const REPO = resolve('.');
const BIN = join(REPO, 'bin', 'mayfly.js');
const README = readFileSync(join(REPO, 'README.md'), 'utf8');

function freePort(): Promise<number> {
  return new Promise((done, fail) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => done(port));
    });
    s.on('error', fail);
  });
}

/** Fenced blocks of `lang` in README.md, in order. */
function blocks(lang: string): string[] {
  const out: string[] = [];
  const re = new RegExp('```' + lang + '\\n([\\s\\S]*?)```', 'g');
  for (let m = re.exec(README); m; m = re.exec(README)) out.push(m[1]!);
  return out;
}

/** The one block of `lang` containing `marker`. */
function blockWith(lang: string, marker: string): string {
  const found = blocks(lang).filter((b) => b.includes(marker));
  expect(found, `README ${lang} block with ${marker}`).toHaveLength(1);
  return found[0]!;
}

interface Step {
  command: string;
  /** Text the output must contain (from a trailing `# …` comment), if any. */
  expectOutput?: string;
  /** The expected error line (a following `# mayfly: ERR_…` line). */
  expectError?: string;
}

/** Splits a shell block into commands with their expectations. */
function steps(block: string): Step[] {
  const out: Step[] = [];
  for (const raw of block.split('\n')) {
    const line = raw.trim();
    if (line === '') continue;
    if (line.startsWith('# mayfly: ERR_')) {
      out[out.length - 1]!.expectError = line.slice(2);
      continue;
    }
    if (line.startsWith('#')) continue;
    const hash = line.search(/\s#\s/);
    const command = hash === -1 ? line : line.slice(0, hash).trim();
    const comment = hash === -1 ? '' : line.slice(hash).replace(/^\s#\s/, '');
    // Only quoted JSON fragments ("active": true) are checked literally; prose comments are explanations.
    const step: Step = { command };
    if (/^"\w+": /.test(comment)) step.expectOutput = comment;
    out.push(step);
  }
  return out;
}

interface StepResult extends Step {
  rc: number;
  stdout: string;
  stderr: string;
}

/** Runs the steps in one bash session in `cwd`; returns each step's exit code and output. */
async function runSteps(list: Step[], cwd: string, env: Record<string, string>): Promise<StepResult[]> {
  const dir = mkdtempSync(join(tmpdir(), 'mayfly-steps-'));
  const script = [
    'set -u',
    `npx() { if [ "$1" = mayfly ]; then shift; "${process.execPath}" "${BIN}" "$@"; else command npx "$@"; fi; }`,
    ...list.map((s, i) => `{ ${s.command} ; } > "${dir}/out.${i}" 2> "${dir}/err.${i}"; echo $? > "${dir}/rc.${i}"`),
  ].join('\n');
  await new Promise<void>((done, fail) => {
    execFile('bash', ['-c', script], { cwd, env: { ...process.env, ...env }, timeout: 120_000 }, (err) => (err ? fail(err) : done()));
  });
  const results = list.map((s, i) => ({
    ...s,
    rc: Number(readFileSync(join(dir, `rc.${i}`), 'utf8').trim()),
    stdout: readFileSync(join(dir, `out.${i}`), 'utf8'),
    stderr: readFileSync(join(dir, `err.${i}`), 'utf8'),
  }));
  rmSync(dir, { recursive: true, force: true });
  return results;
}

/** Puts the README's ports back into output (the test's listeners use ephemeral ports). */
function readmePorts(text: string, ports: Record<number, number>): string {
  return text.replace(/\b(localhost|127\.0\.0\.1):(\d+)\b/g, (all, host: string, p: string) => (ports[Number(p)] ? `${host}:${ports[Number(p)]}` : all));
}

function check(results: StepResult[], ports: Record<number, number>): void {
  for (const raw of results) {
    const r = { ...raw, stdout: readmePorts(raw.stdout, ports), stderr: readmePorts(raw.stderr, ports) };
    const where = `\`${r.command}\`\nstdout: ${r.stdout}\nstderr: ${r.stderr}`;
    if (r.expectError) {
      expect(r.rc, where).not.toBe(0);
      expect(r.stderr.trim(), where).toBe(r.expectError);
    } else {
      expect(r.rc, where).toBe(0);
      if (r.expectOutput) expect(r.stdout.replace(/\s+/g, ' '), where).toContain(r.expectOutput);
    }
  }
}

/** Starts a long-running CLI command; resolves once `ready` appears on its stderr. */
function startService(args: string[], cwd: string, ready: RegExp, env: Record<string, string> = {}): Promise<ChildProcess> {
  const child = spawn(process.execPath, [BIN, ...args], { cwd, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  services.push(child);
  let seen = '';
  return new Promise((done, fail) => {
    const t = setTimeout(() => fail(new Error(`${args.join(' ')} did not start: ${seen}`)), 30_000);
    child.stderr!.on('data', (c: Buffer) => {
      seen += c.toString();
      if (ready.test(seen)) {
        clearTimeout(t);
        done(child);
      }
    });
    child.on('exit', (code) => fail(new Error(`${args.join(' ')} exited ${code}: ${seen}`)));
  });
}

const services: ChildProcess[] = [];
const dirs: string[] = [];

afterEach(async () => {
  for (const s of services.splice(0)) {
    if (s.exitCode === null && s.signalCode === null) {
      const exited = new Promise((r) => s.once('exit', r));
      s.kill('SIGTERM');
      await exited;
    }
  }
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** A user's working directory after `npm start`: a dev setup in ./.mayfly and a running broker. */
async function devSetup(): Promise<{ cwd: string; env: Record<string, string>; oidcPort: number; ports: Record<number, number> }> {
  const cwd = mkdtempSync(join(tmpdir(), 'mayfly-readme-'));
  dirs.push(cwd);
  const [grpcPort, httpPort, oidcPort] = [await freePort(), await freePort(), await freePort()];
  devInit(join(cwd, '.mayfly'), { grpcPort, httpPort, oidcPort });
  const cfg = join(cwd, '.mayfly', 'mayfly.yaml');
  writeFileSync(cfg, readFileSync(cfg, 'utf8') + 'log: { level: silent }\n');
  // What `npm start` runs, in the user's directory.
  await startService(['dev', 'start'], cwd, /gRPC \(mTLS\) on/);
  return { cwd, oidcPort, ports: { [grpcPort]: 8443, [httpPort]: 8444, [oidcPort]: 8445 }, env: { MAYFLY_BROKER: `127.0.0.1:${grpcPort}`, MAYFLY_URL: `https://127.0.0.1:${httpPort}` } };
}

describe('README walkthroughs, as written', { timeout: 180_000 }, () => {
  it('Quickstart: begin, issue, inspect, introspect, complete, refused', async () => {
    const { cwd, env, ports } = await devSetup();
    const list = steps(blockWith('sh', 'TASK=$(npx mayfly task begin'));
    expect(list.length).toBeGreaterThanOrEqual(7);
    check(await runSteps(list, cwd, env), ports);
  });

  it('CI jobs, on one machine: dev OIDC issuer, exchange, complete with the token, a denial that names the claim', async () => {
    const { cwd, env, ports } = await devSetup();
    const serveBlock = steps(blockWith('sh', 'npx mayfly dev oidc-issuer'));
    expect(serveBlock.map((s) => s.command)).toEqual(['npx mayfly dev oidc-issuer']);
    await startService(['dev', 'oidc-issuer'], cwd, /dev OIDC issuer https:\/\/localhost:\d+/);
    const list = steps(blockWith('sh', 'npx mayfly dev oidc-token >'));
    const results = await runSteps(list, cwd, env);
    check(results, ports);
    const inspected = JSON.parse(results.find((r) => r.command.includes('token inspect'))!.stdout) as { claims: Record<string, unknown> };
    expect(inspected.claims['scope']).toBe('push');
    expect(inspected.claims['sub']).toMatch(/^https:\/\/localhost:\d+#repo:acme\/api:environment:prod$/);
  });

  it('Kubernetes: the broker config and rule as written, the pod code against them', async () => {
    const { cwd, env } = await devSetup();
    // The cluster issuer, played by a second dev issuer on its own port (the same dev CA and key).
    const clusterIssuer = `https://localhost:${await freePort()}`;
    await startService(['dev', 'oidc-issuer', '--issuer', clusterIssuer], cwd, /dev OIDC issuer/);

    const K8S_ISSUER = 'https://kubernetes.default.svc.cluster.local';
    const configBlock = parseYaml(blockWith('yaml', 'preset: kubernetes')) as { oidc: { issuers: Array<Record<string, unknown>> } };
    const rulesBlock = parseYaml(blockWith('yaml', 'name: payments-db')) as { rules: Array<Record<string, unknown>> };
    const mayflyDir = join(cwd, '.mayfly');
    const retarget = <T>(doc: T): T => JSON.parse(JSON.stringify(doc).replaceAll(K8S_ISSUER, clusterIssuer)) as T;
    // ca_file: cluster-ca.pem is the dev CA here.
    writeFileSync(join(mayflyDir, 'cluster-ca.pem'), readFileSync(join(mayflyDir, 'ca.pem')));
    const config = parseYaml(readFileSync(join(mayflyDir, 'mayfly.yaml'), 'utf8')) as { oidc: { issuers: unknown[] } };
    config.oidc.issuers.push(...retarget(configBlock).oidc.issuers);
    writeFileSync(join(mayflyDir, 'mayfly.yaml'), stringifyYaml(config));
    const rules = parseYaml(readFileSync(join(mayflyDir, 'rules.yaml'), 'utf8')) as { rules: unknown[] };
    rules.rules.push(...retarget(rulesBlock).rules);
    writeFileSync(join(mayflyDir, 'rules.yaml'), stringifyYaml(rules));
    // Restart the broker on the edited config (as a user would).
    for (const s of services.splice(0, 1)) {
      const exited = new Promise((r) => s.once('exit', r));
      s.kill('SIGTERM');
      await exited;
    }
    await startService(['dev', 'start'], cwd, /gRPC \(mTLS\) on/);

    // The projected token the kubelet would mount, and the CA the pod trusts.
    const podFiles = join(cwd, 'pod');
    mkdirSync(podFiles);
    const mint = await runSteps([{ command: `npx mayfly dev oidc-token --issuer ${clusterIssuer} --kind kubernetes --namespace payments --service-account api` }], cwd, env);
    expect(mint[0]!.rc, mint[0]!.stderr).toBe(0);
    writeFileSync(join(podFiles, 'token'), mint[0]!.stdout.trim());
    writeFileSync(join(podFiles, 'ca.pem'), readFileSync(join(mayflyDir, 'ca.pem')));

    // The pod's code as written, pointed at this broker and these files, compiled and run with `mayfly` resolving to this package.
    const source = blockWith('ts', "task.token('postgres'")
      .replace("'mayfly.mayfly-system.svc:8443'", `'${env['MAYFLY_BROKER']}'`)
      .replace("'/etc/mayfly/ca.pem'", `'${join(podFiles, 'ca.pem')}'`)
      .replace("'/var/run/secrets/mayfly/token'", `'${join(podFiles, 'token')}'`);
    expect(source).not.toMatch(/mayfly-system\.svc|\/etc\/mayfly|\/var\/run\/secrets/);
    const js = ts.transpileModule(source, { compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 } }).outputText;
    const app = join(cwd, 'app');
    mkdirSync(join(app, 'node_modules'), { recursive: true });
    symlinkSync(REPO, join(app, 'node_modules', 'mayfly'), 'dir');
    writeFileSync(join(app, 'package.json'), '{"type":"module"}');
    writeFileSync(join(app, 'pod.js'), js);
    const pod = await new Promise<{ code: number; stderr: string }>((done) => {
      execFile(process.execPath, ['pod.js'], { cwd: app, timeout: 60_000 }, (err, _o, stderr) => done({ code: err ? 1 : 0, stderr }));
    });
    expect(pod.code, pod.stderr).toBe(0);

    // What the README says happened: the identity, a postgres token with db.read, and the task completed.
    const audit = readFileSync(join(mayflyDir, 'audit.log'), 'utf8')
      .split('\n')
      .filter((l) => l.trim() !== '')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    const identity = `${clusterIssuer}#system:serviceaccount:payments:api`;
    const mine = audit.filter((r) => (r['identity'] as { id?: string } | undefined)?.id === identity);
    const issued = mine.find((r) => r['event'] === 'token.issue' && r['outcome'] === 'success');
    expect(issued, JSON.stringify(mine)).toBeDefined();
    expect(issued!['audience']).toBe('postgres');
    expect(mine.some((r) => r['event'] === 'task.complete' && r['outcome'] === 'success')).toBe(true);
  });
});

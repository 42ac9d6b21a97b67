/** The `mayfly` command line. Errors print one line and exit non-zero. */
import { existsSync, readFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { join, resolve } from 'node:path';
import { Command, Option } from 'commander';
import { loadConfig, resolvePath } from '../config/load.js';
import { DECISION_CONTRACT_VERSION, type DecisionInput } from '../core/decision.js';
import { MayflyError } from '../core/errors.js';
import { auditVerify } from './audit-verify.js';
import { BrokerClient } from '../client/broker-client.js';
import { BuiltinEngine } from '../policy/builtin.js';
import { explain, formatExplanation } from '../policy/explain.js';
import { OpaEngine } from '../policy/opa.js';
import { decodeJws } from '../tokens/jws.js';
import { startBroker } from './broker.js';
import { devInit, issueDevSvid, loadDevCa } from './dev-init.js';
import { SqliteStore } from '../store/sqlite.js';
import { openKeyStore } from './keystore.js';

const DEFAULT_DEV_DIR = '.mayfly';

interface ClientFlags {
  broker: string;
  ca?: string;
  cert?: string;
  key?: string;
  tokenFile?: string;
  devDir: string;
}

function clientOptions(cmd: Command): Command {
  return cmd
    .option('--broker <host:port>', 'broker gRPC address', '127.0.0.1:8443')
    .option('--dev-dir <dir>', 'where `mayfly dev init` wrote the dev files (defaults for --ca/--cert/--key)', DEFAULT_DEV_DIR)
    .option('--ca <file>', 'CA that signed the broker certificate (default: <dev-dir>/ca.pem)')
    .option('--cert <file>', 'client X.509-SVID (default: <dev-dir>/workload.pem)')
    .option('--key <file>', 'client key (default: <dev-dir>/workload.key)')
    .option('--token-file <file>', 'authenticate with this bearer token (JWT-SVID, OIDC token or task token) instead of mTLS');
}

function connect(f: ClientFlags): BrokerClient {
  const dev = (name: string) => join(f.devDir, name);
  const read = (p: string, what: string) => {
    try {
      return readFileSync(p);
    } catch {
      throw new MayflyError('ERR_INVALID_ARGUMENT', `cannot read ${what} ${p} (run \`mayfly dev init\` or pass --${what})`);
    }
  };
  const ca = read(f.ca ?? dev('ca.pem'), 'ca');
  if (f.tokenFile) {
    const token = read(f.tokenFile, 'token-file').toString('utf8').trim();
    return new BrokerClient({ address: f.broker, ca, bearer: token });
  }
  return new BrokerClient({ address: f.broker, ca, cert: read(f.cert ?? dev('workload.pem'), 'cert'), key: read(f.key ?? dev('workload.key'), 'key') });
}

async function withClient<T>(f: ClientFlags, fn: (c: BrokerClient) => Promise<T>): Promise<T> {
  const c = connect(f);
  try {
    return await fn(c);
  } finally {
    c.close();
  }
}

function parseDuration(s: string): number {
  const m = /^(\d+)(s|m|h)?$/.exec(s.trim());
  if (!m) throw new MayflyError('ERR_TTL_INVALID', `invalid duration ${JSON.stringify(s)}: use e.g. 90s, 10m or 1h`);
  return Number(m[1]) * (m[2] === 'h' ? 3600 : m[2] === 'm' ? 60 : 1);
}

function parseLabels(list: string[] = []): Record<string, string> {
  const out: Record<string, string> = {};
  for (const kv of list) {
    const i = kv.indexOf('=');
    if (i <= 0) throw new MayflyError('ERR_INVALID_ARGUMENT', `label ${JSON.stringify(kv)} must be key=value`);
    out[kv.slice(0, i)] = kv.slice(i + 1);
  }
  return out;
}

const collect = (v: string, prev: string[] = []) => [...prev, v];

/** Builds the command tree. */
export function buildCli(): Command {
  const program = new Command('mayfly')
    .description('Ephemeral workload-identity token broker: verified identity in, task-scoped short-lived tokens out.')
    .showHelpAfterError()
    .configureOutput({ outputError: (s, write) => write(s) });

  const dev = program.command('dev').description('development helpers (dev CA, demo SVIDs, one-command start)');
  dev
    .command('init')
    .description('write a working dev config, dev CA, broker certificate and demo SVIDs into a directory')
    .option('--dir <dir>', 'target directory', DEFAULT_DEV_DIR)
    .option('--force', 'overwrite an existing setup')
    .action((o: { dir: string; force?: boolean }) => {
      const r = devInit(o.dir, { force: !!o.force });
      console.log(r.created ? `wrote dev setup to ${r.dir} (config: ${r.config})` : `dev setup already exists in ${r.dir} (use --force to replace it)`);
    });
  dev
    .command('start')
    .description('dev init (if needed, into ./.mayfly) and serve; what `npm start` runs')
    .option('--dir <dir>', 'dev directory', DEFAULT_DEV_DIR)
    .action(async (o: { dir: string }) => {
      const r = devInit(o.dir);
      if (r.created) console.log(`created a dev setup in ${r.dir}`);
      await serve(r.config, {}, true);
    });

  program
    .command('serve')
    .description('run the broker')
    .requiredOption('--config <file>', 'config file (YAML)')
    .option('--grpc-listen <host:port>', 'gRPC listen address (overrides listen.grpc)')
    .option('--http-listen <host:port>', 'HTTPS listen address (overrides listen.http)')
    .action(async (o: { config: string; grpcListen?: string; httpListen?: string }) => serve(o.config, o, false));

  const svid = program.command('svid').description('dev X.509-SVIDs');
  svid
    .command('issue')
    .description('issue an X.509-SVID from the dev CA (DEVELOPMENT ONLY)')
    .option('--ca-dir <dir>', 'directory holding ca.pem and ca.key', DEFAULT_DEV_DIR)
    .requiredOption('--spiffe-id <id>', 'SPIFFE ID, e.g. spiffe://example.org/ci/runner')
    .requiredOption('--out <prefix>', 'writes PREFIX.pem and PREFIX.key')
    .option('--ttl <duration>', 'validity', '720h')
    .action((o: { caDir: string; spiffeId: string; out: string; ttl: string }) => {
      issueDevSvid(loadDevCa(o.caDir), o.spiffeId, o.out, parseDuration(o.ttl));
      console.log(`wrote ${o.out}.pem and ${o.out}.key for ${o.spiffeId}`);
    });

  const task = program.command('task').description('begin, renew and complete tasks');
  clientOptions(task.command('begin').description('begin a task; prints its id'))
    .requiredOption('--purpose <text>', 'what the task is for (audited, visible to policy)')
    .option('--ttl <duration>', 'task lifetime (default: broker default, 15m)')
    .option('--label <key=value>', 'label (repeatable)', collect)
    .option('--parent <task-id>', 'start a delegated child task')
    .option('--scope <scope>', 'child task scope ceiling (repeatable)', collect)
    .option('--lease <duration>', 'lease; the task is revoked unless renewed in time')
    .option('--json', 'print the full response as JSON')
    .action(async (o: ClientFlags & { purpose: string; ttl?: string; label?: string[]; parent?: string; scope?: string[]; lease?: string; json?: boolean }) => {
      const r = await withClient(o, (c) =>
        c.beginTask({ purpose: o.purpose, ttlSeconds: o.ttl ? parseDuration(o.ttl) : 0, labels: parseLabels(o.label), parentTaskId: o.parent ?? '', scopes: o.scope ?? [], leaseSeconds: o.lease ? parseDuration(o.lease) : 0 }),
      );
      if (o.json) console.log(JSON.stringify({ task_id: r.taskId, expires_at: Number(r.expiresAt), lease_expires_at: Number(r.leaseExpiresAt) || undefined, parent_task_id: r.parentTaskId || undefined, depth: r.depth }));
      else {
        console.log(r.taskId);
        console.error(`task ${r.taskId} expires at ${new Date(Number(r.expiresAt) * 1000).toISOString()}`);
      }
    });
  clientOptions(task.command('complete').description('complete a task: revokes every token of it and its child tasks'))
    .option('--task <task-id>', 'task id (with --token-file, defaults to the task of that token)')
    .action(async (o: ClientFlags & { task?: string }) => {
      let taskId = o.task;
      if (!taskId && o.tokenFile) taskId = String(decodeJws(readFileSync(o.tokenFile, 'utf8').trim()).payload['tid'] ?? '');
      if (!taskId) throw new MayflyError('ERR_INVALID_ARGUMENT', '--task is required (or --token-file with a task token)');
      const r = await withClient(o, (c) => c.completeTask(taskId!));
      console.log(`task ${taskId} completed; ${r.revokedTokens} token(s) revoked across ${r.taskIds.length} task(s)`);
    });
  clientOptions(task.command('renew').description('extend a task lease (heartbeat)'))
    .requiredOption('--task <task-id>', 'task id')
    .option('--lease <duration>', 'new lease from now', '60s')
    .action(async (o: ClientFlags & { task: string; lease: string }) => {
      const r = await withClient(o, (c) => c.renewTask(o.task, parseDuration(o.lease)));
      console.log(`lease extended to ${new Date(Number(r.leaseExpiresAt) * 1000).toISOString()}`);
    });

  const token = program.command('token').description('issue, inspect, introspect and revoke tokens');
  clientOptions(token.command('issue').description('issue a task-scoped token; prints the JWT'))
    .requiredOption('--task <task-id>', 'task id')
    .requiredOption('--audience <aud>', 'the one audience the token is for')
    .option('--scope <scope>', 'requested scope (repeatable)', collect)
    .option('--ttl <duration>', 'token lifetime (default 5m; never past the task)')
    .option('--tool <name>', 'agent tool this token is for')
    .option('--args-digest <digest>', 'digest of the tool call arguments, e.g. sha256:<hex>')
    .option('--single-use', 'relying parties accept it once')
    .option('--json', 'print the full response as JSON')
    .action(async (o: ClientFlags & { task: string; audience: string; scope?: string[]; ttl?: string; tool?: string; argsDigest?: string; singleUse?: boolean; json?: boolean }) => {
      const r = await withClient(o, (c) =>
        c.issueToken({ taskId: o.task, audience: o.audience, scopes: o.scope ?? [], ttlSeconds: o.ttl ? parseDuration(o.ttl) : 0, tool: o.tool ?? '', argsDigest: o.argsDigest ?? '', singleUse: !!o.singleUse }),
      );
      if (o.json) console.log(JSON.stringify({ token: r.token, token_id: r.tokenId, expires_at: Number(r.expiresAt), scopes: r.scopes }));
      else {
        console.log(r.token);
        console.error(`token ${r.tokenId} scopes [${r.scopes.join(' ')}] expires at ${new Date(Number(r.expiresAt) * 1000).toISOString()}`);
      }
    });
  token
    .command('inspect')
    .description('decode a JWT locally (no verification)')
    .argument('<jwt>', 'the token, or @file')
    .action((jwt: string) => {
      const t = jwt.startsWith('@') ? readFileSync(jwt.slice(1), 'utf8').trim() : jwt;
      const d = decodeJws(t);
      console.log(JSON.stringify({ header: d.header, claims: d.payload }, null, 2));
    });
  clientOptions(token.command('introspect').description('ask the broker whether a token is active (RFC 7662 semantics)'))
    .argument('<jwt>', 'the token, or @file')
    .action(async (jwt: string, o: ClientFlags) => {
      const t = jwt.startsWith('@') ? readFileSync(jwt.slice(1), 'utf8').trim() : jwt;
      const r = await withClient(o, (c) => c.introspect(t));
      console.log(JSON.stringify(r.active ? { active: true, ...(JSON.parse(r.claimsJson) as object) } : { active: false, reason: r.reason }, null, 2));
    });
  clientOptions(token.command('revoke').description('revoke one token (RFC 7009 semantics)'))
    .argument('<jwt>', 'the token, or @file')
    .action(async (jwt: string, o: ClientFlags) => {
      const t = jwt.startsWith('@') ? readFileSync(jwt.slice(1), 'utf8').trim() : jwt;
      const r = await withClient(o, (c) => c.revokeToken({ token: t }));
      console.log(r.revoked ? 'revoked' : 'nothing to revoke (unknown or already revoked)');
    });

  clientOptions(program.command('revoke-identity').description('admin: revoke every live task of an identity'))
    .argument('<identity>', 'SPIFFE ID or <issuer>#<sub>')
    .option('--reason <text>', 'recorded in audit')
    .action(async (id: string, o: ClientFlags & { reason?: string }) => {
      const r = await withClient(o, (c) => c.revokeIdentity(id, o.reason ?? ''));
      console.log(`${r.revokedTasks} task(s) and ${r.revokedTokens} token(s) revoked`);
    });

  program
    .command('exchange')
    .description('RFC 8693 token exchange over HTTPS: trade a CI/OIDC token or JWT-SVID for a task token; prints it')
    .requiredOption('--subject-token-file <file>', 'file holding the subject token')
    .requiredOption('--audience <aud>', 'audience of the Mayfly token')
    .option('--scope <scopes>', 'space-separated scopes', '')
    .option('--purpose <text>', 'task purpose')
    .option('--ttl <duration>', 'requested lifetime')
    .option('--task <task-id>', 'join an existing task of the same identity')
    .option('--url <url>', 'broker HTTPS base URL', 'https://127.0.0.1:8444')
    .option('--ca <file>', 'CA of the broker certificate', join(DEFAULT_DEV_DIR, 'ca.pem'))
    .addOption(new Option('--subject-token-type <type>', 'jwt or id_token').choices(['jwt', 'id_token']).default('jwt'))
    .option('--json', 'print the full response as JSON')
    .action(async (o: { subjectTokenFile: string; audience: string; scope: string; purpose?: string; ttl?: string; task?: string; url: string; ca: string; subjectTokenType: string; json?: boolean }) => {
      const form = new URLSearchParams({
        grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange',
        subject_token: readFileSync(o.subjectTokenFile, 'utf8').trim(),
        subject_token_type: `urn:ietf:params:oauth:token-type:${o.subjectTokenType}`,
        audience: o.audience,
        ...(o.scope ? { scope: o.scope } : {}),
        ...(o.purpose ? { mayfly_purpose: o.purpose } : {}),
        ...(o.ttl ? { requested_lifetime: String(parseDuration(o.ttl)) } : {}),
        ...(o.task ? { mayfly_task_id: o.task } : {}),
      });
      const res = await postForm(new URL('/oauth2/token', o.url), form.toString(), existsSync(o.ca) ? readFileSync(o.ca) : undefined);
      const body = JSON.parse(res.body) as Record<string, unknown>;
      if (res.status !== 200) throw new MayflyError('ERR_UNAUTHENTICATED', `${String(body['error'])}: ${String(body['error_description'])}`);
      if (o.json) console.log(JSON.stringify(body));
      else {
        console.log(body['access_token']);
        console.error(`task ${String(body['mayfly_task_id'])} scope [${String(body['scope'])}] expires in ${String(body['expires_in'])}s`);
      }
    });

  const audit = program.command('audit').description('audit log tools');
  audit
    .command('verify')
    .description('verify the audit hash chain, its signed checkpoints and the head recorded in the store; reports the first broken link')
    .requiredOption('--config <file>', 'config file')
    .option('--file <file>', 'audit log (default: from config)')
    .option('--jwks <file>', 'public audit key (default: <data_dir>/audit-key.jwks.json)')
    .action(async (o: { config: string; file?: string; jwks?: string }) => {
      const r = await auditVerify(loadConfig(o.config), o);
      for (const line of r.lines) console.log(line);
      if (!r.result.ok) process.exitCode = 1;
    });

  const policy = program.command('policy').description('policy tools');
  policy
    .command('eval')
    .description('evaluate a decision input against the configured policy, without a server')
    .requiredOption('--config <file>', 'config file')
    .requiredOption('--input <file>', 'decision input JSON (docs/policy/input.schema.json); partial inputs are completed with defaults')
    .option('--json', 'print the explanation as JSON')
    .action(async (o: { config: string; input: string; json?: boolean }) => {
      const { config, baseDir } = loadConfig(o.config);
      const engine =
        config.policy.engine === 'opa'
          ? await OpaEngine.load({ policyFile: resolvePath(baseDir, config.policy.opa!.policy_file), entrypoint: config.policy.opa!.entrypoint, ...(config.policy.opa!.data_file ? { dataFile: resolvePath(baseDir, config.policy.opa!.data_file) } : {}) })
          : await BuiltinEngine.fromFile(resolvePath(baseDir, config.policy.builtin.rules_file));
      try {
        const raw = JSON.parse(readFileSync(o.input, 'utf8')) as Partial<DecisionInput>;
        const input: DecisionInput = {
          version: DECISION_CONTRACT_VERSION,
          ...raw,
          identity: { kind: 'spiffe', id: '', method: 'x509-svid', claims: {}, ...(raw.identity ?? {}) },
          request: { action: 'issue_token', scopes: [], ttl_seconds: 300, labels: {}, ...(raw.request ?? {}) },
          context: { time: Math.floor(Date.now() / 1000), broker_id: config.broker_id, recent_issuance: { last_minute: 0, last_hour: 0 }, ...(raw.context ?? {}) },
        } as DecisionInput;
        const e = await explain(engine, input, { timeoutMs: config.policy.timeout_ms });
        console.log(o.json ? JSON.stringify(e, null, 2) : formatExplanation(e));
        if (e.decision !== 'allow') process.exitCode = 2;
      } finally {
        await engine.close();
      }
    });

  const keys = program.command('keys').description('signing keys');
  keys
    .command('list')
    .description('list signing keys with state, since when, and unexpired tokens signed')
    .requiredOption('--config <file>', 'config file')
    .action(async (o: { config: string }) => {
      const { config, baseDir } = loadConfig(o.config);
      const dataDir = resolvePath(baseDir, config.data_dir);
      const ks = await openKeyStore(config, dataDir, baseDir, process.env, { warn: () => undefined } as never);
      const store = config.store.backend === 'sqlite' ? SqliteStore.open(resolvePath(dataDir, config.store.path)) : null;
      try {
        const live = store ? await store.liveTokensByKid(Date.now()) : {};
        const rows = (await ks.list()).sort((a, b) => a.createdAt - b.createdAt);
        console.log(['KID', 'ALG', 'STATE', 'SINCE', 'LIVE_TOKENS'].join('\t'));
        for (const k of rows) console.log([k.kid, k.alg, k.state, new Date(k.stateSince).toISOString(), String(live[k.kid] ?? 0)].join('\t'));
      } finally {
        await ks.close();
        await store?.close();
      }
    });
  for (const [name, desc] of [
    ['rotate', 'ask the running broker to rotate: the next key is promoted once it has been published long enough'],
    ['revoke', 'emergency: remove a key from the JWKS now, revoke every token it signed, promote a replacement'],
  ] as const) {
    const cmd = keys.command(name).description(desc);
    if (name === 'revoke') cmd.argument('<kid>', 'key id');
    cmd
      .option('--url <url>', 'broker HTTPS base URL', 'https://127.0.0.1:8444')
      .option('--dev-dir <dir>', 'dev files', DEFAULT_DEV_DIR)
      .option('--ca <file>', 'CA of the broker certificate (default <dev-dir>/ca.pem)')
      .option('--cert <file>', 'admin X.509-SVID (default <dev-dir>/admin.pem)')
      .option('--key <file>', 'admin key (default <dev-dir>/admin.key)')
      .action(async (...args: unknown[]) => {
        const kid = name === 'revoke' ? (args[0] as string) : undefined;
        const o = args[name === 'revoke' ? 1 : 0] as { url: string; devDir: string; ca?: string; cert?: string; key?: string };
        const path = kid ? `/admin/keys/${encodeURIComponent(kid)}/revoke` : '/admin/keys/rotate';
        const res = await postForm(new URL(path, o.url), '', readFileSync(o.ca ?? join(o.devDir, 'ca.pem')), {
          cert: readFileSync(o.cert ?? join(o.devDir, 'admin.pem')),
          key: readFileSync(o.key ?? join(o.devDir, 'admin.key')),
        });
        if (res.status !== 200) throw new MayflyError('ERR_NOT_AUTHORIZED_CLIENT', `broker answered ${res.status}: ${res.body}`);
        console.log(res.body);
      });
  }
  return program;
}

function postForm(url: URL, body: string, ca?: Buffer, client?: { cert: Buffer; key: Buffer }): Promise<{ status: number; body: string }> {
  return new Promise((resolvePromise, reject) => {
    const req = httpsRequest(
      url,
      { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded', 'content-length': Buffer.byteLength(body) }, ...(ca ? { ca } : {}), ...(client ?? {}), timeout: 10_000 },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolvePromise({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
      },
    );
    req.on('timeout', () => req.destroy(new MayflyError('ERR_UNAVAILABLE', `no answer from ${url.origin} within 10 s`)));
    req.on('error', (e) => reject(e instanceof MayflyError ? e : new MayflyError('ERR_UNAVAILABLE', `cannot reach ${url.origin}: ${e.message}`)));
    req.end(body);
  });
}

async function serve(configPath: string, o: { grpcListen?: string; httpListen?: string }, dev: boolean): Promise<void> {
  const loaded = loadConfig(configPath);
  const broker = await startBroker(loaded, { ...(o.grpcListen ? { grpcListen: o.grpcListen } : {}), ...(o.httpListen ? { httpListen: o.httpListen } : {}) });
  const g = `${broker.grpc.address.host}:${broker.grpc.address.port}`;
  const h = `https://${broker.http.address.host}:${broker.http.address.port}`;
  console.error(`mayfly: gRPC (mTLS) on ${g}; HTTPS on ${h} (JWKS ${h}/.well-known/jwks.json)`);
  if (dev) {
    const d = resolve(loaded.baseDir);
    console.error(`mayfly: dev setup in ${d}. Try, in another shell:
  TASK=$(npx mayfly task begin --dev-dir ${d} --purpose "nightly export" --ttl 10m)
  TOKEN=$(npx mayfly token issue --dev-dir ${d} --task $TASK --audience demo-api --scope read)
  npx mayfly token inspect $TOKEN
  npx mayfly task complete --dev-dir ${d} --task $TASK
  npx mayfly token introspect --dev-dir ${d} $TOKEN`);
  }
  let stopping = false;
  const stop = (sig: string) => {
    if (stopping) return;
    stopping = true;
    console.error(`mayfly: ${sig} received, shutting down`);
    broker.stop().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGHUP', () => void broker.reload());
}

/** Entry point: runs the CLI and turns any error into one line and exit code 1. */
export async function main(argv: string[]): Promise<void> {
  try {
    await buildCli().parseAsync(argv);
  } catch (e) {
    const err = e instanceof MayflyError ? e : MayflyError.from(e);
    const msg = err.code === 'ERR_INTERNAL' && err.cause instanceof Error ? err.cause.message : err.message;
    process.stderr.write(`mayfly: ${err.code}: ${msg}\n`);
    process.exitCode = 1;
  }
}

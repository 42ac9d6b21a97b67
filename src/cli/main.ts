/** The `mayfly` command line. Errors print one line and exit non-zero. */
import { existsSync, readFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { join, resolve } from 'node:path';
import { Command, CommanderError, Option } from 'commander';
import { loadConfig, resolvePath } from '../config/load.js';
import { DECISION_CONTRACT_VERSION, type DecisionInput } from '../core/decision.js';
import { MayflyError } from '../core/errors.js';
import { auditVerify } from './audit-verify.js';
import { auditVerifyCluster } from './audit-cluster.js';
import { mergeAuditLogs } from '../audit/merge.js';
import { BrokerClient } from '../client/broker-client.js';
import { BuiltinEngine } from '../policy/builtin.js';
import { explain, formatExplanation } from '../policy/explain.js';
import { OpaEngine } from '../policy/opa.js';
import { decodeJws } from '../tokens/jws.js';
import { certificateThumbprint } from '../tokens/hashes.js';
import { pemToDer } from '../pki/dev-pki.js';
import { startBroker } from './broker.js';
import { devInit, issueDevSvid, loadDevCa, packageRoot } from './dev-init.js';
import { devIssuerUrl, loadOrCreateDevIssuerKey, mintDevToken, startDevOidcIssuer } from './dev-oidc-issuer.js';
import { fromHttpError, oneLine, readPem, readUserFile, toCliError } from './errors.js';
import { parseIdentityId } from '../identity/identity-id.js';
import { SqliteStore } from '../store/sqlite.js';
import { PostgresStore } from '../store/postgres.js';
import { buildStore } from './build-store.js';
import { openKeyStore } from './keystore.js';
import cluster from 'node:cluster';
import { registerDbCommands } from './db.js';
import { asWorker, parseWorkers, reportListening, runPrimary, workerIndex } from './workers.js';

const DEFAULT_DEV_DIR = '.mayfly';

interface ClientFlags {
  broker: string;
  ca?: string;
  cert?: string;
  key?: string;
  tokenFile?: string;
  devDir: string;
}

const devDirOption = (what: string) => new Option('--dev-dir <dir>', what).env('MAYFLY_DEV_DIR').default(DEFAULT_DEV_DIR);
const urlOption = () => new Option('--url <url>', 'broker HTTPS base URL').env('MAYFLY_URL').default('https://127.0.0.1:8444');

function clientOptions(cmd: Command, defaultCert = 'workload'): Command {
  return cmd
    .addOption(new Option('--broker <host:port>', 'broker gRPC address; several replicas comma-separated (host:port,host:port), tried in turn').env('MAYFLY_BROKER').default('127.0.0.1:8443'))
    .addOption(devDirOption('where `mayfly dev init` wrote the dev files (defaults for --ca/--cert/--key)'))
    .option('--ca <file>', 'CA that signed the broker certificate (default: <dev-dir>/ca.pem)')
    .option('--cert <file>', `client X.509-SVID (default: <dev-dir>/${defaultCert}.pem; with --token-file only when given)`)
    .option('--key <file>', `client key (default: <dev-dir>/${defaultCert}.key)`)
    .option('--token-file <file>', 'authenticate with this bearer token (JWT-SVID, OIDC token or task token); add --cert/--key for a certificate-bound token');
}

/** Reads a token argument: the token itself, or @file. */
function tokenArg(arg: string): string {
  const t = arg.startsWith('@') ? readUserFile(arg.slice(1), 'token file').toString('utf8').trim() : arg.trim();
  if (t === '') throw new MayflyError('ERR_JWT_INVALID', arg.startsWith('@') ? `token file ${arg.slice(1)} is empty` : 'the token is empty');
  return t;
}

/** The cnf.x5t#S256 of a Mayfly token, undefined for an unbound token or one that is not a JWT. */
function boundThumbprint(token: string): string | undefined {
  let cnf: unknown;
  try {
    cnf = decodeJws(token).payload['cnf'];
  } catch {
    return undefined; // the broker says what is wrong with it
  }
  const t = cnf && typeof cnf === 'object' ? (cnf as Record<string, unknown>)['x5t#S256'] : undefined;
  return typeof t === 'string' ? t : undefined;
}

/** x5t#S256 of the first certificate in a PEM file. */
function leafThumbprint(pem: Buffer): string {
  return certificateThumbprint(pemToDer(pem.toString('utf8'))[0]!);
}

function checkBrokerAddress(address: string): void {
  if (!/^(\[[0-9a-fA-F:.]+\]|[^\s:/[\]]+):\d{1,5}$/.test(address) || Number(address.slice(address.lastIndexOf(':') + 1)) > 65535) {
    throw new MayflyError('ERR_USAGE', `--broker ${JSON.stringify(address)} is not host:port, e.g. 127.0.0.1:8443`);
  }
}

function connect(f: ClientFlags, defaultCert: string): BrokerClient {
  checkBrokerAddress(f.broker);
  const dev = (name: string) => join(f.devDir, name);
  const hint = (flag: string) => (f[flag as 'ca' | 'cert' | 'key'] ? `--${flag}` : `--${flag} (default from --dev-dir ${f.devDir}; run \`mayfly dev init\` or pass --${flag})`);
  const ca = readPem(f.ca ?? dev('ca.pem'), hint('ca'), 'CERTIFICATE');
  const mtls = () => ({ cert: readPem(f.cert ?? dev(`${defaultCert}.pem`), hint('cert'), 'CERTIFICATE'), key: readPem(f.key ?? dev(`${defaultCert}.key`), hint('key'), 'PRIVATE KEY') });
  if (f.tokenFile) {
    const token = readUserFile(f.tokenFile, '--token-file').toString('utf8').trim();
    if (token === '') throw new MayflyError('ERR_JWT_INVALID', `--token-file ${f.tokenFile} is empty`);
    // A certificate-bound (cnf.x5t#S256) token is presented together with its certificate (RFC 8705).
    const bound = boundThumbprint(token);
    if (f.cert || f.key) {
      if (!f.cert || !f.key) throw new MayflyError('ERR_USAGE', '--cert and --key go together: give both, or neither for a plain bearer token');
      const creds = mtls();
      if (bound !== undefined && leafThumbprint(creds.cert) !== bound) {
        throw new MayflyError('ERR_UNAUTHENTICATED', `--token-file ${f.tokenFile} is bound to another certificate than --cert ${f.cert}: pass the certificate the token was issued to`);
      }
      return new BrokerClient({ address: f.broker, ca, ...creds, bearer: token });
    }
    if (bound !== undefined) {
      throw new MayflyError('ERR_USAGE', `--token-file ${f.tokenFile} is bound to a client certificate (cnf.x5t#S256): add --cert and --key with the certificate it was issued to (for the dev workload: --cert ${dev('workload.pem')} --key ${dev('workload.key')})`);
    }
    return new BrokerClient({ address: f.broker, ca, bearer: token });
  }
  return new BrokerClient({ address: f.broker, ca, ...mtls() });
}

async function withClient<T>(f: ClientFlags, fn: (c: BrokerClient) => Promise<T>, defaultCert = 'workload'): Promise<T> {
  const c = connect(f, defaultCert);
  try {
    return await fn(c);
  } catch (e) {
    if (e instanceof MayflyError && e.code === 'ERR_UNAVAILABLE') throw new MayflyError('ERR_UNAVAILABLE', `cannot reach a broker at ${f.broker} (--broker): ${e.message.replace(/^broker unavailable: /, '')}`);
    throw e;
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
    .version(packageVersion(), '-V, --version', 'print the version')
    // Usage errors surface as CommanderError and become main()'s one error line; help a command
    // prints because it was called without a subcommand goes to stdout, never to stderr.
    .exitOverride()
    .configureOutput({ outputError: () => undefined, writeErr: (s) => process.stdout.write(s) });

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

  dev
    .command('oidc-issuer')
    .description('serve a local GitHub-Actions-shaped OIDC issuer (discovery + JWKS over HTTPS, dev-CA certificate) and print a token from it')
    .addOption(new Option('--dir <dir>', 'dev directory (the issuer URL is its dev-ci OIDC issuer)').env('MAYFLY_DEV_DIR').default(DEFAULT_DEV_DIR))
    .option('--issuer <url>', 'issuer URL to serve (default: the dev-ci issuer of <dir>/mayfly.yaml)')
    .action(async (o: { dir: string; issuer?: string }) => {
      const url = o.issuer ?? devIssuerUrl(o.dir);
      const issuer = await startDevOidcIssuer(o.dir, url);
      console.log(mintDevToken(issuer.key, issuer.issuer, { kind: 'github-actions', audience: 'mayfly', lifetimeSeconds: 300 }));
      console.error(`mayfly: dev OIDC issuer ${issuer.issuer} (DEVELOPMENT ONLY; discovery ${issuer.issuer}/.well-known/openid-configuration).
  The line above is a GitHub-Actions-shaped token for acme/api, refs/heads/main, environment prod (audience mayfly, 5 minutes).
  More: npx mayfly dev oidc-token --dir ${o.dir} [--claim ref=refs/heads/dev] [--kind kubernetes --namespace payments --service-account api]`);
      const stop = () => void issuer.close().then(() => process.exit(0));
      process.once('SIGTERM', stop);
      process.once('SIGINT', stop);
    });
  dev
    .command('oidc-token')
    .description('print a token signed by the `dev oidc-issuer` key: GitHub Actions shaped (default) or a Kubernetes service-account token')
    .addOption(new Option('--dir <dir>', 'dev directory').env('MAYFLY_DEV_DIR').default(DEFAULT_DEV_DIR))
    .option('--issuer <url>', 'iss claim (default: the dev-ci issuer of <dir>/mayfly.yaml)')
    .addOption(new Option('--kind <kind>', 'token shape').choices(['github-actions', 'kubernetes']).default('github-actions'))
    .option('--audience <aud>', 'aud claim', 'mayfly')
    .option('--claim <name=value>', 'github-actions: set a claim, e.g. ref=refs/heads/dev (repeatable)', collect)
    .option('--namespace <ns>', 'kubernetes: namespace', 'default')
    .option('--service-account <name>', 'kubernetes: service account', 'default')
    .option('--ttl <duration>', 'lifetime', '5m')
    .action((o: { dir: string; issuer?: string; kind: 'github-actions' | 'kubernetes'; audience: string; claim?: string[]; namespace: string; serviceAccount: string; ttl: string }) => {
      if (o.claim && o.kind !== 'github-actions') throw new MayflyError('ERR_USAGE', '--claim is for --kind github-actions; use --namespace/--service-account for kubernetes');
      const lifetimeSeconds = parseDuration(o.ttl);
      const issuer = o.issuer ?? devIssuerUrl(o.dir);
      const key = loadOrCreateDevIssuerKey(o.dir);
      console.log(mintDevToken(key, issuer, { kind: o.kind, audience: o.audience, lifetimeSeconds, claims: parseLabels(o.claim), namespace: o.namespace, serviceAccount: o.serviceAccount }));
    });

  program
    .command('serve')
    .description('run the broker')
    .requiredOption('--config <file>', 'config file (YAML)')
    .option('--grpc-listen <host:port>', 'gRPC listen address (overrides listen.grpc)')
    .option('--http-listen <host:port>', 'HTTPS listen address (overrides listen.http)')
    .option('--workers <n>', 'broker processes sharing the listen ports (needs store.backend postgres)', '1')
    .action(async (o: { config: string; grpcListen?: string; httpListen?: string; workers?: string }) => serve(o.config, o, false));

  const svid = program.command('svid').description('dev X.509-SVIDs');
  svid
    .command('issue')
    .description('issue an X.509-SVID from the dev CA (DEVELOPMENT ONLY)')
    .option('--ca-dir <dir>', 'directory holding ca.pem and ca.key', DEFAULT_DEV_DIR)
    .requiredOption('--spiffe-id <id>', 'SPIFFE ID, e.g. spiffe://example.org/ci/runner')
    .requiredOption('--out <prefix>', 'writes PREFIX.pem and PREFIX.key')
    .option('--ttl <duration>', 'validity', '720h')
    .action((o: { caDir: string; spiffeId: string; out: string; ttl: string }) => {
      const ttl = parseDuration(o.ttl);
      issueDevSvid(loadDevCa(o.caDir), o.spiffeId, o.out, ttl);
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
      if (!taskId && o.tokenFile) {
        taskId = String(decodeJws(readUserFile(o.tokenFile, '--token-file').toString('utf8').trim()).payload['tid'] ?? '');
        if (!taskId) throw new MayflyError('ERR_INVALID_ARGUMENT', `--token-file ${o.tokenFile} holds no task token (no tid claim): pass --task`);
      }
      if (!taskId) throw new MayflyError('ERR_USAGE', '--task is required (or --token-file with a task token)');
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
      const d = decodeJws(tokenArg(jwt));
      console.log(JSON.stringify({ header: d.header, claims: d.payload }, null, 2));
    });
  clientOptions(token.command('introspect').description('ask the broker whether a token is active (RFC 7662 semantics)'))
    .argument('<jwt>', 'the token, or @file')
    .action(async (jwt: string, o: ClientFlags) => {
      const t = tokenArg(jwt);
      const r = await withClient(o, (c) => c.introspect(t));
      // The same fields as HTTP introspection (RFC 7662 plus mayfly_reason).
      console.log(JSON.stringify(r.active ? { active: true, ...(JSON.parse(r.claimsJson) as object) } : { active: false, mayfly_reason: r.reason }, null, 2));
    });
  clientOptions(token.command('revoke').description('revoke one token (RFC 7009 semantics)'))
    .argument('<jwt>', 'the token, or @file')
    .action(async (jwt: string, o: ClientFlags) => {
      const t = tokenArg(jwt);
      const r = await withClient(o, (c) => c.revokeToken({ token: t }));
      console.log(r.revoked ? 'revoked' : 'nothing to revoke (unknown or already revoked)');
    });

  clientOptions(program.command('revoke-identity').description('admin: revoke every live task of an identity (mTLS as an admin; default <dev-dir>/admin.pem)'), 'admin')
    .argument('<identity>', 'SPIFFE ID or <issuer>#<sub>')
    .option('--reason <text>', 'recorded in audit')
    .action(async (id: string, o: ClientFlags & { reason?: string }) => {
      const target = parseIdentityId(id);
      const r = await withClient(o, (c) => c.revokeIdentity(target, o.reason ?? ''), 'admin');
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
    .addOption(urlOption())
    .option('--ca <file>', 'CA of the broker certificate (default: .mayfly/ca.pem if it exists, else the system CAs)')
    .addOption(new Option('--subject-token-type <type>', 'jwt or id_token').choices(['jwt', 'id_token']).default('jwt'))
    .option('--json', 'print the full response as JSON')
    .action(async (flags: { subjectTokenFile: string; audience: string; scope: string; purpose?: string; ttl?: string; task?: string; url: string; ca?: string; subjectTokenType: string; json?: boolean }) => {
      const o = { ...flags, ca: flags.ca ?? join(DEFAULT_DEV_DIR, 'ca.pem'), caGiven: flags.ca !== undefined };
      const subject = readUserFile(o.subjectTokenFile, '--subject-token-file').toString('utf8').trim();
      if (subject === '') throw new MayflyError('ERR_JWT_INVALID', `--subject-token-file ${o.subjectTokenFile} is empty`);
      const url = brokerUrl(o.url, '/oauth2/token');
      const form = new URLSearchParams({
        grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange',
        subject_token: subject,
        subject_token_type: `urn:ietf:params:oauth:token-type:${o.subjectTokenType}`,
        audience: o.audience,
        ...(o.scope ? { scope: o.scope } : {}),
        ...(o.purpose ? { mayfly_purpose: o.purpose } : {}),
        ...(o.ttl ? { requested_lifetime: String(parseDuration(o.ttl)) } : {}),
        ...(o.task ? { mayfly_task_id: o.task } : {}),
      });
      const res = await postForm(url, form.toString(), o.caGiven || existsSync(o.ca) ? readPem(o.ca, '--ca', 'CERTIFICATE') : undefined);
      if (res.status !== 200) throw fromHttpError(res.status, res.body, url.origin);
      const body = parseJsonBody(res.body, url.origin);
      if (o.json) console.log(JSON.stringify(body));
      else {
        console.log(body['access_token']);
        console.error(`task ${String(body['mayfly_task_id'])} scope [${String(body['scope'])}] expires in ${String(body['expires_in'])}s`);
      }
    });

  registerDbCommands(program);

  const audit = program.command('audit').description('audit log tools');
  audit
    .command('verify')
    .description('verify the audit hash chain, its signed checkpoints and the head recorded in the store; reports the first broken link')
    .requiredOption('--config <file>', 'config file; repeat it for each replica of a cluster (one report per replica)', (v: string, all: string[]) => [...all, v], [] as string[])
    .option('--file <file>', 'audit log (default: from config)')
    .option('--jwks <file>', 'public audit key (default: <data_dir>/audit-key.jwks.json)')
    .action(async (o: { config: string[]; file?: string; jwks?: string }) => {
      if (o.config.length === 1) {
        const r = await auditVerify(loadConfig(o.config[0]!), o);
        for (const line of r.lines) console.log(line);
        if (!r.result.ok) process.exitCode = 1;
        return;
      }
      const r = await auditVerifyCluster(o.config, o);
      for (const line of r.lines) console.log(line);
      if (!r.ok) process.exitCode = 1;
    });
  audit
    .command('merge')
    .description("print several brokers' audit logs as one, in time order (ts, then broker_id, seq); verify each chain first")
    .argument('<log...>', 'audit log of each replica (rotated segments are read too)')
    .action((logs: string[]) => {
      const r = mergeAuditLogs(logs);
      for (const rec of r.records) console.log(rec.line);
      for (const s of r.skipped) console.error(`mayfly: skipped ${s}`);
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
        const raw = parseInput(readUserFile(o.input, '--input').toString('utf8'), o.input);
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
      // The shared PostgreSQL store holds the keys too; never migrate from a read-only command.
      const pgStore = config.store.backend === 'postgres' ? (await buildStore(config, dataDir, { migrate: false, healthIntervalMs: 0 })).store : null;
      const ks = await openKeyStore(config, dataDir, baseDir, process.env, { warn: () => undefined } as never, pgStore instanceof PostgresStore ? pgStore.pool : undefined);
      const store = pgStore ?? (config.store.backend === 'sqlite' ? SqliteStore.open(resolvePath(dataDir, config.store.path)) : null);
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
      .addOption(urlOption())
      .addOption(devDirOption('dev files'))
      .option('--ca <file>', 'CA of the broker certificate (default <dev-dir>/ca.pem)')
      .option('--cert <file>', 'admin X.509-SVID (default <dev-dir>/admin.pem)')
      .option('--key <file>', 'admin key (default <dev-dir>/admin.key)')
      .action(async (...args: unknown[]) => {
        const kid = name === 'revoke' ? (args[0] as string) : undefined;
        const o = args[name === 'revoke' ? 1 : 0] as { url: string; devDir: string; ca?: string; cert?: string; key?: string };
        const url = brokerUrl(o.url, kid ? `/admin/keys/${encodeURIComponent(kid)}/revoke` : '/admin/keys/rotate');
        const hint = (flag: 'ca' | 'cert' | 'key') => (o[flag] ? `--${flag}` : `--${flag} (default from --dev-dir ${o.devDir})`);
        const res = await postForm(url, '', readPem(o.ca ?? join(o.devDir, 'ca.pem'), hint('ca'), 'CERTIFICATE'), {
          cert: readPem(o.cert ?? join(o.devDir, 'admin.pem'), hint('cert'), 'CERTIFICATE'),
          key: readPem(o.key ?? join(o.devDir, 'admin.key'), hint('key'), 'PRIVATE KEY'),
        });
        if (res.status !== 200) throw fromHttpError(res.status, res.body, url.origin);
        console.log(res.body);
      });
  }
  return program;
}

/** The version in package.json. */
function packageVersion(): string {
  return (JSON.parse(readFileSync(join(packageRoot(), 'package.json'), 'utf8')) as { version: string }).version;
}

/** `path` on the broker's HTTPS base URL, or ERR_USAGE for a URL that is not https://host[:port]. */
function brokerUrl(base: string, path: string): URL {
  let u: URL;
  try {
    u = new URL(path, base);
  } catch {
    throw new MayflyError('ERR_USAGE', `--url ${JSON.stringify(base)} is not a URL: use e.g. https://127.0.0.1:8444`);
  }
  if (u.protocol !== 'https:') throw new MayflyError('ERR_USAGE', `--url ${JSON.stringify(base)} must be https:// (the broker serves HTTP only over TLS)`);
  return u;
}

function parseJsonBody(body: string, origin: string): Record<string, unknown> {
  try {
    return JSON.parse(body) as Record<string, unknown>;
  } catch {
    throw new MayflyError('ERR_UNAVAILABLE', `${origin} did not answer with JSON: is --url a Mayfly broker?`);
  }
}

function parseInput(text: string, path: string): Partial<DecisionInput> {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new MayflyError('ERR_INVALID_ARGUMENT', `--input ${path} is not JSON (${(e as Error).message}): see docs/policy/input.schema.json`);
  }
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw new MayflyError('ERR_INVALID_ARGUMENT', `--input ${path} must hold a JSON object (a decision input)`);
  return raw as Partial<DecisionInput>;
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
    req.on('error', (e) => reject(e instanceof MayflyError ? e : new MayflyError('ERR_UNAVAILABLE', `cannot reach ${url.origin}: ${e.message}`, { cause: e })));
    req.end(body);
  });
}

function checkListen(flag: string, v: string | undefined): void {
  if (v === undefined) return;
  const m = /^(\[[0-9a-fA-F:.]+\]|[^\s:/[\]]*):(\d{1,5})$/.exec(v);
  if (!m || Number(m[2]) > 65535) throw new MayflyError('ERR_LISTEN_ADDRESS_INVALID', `${flag} ${JSON.stringify(v)} is not host:port with a port from 0 to 65535, e.g. 127.0.0.1:8443`);
}

async function serve(configPath: string, o: { grpcListen?: string; httpListen?: string; workers?: string }, dev: boolean): Promise<void> {
  checkListen('--grpc-listen', o.grpcListen);
  checkListen('--http-listen', o.httpListen);
  const workers = parseWorkers(o.workers);
  if (workers > 1 && cluster.isPrimary) return runPrimary(loadConfig(configPath), workers);
  const loaded = asWorker(loadConfig(configPath));
  const broker = await startBroker(loaded, { ...(o.grpcListen ? { grpcListen: o.grpcListen } : {}), ...(o.httpListen ? { httpListen: o.httpListen } : {}) });
  const g = `${broker.grpc.address.host}:${broker.grpc.address.port}`;
  const h = `https://${broker.http.address.host}:${broker.http.address.port}`;
  console.error(`mayfly: ${workerIndex() === null ? '' : `worker ${workerIndex()} (pid ${process.pid}) `}gRPC (mTLS) on ${g}; HTTPS on ${h} (JWKS ${h}/.well-known/jwks.json)`);
  reportListening(g, h);
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

/** The command a usage error is about, for its `--help` hint: the subcommands named in argv. */
function commandPath(program: Command, args: string[]): string {
  const names = ['mayfly'];
  let cur = program;
  for (const a of args) {
    if (a.startsWith('-')) continue;
    const next = cur.commands.find((c) => c.name() === a || c.aliases().includes(a));
    if (!next) break;
    names.push(a);
    cur = next;
  }
  return names.join(' ');
}

function usageError(e: CommanderError, program: Command, args: string[]): MayflyError {
  const path = commandPath(program, args);
  const text = e.message.replace(/^error: /, '');
  if (e.code === 'commander.help' || e.code === 'commander.executeSubCommandAsync') {
    return new MayflyError('ERR_USAGE', `\`${path}\` needs a command: see the list above`);
  }
  return new MayflyError('ERR_USAGE', `${text} (see \`${path} --help\`)`);
}

/**
 * Entry point: runs the CLI and turns any failure, usage errors included,
 * into one `mayfly: ERR_…: …` line on stderr and exit code 1 (2 stays
 * reserved for a policy denial from `policy eval`).
 */
export async function main(argv: string[]): Promise<void> {
  const program = buildCli();
  try {
    await program.parseAsync(argv);
  } catch (e) {
    if (e instanceof CommanderError && e.exitCode === 0) return; // --help, --version
    const err = e instanceof CommanderError ? usageError(e, program, argv.slice(2)) : toCliError(e);
    const msg = err.code === 'ERR_INTERNAL' && err.cause instanceof Error ? `${err.cause.message} (a Mayfly bug: please report it)` : err.message;
    process.stderr.write(`mayfly: ${err.code}: ${oneLine(msg)}\n`);
    process.exitCode = 1;
    // Whatever a failed command left open (a half-started listener, a socket) must not keep the process alive.
    setTimeout(() => process.exit(1), 2_000).unref();
  }
}

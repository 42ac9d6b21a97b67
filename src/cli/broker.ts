/**
 * Wiring: builds every adapter from a validated config and starts the
 * listeners and background loops. The only place that knows all concrete
 * types; `mayfly serve` and the end-to-end tests both start brokers here.
 */
import { existsSync, mkdirSync } from 'node:fs';
import { hostname } from 'node:os';
import { type LoadedConfig, resolvePath } from '../config/load.js';
import type { MayflyError } from '../core/errors.js';
import { systemClock, systemRandom } from '../core/clock.js';
import type { Clock, PolicyEngine, Store } from '../core/ports.js';
import { FileAuditSink } from '../audit/file-sink.js';
import { AUDIT_JWKS_FILE, AUDIT_KEY_FILE, AuditKey, AuditSealer } from '../audit/checkpoint.js';
import { allTrustDomainRootsPem } from '../identity/trust-source.js';
import { createLogger, requestId, type Logger } from '../observability/logger.js';
import { Metrics } from '../observability/metrics.js';
import { OpaEngine } from '../policy/opa.js';
import type { BrokerService } from '../service/broker.js';
import type { RevocationFeed } from '../service/feed.js';
import type { KeyManager } from '../tokens/keys.js';
import { buildKeysAndFeed } from './build-keys.js';
import { buildPolicy } from './build-policy.js';
import { buildServices, type Services } from './build-services.js';
import { buildStore } from './build-store.js';
import { buildOidc, buildTrust } from './build-trust.js';
import { Cleanups } from './cleanups.js';
import { readConfigFile, splitHostPort } from './config-files.js';
import { healthReport } from './health.js';
import { startLoops } from './loops.js';
import { startGrpcServer, type GrpcListener } from '../transport/grpc/server.js';
import { startHttpServer, type HealthReport, type HttpListener } from '../transport/http/server.js';
export interface StartOptions {
  grpcListen?: string;
  httpListen?: string;
  clock?: Clock;
  logger?: Logger;
  /** Environment for the KEK lookup (tests pass their own). */
  env?: NodeJS.ProcessEnv;
}

export interface RunningBroker {
  grpc: GrpcListener;
  http: HttpListener;
  service: BrokerService;
  keys: KeyManager;
  feed: RevocationFeed;
  store: Store;
  metrics: Metrics;
  policy: PolicyEngine;
  health(): HealthReport;
  /** Reloads the policy (SIGHUP). */
  reload(): Promise<void>;
  stop(): Promise<void>;
}

/** Logs a failed request at the level its kind deserves. */
function requestLogger(log: Logger) {
  return (where: string, err: MayflyError, rid: string) => {
    if (err.kind === 'internal') log.error({ request_id: rid, where, code: err.code, err: err.message, cause: (err.cause as Error | undefined)?.message }, 'request failed');
    else if (err.kind === 'unauthenticated' || err.kind === 'permission_denied') log.info({ request_id: rid, where, code: err.code, reason: err.message }, 'request denied');
    else log.debug({ request_id: rid, where, code: err.code, reason: err.message }, 'request rejected');
  };
}

interface ListenerParts extends Services {
  keys: KeyManager;
  clock: Clock;
  audit: FileAuditSink;
  metrics: Metrics;
  trust: Parameters<typeof allTrustDomainRootsPem>[0];
  health: () => HealthReport;
  log: Logger;
  cleanups: Cleanups;
}

/** Both listeners, on the same TLS certificate, in front of the same use-cases. */
async function startListeners(loaded: LoadedConfig, opts: StartOptions, p: ListenerParts): Promise<{ grpc: GrpcListener; http: HttpListener }> {
  const { config: c, baseDir } = loaded;
  const tls = {
    cert: readConfigFile(baseDir, c.tls.cert_file, 'tls.cert_file'),
    key: readConfigFile(baseDir, c.tls.key_file, 'tls.key_file'),
    clientCa: Buffer.from(allTrustDomainRootsPem(p.trust).join('\n')),
  };
  const onError = requestLogger(p.log);
  const rid = () => requestId(systemRandom);
  const g = splitHostPort(opts.grpcListen ?? c.listen.grpc);
  const h = splitHostPort(opts.httpListen ?? c.listen.http);
  const grpc = await startGrpcServer({ broker: p.service, subscriptions: p.subscriptions, auth: p.auth, authentication: p.authentication, audit: p.audit, clock: p.clock, tls, requestId: rid, onError }, g.host, g.port);
  p.cleanups.push(() => grpc.close(2000));
  const http = await startHttpServer(
    {
      broker: p.service,
      subscriptions: p.subscriptions,
      keyAdmin: p.keyAdmin,
      keys: p.keys,
      auth: p.auth,
      authentication: p.authentication,
      clock: p.clock,
      tls,
      issuer: c.issuer,
      jwksMaxAgeSeconds: c.keys.jwks_max_age_seconds,
      requestId: rid,
      health: p.health,
      metrics: { contentType: p.metrics.contentType, render: () => p.metrics.render() },
      onJwksFetch: () => p.metrics.jwksFetches.inc({ source: 'http' }),
      onError,
    },
    h.host,
    h.port,
  );
  p.cleanups.push(() => http.close());
  return { grpc, http };
}

/** Builds and starts a broker. */
export async function startBroker(loaded: LoadedConfig, opts: StartOptions = {}): Promise<RunningBroker> {
  const { config: c } = loaded;
  const clock = opts.clock ?? systemClock;
  const log = opts.logger ?? createLogger({ level: c.log.level, base: { broker_id: c.broker_id } });
  const dataDir = resolvePath(loaded.baseDir, c.data_dir);
  if (!existsSync(dataDir)) mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const metrics = new Metrics();
  const cleanups = new Cleanups();

  const audit = new FileAuditSink({ path: resolvePath(dataDir, c.audit.file), brokerId: c.broker_id, clock, onError: () => metrics.auditWriteErrors.inc() });
  cleanups.push(() => audit.close());
  try {
    const trust = await buildTrust(loaded, { clock, log, cleanups });
    const oidc = buildOidc(loaded, { clock, log, cleanups });

    const builtStore = await buildStore(c, dataDir, { env: opts.env ?? process.env, onStoreError: (m) => log.warn({ err: m }, 'store connection failed'), sqliteCheckpointInWorker: true });
    const store: Store = builtStore.store;
    cleanups.push(() => store.close());
    const coordinator = builtStore.coordinator;
    cleanups.push(() => coordinator.close());
    if (builtStore.backend === 'postgres') log.info({ store: builtStore.where }, 'store: PostgreSQL');
    const sealer = new AuditSealer(audit, AuditKey.loadOrCreate(resolvePath(dataDir, AUDIT_KEY_FILE), resolvePath(dataDir, AUDIT_JWKS_FILE)), store, clock);
    const cut = await sealer.open();
    if (cut) log.error({ seq: cut.seq, reason: cut.reason }, 'the audit log ends before the head recorded in the store; run `mayfly audit verify`');
    if (c.store.backend === 'memory') log.warn('store.backend is memory: tasks and revocations are lost on restart (dev only)');

    const { engine, decider } = await buildPolicy(loaded, { clock, log, audit, metrics, cleanups });
    const { keys, feed, events, cluster } = await buildKeysAndFeed(loaded, { clock, log, audit, metrics, store, env: opts.env ?? process.env, dataDir, cleanups });
    const services = buildServices(loaded, { store, keys, feed, events, decider, trust, oidc, audit, clock, metrics });
    const health = () => healthReport({ clock, keys, audit, engine, cluster, ...(builtStore.health ? { store: builtStore.health } : {}) });
    const { grpc, http } = await startListeners(loaded, opts, { ...services, keys, clock, audit, metrics, trust, health, log, cleanups });
    startLoops(loaded, { service: services.service, keys, feed, store, coordinator, sealer, metrics, clock, log, cleanups });

    audit.write({ event: 'broker.start', outcome: 'success', host: hostname(), grpc: `${grpc.address.host}:${grpc.address.port}`, http: `${http.address.host}:${http.address.port}`, policy_engine: engine.name, policy_revision: engine.revision(), active_kid: keys.active().info.kid });
    let stopped = false;
    return {
      grpc,
      http,
      service: services.service,
      keys,
      feed,
      store,
      metrics,
      policy: engine,
      health,
      reload: async () => {
        if (engine instanceof OpaEngine) await engine.reload();
        else log.info('SIGHUP: the built-in rules engine reloads on restart');
      },
      stop: async () => {
        if (stopped) return;
        stopped = true;
        audit.write({ event: 'broker.stop', outcome: 'success' });
        await sealer.seal('shutdown').catch((e) => log.error({ err: (e as Error).message }, 'could not seal the audit log at shutdown'));
        // End feed streams first so the gRPC drain does not wait on them.
        feed.stop();
        await cleanups.runAll(log);
      },
    };
  } catch (e) {
    await cleanups.runAll();
    throw e;
  }
}

/**
 * Wiring: builds every adapter from a validated config and starts the
 * listeners and background loops. The only place that knows all concrete
 * types; `mayfly serve` and the end-to-end tests both start brokers here.
 */
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { type LoadedConfig, resolvePath } from '../config/load.js';
import { mayflyError, MayflyError } from '../core/errors.js';
import { systemClock, systemRandom } from '../core/clock.js';
import type { Clock, KeyStore, PolicyEngine, Store } from '../core/ports.js';
import { FileAuditSink } from '../audit/file-sink.js';
import { AUDIT_JWKS_FILE, AUDIT_KEY_FILE, AuditKey, AuditSealer } from '../audit/checkpoint.js';
import { parseTrustBundle } from '../identity/trust-bundle.js';
import { OidcVerifier, type OidcIssuerConfig } from '../identity/oidc.js';
import { issuerConfigFromPreset } from '../identity/oidc-presets.js';
import { CompositeTrustSource, RefreshingTrustSource, StaticTrustSource, allTrustDomainRootsPem, type TrustSource } from '../identity/trust-source.js';
import type { JwsAlg } from '../tokens/jws.js';
import { createLogger, requestId, type Logger } from '../observability/logger.js';
import { Metrics } from '../observability/metrics.js';
import { BuiltinEngine } from '../policy/builtin.js';
import { DecisionPoint } from '../policy/decision-point.js';
import { OpaEngine } from '../policy/opa.js';
import { Authenticator, CallerAuthentication } from '../service/authenticate.js';
import { Authorizer } from '../service/authorize.js';
import { BrokerService } from '../service/broker.js';
import type { ServiceObserver } from '../service/deps.js';
import { RevocationFeed } from '../service/feed.js';
import { KeyAdministration } from '../service/keys.js';
import { FeedSubscriptions } from '../service/subscriptions.js';
import { KeyManager } from '../tokens/keys.js';
import { buildStore } from './build-store.js';
import { openKeyStore } from './keystore.js';
import { startClusterSync, type ClusterSync } from './cluster.js';
import { PostgresStore } from '../store/postgres.js';
import { PostgresKeyStore } from '../tokens/keystore-postgres.js';
import type { EventPublisher } from '../service/deps.js';
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

function splitHostPort(s: string): { host: string; port: number } {
  const i = s.lastIndexOf(':');
  return { host: s.slice(0, i).replace(/^\[|\]$/g, ''), port: Number(s.slice(i + 1)) };
}

function readFile(base: string, p: string, field: string): Buffer {
  const abs = resolvePath(base, p);
  try {
    return readFileSync(abs);
  } catch (e) {
    throw mayflyError('ERR_CONFIG_INVALID', `${field}: cannot read ${abs}: ${(e as Error).message}`, { field });
  }
}

/** Builds and starts a broker. */
export async function startBroker(loaded: LoadedConfig, opts: StartOptions = {}): Promise<RunningBroker> {
  const { config: c, baseDir } = loaded;
  const clock = opts.clock ?? systemClock;
  const log = opts.logger ?? createLogger({ level: c.log.level, base: { broker_id: c.broker_id } });
  const dataDir = resolvePath(baseDir, c.data_dir);
  if (!existsSync(dataDir)) mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const metrics = new Metrics();
  const cleanups: Array<() => unknown> = [];

  const audit = new FileAuditSink({ path: resolvePath(dataDir, c.audit.file), brokerId: c.broker_id, clock, onError: () => metrics.auditWriteErrors.inc() });
  cleanups.push(() => audit.close());
  try {
    // Trust: static bundles and bundle endpoints, one source per trust domain.
    const staticBundles = [];
    const sources: TrustSource[] = [];
    for (const [td, t] of Object.entries(c.trust_domains)) {
      const initial = t.bundle_file ? parseTrustBundle(td, readFile(baseDir, t.bundle_file, `trust_domains.${td}.bundle_file`).toString('utf8')) : undefined;
      if (t.bundle_endpoint) {
        const r = new RefreshingTrustSource({
          trustDomain: td,
          url: t.bundle_endpoint.url,
          ...(t.bundle_endpoint.ca_file ? { caPem: readFile(baseDir, t.bundle_endpoint.ca_file, `trust_domains.${td}.bundle_endpoint.ca_file`).toString('utf8') } : {}),
          ...(t.bundle_endpoint.refresh_seconds ? { refreshIntervalMs: t.bundle_endpoint.refresh_seconds * 1000 } : {}),
          ...(initial ? { initialBundle: initial } : {}),
          clock,
          onError: (e) => log.warn({ trust_domain: td, code: e.code, err: e.message }, 'bundle endpoint refresh failed; serving the last good bundle'),
        });
        await r.start?.();
        cleanups.push(() => r.close());
        sources.push(r);
      } else if (initial) staticBundles.push(initial);
    }
    if (staticBundles.length > 0) sources.push(new StaticTrustSource(staticBundles));
    const trust: TrustSource = new CompositeTrustSource(sources);

    const issuers: OidcIssuerConfig[] = c.oidc.issuers.map((i, idx) => {
      const base = {
        name: i.name,
        audiences: i.audiences,
        allowedAlgs: i.algorithms as JwsAlg[],
        clockSkewSeconds: i.clock_skew_seconds,
        ...(i.max_token_age_seconds ? { maxTokenAgeSeconds: i.max_token_age_seconds } : {}),
        ...(i.subject_claim ? { subjectClaim: i.subject_claim } : {}),
        ...(i.ca_file ? { ca: readFile(baseDir, i.ca_file, `oidc.issuers[${idx}].ca_file`) } : {}),
        jwks: i.jwks_file
          ? { jwksFile: resolvePath(baseDir, i.jwks_file) }
          : i.jwks_uri
            ? { jwksUri: i.jwks_uri }
            : ({ discovery: true } as const),
      };
      return i.preset ? issuerConfigFromPreset(i.preset, { ...base, ...(i.issuer ? { issuer: i.issuer } : {}) }) : { ...base, issuer: i.issuer! };
    });
    const oidc = issuers.length > 0 ? new OidcVerifier(issuers, { clock, minRefreshIntervalMs: c.oidc.jwks_refresh_cooldown_seconds * 1000, backgroundRefresh: c.oidc.jwks_background_refresh, onJwksError: (e, name) => log.warn({ issuer: name, code: e.code, err: e.message }, 'JWKS refresh failed') }) : null;
    if (oidc) cleanups.push(() => oidc.close());

    const builtStore = await buildStore(c, dataDir, { env: opts.env ?? process.env, onStoreError: (m) => log.warn({ err: m }, 'store connection failed'), sqliteCheckpointInWorker: true });
    const store: Store = builtStore.store;
    cleanups.push(() => store.close());
    const coordinator = builtStore.coordinator;
    cleanups.push(() => coordinator.close());
    /** A job that must run on one broker of the cluster per tick (see Coordinator). */
    const exclusive = (job: string, fn: () => Promise<unknown>) => () => coordinator.runExclusive(job, fn);
    if (builtStore.backend === 'postgres') log.info({ store: builtStore.where }, 'store: PostgreSQL');
    const sealer = new AuditSealer(audit, AuditKey.loadOrCreate(resolvePath(dataDir, AUDIT_KEY_FILE), resolvePath(dataDir, AUDIT_JWKS_FILE)), store, clock);
    const cut = await sealer.open();
    if (cut) log.error({ seq: cut.seq, reason: cut.reason }, 'the audit log ends before the head recorded in the store; run `mayfly audit verify`');
    if (c.store.backend === 'memory') log.warn('store.backend is memory: tasks and revocations are lost on restart (dev only)');

    // Policy.
    let engine: PolicyEngine;
    if (c.policy.engine === 'opa') {
      const o = c.policy.opa!;
      const opa = await OpaEngine.load({
        policyFile: resolvePath(baseDir, o.policy_file),
        entrypoint: o.entrypoint,
        ...(o.data_file ? { dataFile: resolvePath(baseDir, o.data_file) } : {}),
        poolSize: o.pool_size,
        memory: { initialPages: o.memory.initial_pages, ...(o.memory.maximum_pages ? { maximumPages: o.memory.maximum_pages } : {}) },
        ...(o.canary_input ? { canaryInput: o.canary_input as never } : {}),
        pollIntervalMs: o.poll_interval_ms,
        debounceMs: o.debounce_ms,
        clock,
        onReload: (ev) => {
          metrics.policyReloads.inc({ outcome: ev.ok ? 'success' : 'failure' });
          audit.write({ event: 'policy.reload', outcome: ev.ok ? 'success' : 'error', revision: ev.revision, reason: ev.error });
          if (ev.ok) log.info({ revision: ev.revision }, 'policy reloaded');
          else log.error({ err: ev.error }, 'policy reload failed; the previous policy keeps serving');
        },
      });
      if (o.watch) cleanups.push(opa.watch());
      engine = opa;
    } else {
      engine = await BuiltinEngine.fromFile(resolvePath(baseDir, c.policy.builtin.rules_file));
    }
    cleanups.push(() => engine.close());
    const decider = new DecisionPoint(engine, { timeoutMs: c.policy.timeout_ms });

    // Keys and the feed.
    const pool = store instanceof PostgresStore ? store.pool : undefined;
    const keyStore: KeyStore = await openKeyStore(c, dataDir, baseDir, opts.env ?? process.env, log, pool);
    cleanups.push(() => keyStore.close());
    let feed: RevocationFeed | null = null;
    // Single broker: events go straight to the feed. Cluster: through the relay, which reads them back from the shared log in cursor order.
    let cluster: ClusterSync | null = null;
    const publish = (ev: Parameters<EventPublisher['publish']>[0]) => (cluster ? cluster.relay.publish(ev) : feed?.publish(ev));
    let lastDelay = '';
    const keys = new KeyManager(
      keyStore,
      clock,
      {
        alg: c.keys.alg,
        rotationPeriodMs: c.keys.rotation_period_seconds * 1000,
        prePublishMs: c.keys.pre_publish_seconds * 1000,
        skewMs: c.clock_skew_seconds * 1000,
        maxPromotionWaitMs: c.keys.max_promotion_wait_seconds * 1000,
        // Shared key set: lifecycle changes under the cluster lock, other replicas follow (docs/clustering.md).
        ...(keyStore instanceof PostgresKeyStore ? { cluster: keyStore } : {}),
      },
      {
        onKeySetChange: (version, json, origin) => {
          if (!feed) return;
          const kids = (JSON.parse(json) as { keys: { kid: string }[] }).keys.map((k) => k.kid);
          feed.noteKeySet({ version, json, kids });
          // The replica that changed the key set records the event; the others deliver it from the shared log.
          if (origin === 'cluster') return;
          void store
            .appendEvent({ kind: 'keyset', at: clock.now(), taskIds: [], jtis: [], kid: version, reason: 'key set changed', coversUntil: clock.now() + c.keys.max_promotion_wait_seconds * 1000 })
            .then((ev) => publish(ev))
            .catch((e) => log.error({ err: (e as Error).message }, 'could not record key-set change'));
        },
        onStateChange: (info, from, origin) => {
          metrics.setKeyState(info.kid, info.state, info.createdAt, clock.now());
          // Audited by the replica that made the change.
          if (origin === 'local') audit.write({ event: from === null ? 'key.create' : 'key.state', outcome: 'success', kid: info.kid, from: from ?? undefined, to: info.state });
        },
        onPromotionDelayed: (kid, laggards, waited) => {
          metrics.keyPromotionBlocked.set(1);
          // Once per next key and set of laggards, not on every lifecycle tick.
          const what = `${kid} ${laggards.join(',')}`;
          if (what === lastDelay) return;
          lastDelay = what;
          audit.write({ event: 'key.promotion_delayed', outcome: 'success', kid, laggards, waited_ms: waited });
          log.warn({ kid, laggards, waited_ms: waited }, 'key promotion waits for feed subscribers to acknowledge the next key');
        },
      },
    );
    await keys.init();
    feed = new RevocationFeed(store, clock, () => keys.jwks(), { heartbeatMs: c.feed.heartbeat_ms, batch: 500, maxTokenTtlMs: c.tokens.max_ttl_seconds * 1000 });
    await feed.start();
    cleanups.push(() => feed!.stop());
    keys.setPromotionGate(feed.gate);
    if (pool && keyStore instanceof PostgresKeyStore) {
      cluster = await startClusterSync({
        replica: c.broker_id,
        pool,
        store,
        feed,
        keys,
        clock,
        log,
        pollIntervalMs: Math.min(1000, c.keys.check_interval_ms),
        ackReportMs: Math.min(1000, c.feed.heartbeat_ms),
      });
      cleanups.push(() => cluster!.stop());
    }
    const events: EventPublisher = { publish };

    const access = new Authorizer({ admins: c.admins, feedSubscribers: c.feed.subscribers });
    const observer: ServiceObserver = {
      taskBegun: () => metrics.tasksBegun.inc(),
      taskEnded: (reason, n) => metrics.tasksEnded.inc({ reason }, n),
      tokenIssued: (aud, ms) => {
        metrics.tokensIssued.inc({ audience: aud });
        metrics.issuanceSeconds.observe(ms / 1000);
      },
      denied: (code) => metrics.requestsDenied.inc({ code }),
      revocation: (kind) => metrics.revocations.inc({ kind }),
      misuse: (kind) => metrics.misuse(kind),
      policyEval: (eng, allow, us) => metrics.observePolicyEval(eng, allow ? 'allow' : 'deny', us / 1e6),
    };
    const service = new BrokerService({
      store,
      access,
      keys,
      policy: decider,
      audit,
      clock,
      random: systemRandom,
      events,
      config: {
        issuer: c.issuer,
        brokerId: c.broker_id,
        clockSkewSeconds: c.clock_skew_seconds,
        tokens: { defaultTtlSeconds: c.tokens.default_ttl_seconds, maxTtlSeconds: c.tokens.max_ttl_seconds },
        tasks: { defaultTtlSeconds: c.tasks.default_ttl_seconds, maxTtlSeconds: c.tasks.max_ttl_seconds, maxDelegationDepth: c.tasks.max_delegation_depth, maxLeaseSeconds: c.tasks.max_lease_seconds },
        admins: c.admins,
      },
      observer,
    });
    const auth = new Authenticator(trust, oidc, service, { issuer: c.issuer, jwtSvidAudiences: c.jwt_svid.audiences, clockSkewSeconds: c.jwt_svid.clock_skew_seconds, clock });
    const authentication = new CallerAuthentication(auth, audit);
    const subscriptions = new FeedSubscriptions({ feed, access, audit, observer });
    const keyAdmin = new KeyAdministration({ keys, store, events, access, audit, clock, observer });

    const tls = {
      cert: readFile(baseDir, c.tls.cert_file, 'tls.cert_file'),
      key: readFile(baseDir, c.tls.key_file, 'tls.key_file'),
      clientCa: Buffer.from(allTrustDomainRootsPem(trust).join('\n')),
    };
    const onError = (where: string, err: MayflyError, rid: string) => {
      if (err.kind === 'internal') log.error({ request_id: rid, where, code: err.code, err: err.message, cause: (err.cause as Error | undefined)?.message }, 'request failed');
      else if (err.kind === 'unauthenticated' || err.kind === 'permission_denied') log.info({ request_id: rid, where, code: err.code, reason: err.message }, 'request denied');
      else log.debug({ request_id: rid, where, code: err.code, reason: err.message }, 'request rejected');
    };

    const health = (): HealthReport => {
      const checks: HealthReport['checks'] = {};
      const now = clock.now();
      checks['keys'] = keys.overdue(now) ? { ok: false, detail: 'active key is overdue for rotation' } : { ok: true };
      const blocked = keys.promotionBlockedSince();
      checks['key_promotion'] = blocked !== null ? { ok: false, detail: `next key promotion blocked for ${Math.round((now - blocked) / 1000)}s by unacknowledged subscribers` } : { ok: true };
      const ah = audit.health();
      checks['audit'] = ah.ok ? { ok: true } : { ok: false, detail: `audit write errors: ${ah.errors}` };
      if (engine instanceof OpaEngine) {
        const h = engine.health();
        checks['policy'] = h.ok ? { ok: true, detail: `revision ${h.revision}` } : { ok: false, detail: `last reload failed: ${h.lastError}; serving revision ${h.revision}` };
      } else checks['policy'] = { ok: true, detail: `builtin revision ${engine.revision()}` };
      // Cluster: without the LISTEN connection, other replicas' revocations and key changes arrive by the 1 s poll only.
      if (cluster) checks['cluster_sync'] = cluster.listening() ? { ok: true, detail: `feed cursor ${cluster.relay.delivered()}` } : { ok: false, detail: 'not listening for other replicas (PostgreSQL LISTEN down): their revocations arrive by polling, up to 1 s late' };
      if (builtStore.health) {
        const sh = builtStore.health();
        checks['store'] = sh.ok ? { ok: true, detail: sh.detail } : { ok: false, detail: sh.detail };
      }
      const failing = !ah.ok;
      const degraded = Object.values(checks).some((x) => !x.ok);
      return { status: failing ? 'failing' : degraded ? 'degraded' : 'ok', checks };
    };

    const g = splitHostPort(opts.grpcListen ?? c.listen.grpc);
    const h = splitHostPort(opts.httpListen ?? c.listen.http);
    const rid = () => requestId(systemRandom);
    const grpc = await startGrpcServer({ broker: service, subscriptions, auth, authentication, audit, clock, tls, requestId: rid, onError }, g.host, g.port);
    cleanups.push(() => grpc.close(2000));
    const http = await startHttpServer(
      {
        broker: service,
        subscriptions,
        keyAdmin,
        keys,
        auth,
        authentication,
        clock,
        tls,
        issuer: c.issuer,
        jwksMaxAgeSeconds: c.keys.jwks_max_age_seconds,
        requestId: rid,
        health,
        metrics: { contentType: metrics.contentType, render: () => metrics.render() },
        onJwksFetch: () => metrics.jwksFetches.inc({ source: 'http' }),
        onError,
      },
      h.host,
      h.port,
    );
    cleanups.push(() => http.close());

    // Background loops: deadlines and leases, key lifecycle, garbage collection, gauges.
    const every = (ms: number, fn: () => Promise<unknown>, what: string) => {
      let running = false;
      const t = setInterval(() => {
        if (running) return;
        running = true;
        fn()
          .catch((e) => log.error({ err: (e as Error).message }, `${what} failed`))
          .finally(() => (running = false));
      }, ms);
      t.unref();
      cleanups.push(() => clearInterval(t));
    };
    every(c.tasks.sweep_interval_ms, exclusive('tasks.sweep', () => service.expireDue()), 'deadline/lease sweep');
    every(c.keys.check_interval_ms, async () => {
      await keys.tick();
      if (keys.promotionBlockedSince() === null) metrics.keyPromotionBlocked.set(0);
      for (const k of keys.list()) metrics.setKeyState(k.kid, k.state, k.createdAt, clock.now());
    }, 'key lifecycle');
    every(c.store.gc_interval_seconds * 1000, exclusive('store.gc', () => store.gc(clock.now(), c.store.gc_grace_seconds * 1000)), 'garbage collection');
    every(c.audit.checkpoint_interval_seconds * 1000, () => sealer.seal('periodic'), 'audit checkpoint');
    every(1000, async () => {
      metrics.feedSubscribers.set(feed!.subscriberCount());
      metrics.feedLagEvents.set(feed!.maxLag());
    }, 'feed gauges');

    audit.write({ event: 'broker.start', outcome: 'success', host: hostname(), grpc: `${g.host}:${grpc.address.port}`, http: `${h.host}:${http.address.port}`, policy_engine: engine.name, policy_revision: engine.revision(), active_kid: keys.active().info.kid });
    let stopped = false;
    return {
      grpc,
      http,
      service,
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
        feed!.stop();
        for (const fn of cleanups.reverse()) {
          try {
            await fn();
          } catch (e) {
            log.warn({ err: (e as Error).message }, 'error during shutdown');
          }
        }
      },
    };
  } catch (e) {
    for (const fn of cleanups.reverse()) {
      try {
        await fn();
      } catch {
        /* already failing */
      }
    }
    throw e;
  }
}

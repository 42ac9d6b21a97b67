/** The use-cases and the one authenticate-and-authorize path in front of them. */
import type { LoadedConfig } from '../config/load.js';
import { systemRandom } from '../core/clock.js';
import type { AuditSink, Clock, Store } from '../core/ports.js';
import type { OidcVerifier } from '../identity/oidc.js';
import type { TrustSource } from '../identity/trust-source.js';
import type { Metrics } from '../observability/metrics.js';
import type { DecisionPoint } from '../policy/decision-point.js';
import { Authenticator, CallerAuthentication } from '../service/authenticate.js';
import { Authorizer } from '../service/authorize.js';
import { BrokerService } from '../service/broker.js';
import type { EventPublisher, ServiceObserver } from '../service/deps.js';
import type { RevocationFeed } from '../service/feed.js';
import { KeyAdministration } from '../service/keys.js';
import { FeedSubscriptions } from '../service/subscriptions.js';
import { PgSubscriberRegistry } from '../store/postgres-cluster.js';
import { PostgresStore } from '../store/postgres.js';
import type { KeyManager } from '../tokens/keys.js';

export interface ServiceParts {
  store: Store;
  keys: KeyManager;
  feed: RevocationFeed;
  events: EventPublisher;
  decider: DecisionPoint;
  trust: TrustSource;
  oidc: OidcVerifier | null;
  audit: AuditSink;
  clock: Clock;
  metrics: Metrics;
}

export interface Services {
  service: BrokerService;
  subscriptions: FeedSubscriptions;
  keyAdmin: KeyAdministration;
  auth: Authenticator;
  authentication: CallerAuthentication;
}

/** The use-cases report to Prometheus through this. */
export function metricsObserver(metrics: Metrics): ServiceObserver {
  return {
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
}

export function buildServices({ config: c }: LoadedConfig, p: ServiceParts): Services {
  const { store, keys, feed, events, audit, clock } = p;
  const access = new Authorizer({ admins: c.admins, feedSubscribers: c.feed.subscribers });
  const observer = metricsObserver(p.metrics);
  const service = new BrokerService({
    store,
    access,
    keys,
    policy: p.decider,
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
  const keyAdmin = new KeyAdministration({ keys, store, events, access, audit, clock, observer });
  // A `keys revoke` whose broker died between the key and its tokens is finished by the next lifecycle run, on any broker.
  keys.setRevocationFinisher((kid) => keyAdmin.finishRevocation(kid));
  const auth = new Authenticator(p.trust, p.oidc, service, { issuer: c.issuer, jwtSvidAudiences: c.jwt_svid.audiences, clockSkewSeconds: c.jwt_svid.clock_skew_seconds, clock });
  return {
    service,
    auth,
    authentication: new CallerAuthentication(auth, audit, c.issuer),
    subscriptions: new FeedSubscriptions({
      feed,
      access,
      audit,
      observer,
      // Several replicas: subscriber names and acknowledgements are shared (docs/clustering.md, promotion gate).
      ...(store instanceof PostgresStore ? { shared: { registry: new PgSubscriberRegistry(store.pool), clock } } : {}),
    }),
    keyAdmin,
  };
}

/**
 * What every HTTP route shares: its dependencies, the one way to learn who
 * is calling (the shared authenticate-and-audit step), and the one way to
 * answer with an error.
 */
import type { FastifyReply, FastifyRequest, HookHandlerDoneFunction } from 'fastify';
import { MayflyError } from '../../core/errors.js';
import type { CallerAuthenticator, Clock } from '../../core/ports.js';
import type { CallerAuthentication, PresentedCredentials } from '../../service/authenticate.js';
import type { BrokerService } from '../../service/broker.js';
import type { CallContext } from '../../service/deps.js';
import type { KeyAdministration } from '../../service/keys.js';
import type { FeedSubscriptions } from '../../service/subscriptions.js';
import type { KeyManager } from '../../tokens/keys.js';
import { publicMessage, toJsonError, toOAuthError } from '../errors.js';
import { peerKey, type PeerRegistry, type TlsMaterial } from '../tls.js';

export interface HealthReport {
  status: 'ok' | 'degraded' | 'failing';
  checks: Record<string, { ok: boolean; detail?: string }>;
}

export interface HttpServerDeps {
  broker: BrokerService;
  subscriptions: FeedSubscriptions;
  keyAdmin: KeyAdministration;
  /** The published key set (JWKS). */
  keys: KeyManager;
  /** Verifies client certificates for the connection cache. */
  auth: CallerAuthenticator;
  /** The shared authenticate-and-audit step. */
  authentication: CallerAuthentication;
  clock: Clock;
  tls: TlsMaterial;
  issuer: string;
  /** Cache-Control max-age of the JWKS; the key lifecycle pre-publishes for at least this long. */
  jwksMaxAgeSeconds: number;
  requestId: () => string;
  health: () => HealthReport;
  metrics?: { contentType: string; render(): Promise<string> };
  onJwksFetch?: () => void;
  onError?: (route: string, err: MayflyError, requestId: string) => void;
}

/** How an error is answered: a plain JSON error, an OAuth error, or an OAuth error where the caller itself failed to authenticate. */
export type ErrorStyle = 'json' | 'oauth' | 'oauth-client';

export interface RouteKit {
  deps: HttpServerDeps;
  /** The peer address of the request, as audit records show it. */
  peer(req: FastifyRequest): string;
  /** The caller by client certificate, else bearer token; failures are audited once. */
  authenticate(req: FastifyRequest, route: string): Promise<CallContext>;
  /** What the request presented: the connection's client certificate and the Authorization header. */
  presented(req: FastifyRequest): PresentedCredentials;
  /** Answers with the error mapped to its wire form. */
  fail(reply: FastifyReply, route: string, req: FastifyRequest, e: unknown, style: ErrorStyle): FastifyReply;
}

export function routeKit(deps: HttpServerDeps, peers: PeerRegistry): RouteKit {
  const peer = (req: FastifyRequest) => peerKey(req.socket);
  return {
    deps,
    peer,
    authenticate: (req, route) => {
      const key = peer(req);
      return deps.authentication.caller(
        { certificate: () => peers.identify(key), authorization: req.headers.authorization },
        { requestId: req.id, peer: key, method: route },
      );
    },
    presented: (req) => {
      const key = peer(req);
      return { certificate: () => peers.identify(key), authorization: req.headers.authorization };
    },
    fail: (reply, route, req, e, style) => {
      const err = MayflyError.from(e);
      deps.onError?.(route, err, req.id);
      reply.header('cache-control', 'no-store');
      if (style === 'oauth-client' && err.kind === 'unauthenticated') {
        // RFC 7662 §2.3 / RFC 7009 §2.1 (RFC 6749 §5.2): the caller itself failed to authenticate.
        return reply.code(401).header('www-authenticate', 'Bearer, TLS').send({ error: 'invalid_client', error_description: publicMessage(err), mayfly_code: err.code });
      }
      if (style !== 'json') {
        const o = toOAuthError(err);
        if (o.status === 401) reply.header('www-authenticate', 'Bearer');
        return reply.code(o.status).send(o.body);
      }
      const j = toJsonError(err);
      return reply.code(j.status).send(j.body);
    },
  };
}

/** A required, non-empty string field of a form or JSON body. */
export function bodyField(body: unknown, k: string): string | undefined {
  const val = (body as Record<string, unknown> | undefined)?.[k];
  return typeof val === 'string' && val !== '' ? val : undefined;
}

/**
 * Route-level preHandler of every OAuth POST endpoint: they take
 * application/x-www-form-urlencoded (RFC 6749 §3.2) and nothing else, so
 * another body type (JSON, none) is refused before the route authenticates
 * anyone. Synchronous, and only on those routes.
 */
export function formBodyOnly(req: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction): void {
  if (isFormBody(req)) {
    done();
    return;
  }
  void refuseNonFormBody(reply);
}

/** True when the request's body is application/x-www-form-urlencoded (parameters such as charset allowed). */
export function isFormBody(req: FastifyRequest): boolean {
  const header = req.headers['content-type'] ?? '';
  const semi = header.indexOf(';');
  return (semi === -1 ? header : header.slice(0, semi)).trim().toLowerCase() === 'application/x-www-form-urlencoded';
}

/** The answer to an OAuth POST whose body is not a form: what formBodyOnly sends. */
export function refuseNonFormBody(reply: FastifyReply): FastifyReply {
  return reply.code(400).header('cache-control', 'no-store').send({ error: 'invalid_request', error_description: 'OAuth endpoints take application/x-www-form-urlencoded bodies (RFC 6749 §3.2)', mayfly_code: 'ERR_INVALID_ARGUMENT' });
}

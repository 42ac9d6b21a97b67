/**
 * Who is calling. `Authenticator` turns what a caller presents into a
 * verified Identity: an X.509-SVID chain from mTLS, or a bearer JWT
 * (JWT-SVID, OIDC token, Mayfly task token), routed by its unverified
 * `iss`/`sub` and then fully verified by the one verifier responsible for it.
 * `CallerAuthentication` is the one authenticate-and-audit step both
 * transports share: the only place that writes `auth.failure`.
 */
import { isMayflyError, mayflyError, MayflyError } from '../core/errors.js';
import type { AuditEntry, AuditSink, CallerAuthenticator, CertificateBinding, Clock } from '../core/ports.js';
import type { Identity } from '../core/types.js';
import { verifyJwtSvid } from '../identity/jwt-svid.js';
import type { OidcVerifier } from '../identity/oidc.js';
import type { TrustSource } from '../identity/trust-source.js';
import { verifyX509Svid } from '../identity/x509-svid.js';
import { decodeJws } from '../tokens/jws.js';
import { tokenHash } from '../tokens/hashes.js';
import type { CallContext } from './deps.js';

export interface AuthenticatorOptions {
  /** The broker's own issuer: bearer tokens with this `iss` are task tokens. */
  issuer: string;
  /** Audiences a JWT-SVID must carry to be accepted here. */
  jwtSvidAudiences: string[];
  clockSkewSeconds: number;
  clock: Clock;
}

export class Authenticator implements CallerAuthenticator {
  constructor(
    private readonly trust: TrustSource,
    private readonly oidc: OidcVerifier | null,
    private readonly taskTokens: { authenticateTaskToken(token: string, binding?: CertificateBinding): Promise<Identity> },
    private readonly o: AuthenticatorOptions,
  ) {}

  /** Verifies an X.509-SVID chain (leaf first) against the bundle of its own trust domain. */
  fromCertificate(chainDer: Buffer[]): Identity {
    const svid = verifyX509Svid(chainDer, this.trust, { now: this.o.clock.now() });
    return {
      kind: 'spiffe',
      id: svid.spiffeId,
      trustDomain: svid.trustDomain,
      method: 'x509-svid',
      claims: {},
      certThumbprint: svid.certThumbprint,
      credentialExpiresAt: svid.notAfter,
      source: svid.trustDomain,
    };
  }

  /** Verifies a bearer JWT with the verifier its issuer calls for. */
  async fromBearer(token: string, binding?: CertificateBinding): Promise<Identity> {
    // An OIDC token verified before is routed by the issuer it verified under, without decoding it again; oidc.verify checks it again.
    const known = this.oidc?.knownIssuer(token, this.o.clock.now());
    if (known !== undefined && known !== this.o.issuer) return this.oidc!.verify(token, this.o.clock.now());
    const { payload } = decodeJws(token);
    const iss = payload['iss'];
    const sub = payload['sub'];
    if (iss === this.o.issuer) return this.taskTokens.authenticateTaskToken(token, binding);
    if (typeof iss === 'string' && this.oidc) {
      try {
        return await this.oidc.verify(token, this.o.clock.now());
      } catch (e) {
        // Not a configured OIDC issuer: it may still be a JWT-SVID (SPIRE may set iss).
        if (!isMayflyError(e, 'ERR_ISSUER_UNKNOWN') || !(typeof sub === 'string' && sub.startsWith('spiffe://'))) throw e;
      }
    }
    if (typeof sub === 'string' && sub.startsWith('spiffe://')) {
      return verifyJwtSvid(token, this.trust, { audience: this.o.jwtSvidAudiences, now: this.o.clock.now(), clockSkewSeconds: this.o.clockSkewSeconds });
    }
    throw mayflyError('ERR_ISSUER_UNKNOWN', typeof iss === 'string' ? `issuer ${JSON.stringify(iss.slice(0, 200))} is not a trusted issuer` : 'token has no issuer and is not a JWT-SVID');
  }
}

/** The unverified `iss` of a compact JWT, or undefined when it is not one. */
function jwtIssuer(token: string): unknown {
  try {
    return decodeJws(token).payload['iss'];
  } catch {
    return undefined;
  }
}

/** Extracts the bearer token from an Authorization header (or gRPC metadata) value. */
export function bearerFrom(header: string | undefined): string | undefined {
  if (!header) return undefined;
  const m = /^Bearer\s+([A-Za-z0-9._~+/=-]+)\s*$/i.exec(header);
  if (!m) throw mayflyError('ERR_UNAUTHENTICATED', 'authorization must be "Bearer <token>"');
  return m[1];
}

/** Where a call came from, for the context and the audit record. */
export interface CallOrigin {
  requestId: string;
  peer?: string;
  /** The RPC or route name. */
  method: string;
}

/** What the transport received: the connection's certificate identity, and the authorization value. */
export interface PresentedCredentials {
  /**
   * Identity of the connection's client certificate (the transport caches it
   * per connection), null when the connection has none. Throws MayflyError
   * when the certificate does not verify.
   */
  certificate?: () => Identity | null;
  /** The Authorization header or metadata value, as received. */
  authorization?: string;
}

/** The authenticate-and-audit step shared by every transport. */
export class CallerAuthentication {
  constructor(
    private readonly auth: CallerAuthenticator,
    private readonly audit: AuditSink,
    /** The broker's issuer: a bearer with this `iss` is a task token. */
    private readonly taskTokenIssuer: string,
  ) {}

  /**
   * The caller by client certificate, else by bearer token. A Mayfly task
   * token as bearer is the credential even on a connection with a client
   * certificate: the certificate is then its proof of possession (RFC 8705).
   */
  async caller(presented: PresentedCredentials, origin: CallOrigin): Promise<CallContext> {
    try {
      const token = bearerFrom(presented.authorization);
      if (token !== undefined && this.isTaskToken(token)) {
        return this.context(await this.auth.fromBearer(token, this.binding(presented)), origin);
      }
      const fromCert = presented.certificate?.() ?? null;
      if (fromCert) return this.context(fromCert, origin);
      if (!token) throw mayflyError('ERR_UNAUTHENTICATED', 'no client certificate or bearer token was presented');
      return this.context(await this.auth.fromBearer(token), origin);
    } catch (e) {
      throw this.failed(e, origin, {});
    }
  }

  /**
   * The subject of a token exchange (RFC 8693): the subject token is the
   * credential. A malformed one is an invalid grant, not a bad request.
   */
  async subject(subjectToken: string, origin: CallOrigin, presented: PresentedCredentials = {}): Promise<CallContext> {
    try {
      return this.context(await this.auth.fromBearer(subjectToken, this.binding(presented)), origin);
    } catch (e) {
      const err = this.failed(e, origin, { token_sha256: tokenHash(subjectToken) });
      throw err.kind === 'invalid_argument' ? mayflyError('ERR_JWT_INVALID', err.message) : err;
    }
  }

  /** True for a token this broker issued (routing only: the token is verified by fromBearer). */
  private isTaskToken(token: string): boolean {
    return jwtIssuer(token) === this.taskTokenIssuer;
  }

  /** The client certificate on the connection as proof of possession; a certificate that does not verify binds nothing. */
  private binding(presented: PresentedCredentials): CertificateBinding {
    try {
      const cert = presented.certificate?.() ?? null;
      return cert?.certThumbprint !== undefined ? { certThumbprint: cert.certThumbprint } : {};
    } catch (e) {
      return { certificateError: MayflyError.from(e).message };
    }
  }

  private context(identity: Identity, origin: CallOrigin): CallContext {
    return { identity, requestId: origin.requestId, ...(origin.peer !== undefined ? { peer: origin.peer } : {}) };
  }

  private failed(e: unknown, origin: CallOrigin, extra: Partial<AuditEntry>): MayflyError {
    const err = MayflyError.from(e);
    this.audit.write({ event: 'auth.failure', outcome: 'denied', request_id: origin.requestId, peer: origin.peer, method: origin.method, code: err.code, reason: err.message, ...extra });
    return err;
  }
}

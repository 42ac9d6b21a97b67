/**
 * Turns what a caller presents into a verified Identity: an X.509-SVID chain
 * from mTLS, or a bearer JWT (JWT-SVID, OIDC token, Mayfly task token),
 * routed by its unverified `iss`/`sub` and then fully verified by the one
 * verifier responsible for it.
 */
import { isMayflyError, mayflyError } from '../core/errors.js';
import type { Clock } from '../core/ports.js';
import type { Identity } from '../core/types.js';
import { verifyJwtSvid } from '../identity/jwt-svid.js';
import type { OidcVerifier } from '../identity/oidc.js';
import type { TrustSource } from '../identity/trust-source.js';
import { verifyX509Svid } from '../identity/x509-svid.js';
import { decodeJws } from '../tokens/jws.js';
import type { CallerAuthenticator } from '../transport/tls.js';

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
    private readonly taskTokens: { authenticateTaskToken(token: string): Promise<Identity> },
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
  async fromBearer(token: string): Promise<Identity> {
    const { payload } = decodeJws(token);
    const iss = payload['iss'];
    const sub = payload['sub'];
    if (iss === this.o.issuer) return this.taskTokens.authenticateTaskToken(token);
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

/**
 * Test-only OIDC issuer that mints GitHub-Actions-shaped tokens with keys
 * generated at test time and publishes them through a JwksServer.
 */
import { createPublicKey, generateKeyPairSync, randomUUID, type KeyObject } from 'node:crypto';
import { githubActionsClaims } from '../../src/cli/dev-oidc-issuer.js';
import { signCompact, type JwsHeader } from '../../src/tokens/jws.js';
import { JwksServer, type TestCert } from './https-jwks.js';

export type TestAlg = 'ES256' | 'RS256';

/** A signing key of the test issuer. */
export interface TestKey {
  kid: string;
  alg: TestAlg;
  privateKey: KeyObject;
  publicKey: KeyObject;
  /** Public JWK as published (kid, alg, use sig). */
  jwk: Record<string, unknown>;
}

/** Generates an ES256 or RS256 key pair with a public JWK. */
export function makeKey(alg: TestAlg, kid: string = `${alg.toLowerCase()}-${randomUUID().slice(0, 8)}`, rsaBits = 2048): TestKey {
  const { privateKey, publicKey } =
    alg === 'ES256' ? generateKeyPairSync('ec', { namedCurve: 'P-256' }) : generateKeyPairSync('rsa', { modulusLength: rsaBits });
  const jwk = { ...(createPublicKey(privateKey).export({ format: 'jwk' }) as Record<string, unknown>), kid, alg, use: 'sig' };
  return { kid, alg, privateKey, publicKey, jwk };
}

/** A GitHub Actions OIDC claim set (the real claim names), for a token issued at `nowSec` (the dev issuer's shape). */
export function githubClaims(iss: string, aud: string, nowSec: number): Record<string, unknown> {
  return githubActionsClaims(iss, aud, nowSec);
}

/** A test issuer: keys, a JWKS/discovery HTTPS server, and a minting function. */
export class TestIssuer {
  readonly keys = new Map<string, TestKey>();
  readonly server: JwksServer;

  constructor(cert: TestCert) {
    this.server = new JwksServer(cert);
  }

  get issuer(): string {
    return this.server.issuer;
  }

  async start(): Promise<this> {
    await this.server.start();
    return this;
  }

  close(): Promise<void> {
    return this.server.close();
  }

  /** Creates a key; published in the JWKS unless `publish` is false. */
  addKey(alg: TestAlg, options: { kid?: string; publish?: boolean; rsaBits?: number } = {}): TestKey {
    const key = makeKey(alg, options.kid, options.rsaBits);
    this.keys.set(key.kid, key);
    if (options.publish !== false) this.publish(key.kid);
    return key;
  }

  /** Adds a key's JWK to the served JWKS. */
  publish(kid: string): void {
    const k = this.keys.get(kid);
    if (!k) throw new Error(`no key ${kid}`);
    this.server.state.jwks = { keys: [...this.server.state.jwks.keys.filter((j) => j['kid'] !== kid), k.jwk] };
  }

  /** Mints a GitHub-shaped token at `nowMs`, signed with `kid`; `claims` override, `header` extends/overrides. */
  mint(options: { kid: string; nowMs: number; aud?: string; claims?: Record<string, unknown>; header?: Partial<JwsHeader> }): string {
    const k = this.keys.get(options.kid);
    if (!k) throw new Error(`no key ${options.kid}`);
    const payload = { ...githubClaims(this.issuer, options.aud ?? 'mayfly', Math.floor(options.nowMs / 1000)), ...options.claims };
    for (const [name, v] of Object.entries(payload)) if (v === undefined) delete (payload as Record<string, unknown>)[name];
    const header: JwsHeader = { alg: k.alg, typ: 'JWT', kid: k.kid, ...options.header };
    return signCompact(header, payload, k.privateKey);
  }
}

/**
 * Test-only HTTPS server on 127.0.0.1:0 with a self-signed certificate made
 * at test time (openssl CLI), serving OIDC discovery and a JWKS whose
 * behaviour tests control: contents, outage, latency, issuer mismatch.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A self-signed certificate for 127.0.0.1 (PEM). */
export interface TestCert {
  cert: string;
  key: string;
}

/** Generates a fresh self-signed P-256 certificate for IP 127.0.0.1 with the openssl CLI. */
export function makeSelfSignedCert(): TestCert {
  const dir = mkdtempSync(join(tmpdir(), 'mayfly-cert-'));
  try {
    execFileSync(
      'openssl',
      [
        'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
        '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'), '-days', '1',
        '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1',
      ],
      { stdio: 'ignore', timeout: 10_000 },
    );
    return { cert: readFileSync(join(dir, 'cert.pem'), 'utf8'), key: readFileSync(join(dir, 'key.pem'), 'utf8') };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Starts an HTTPS server on 127.0.0.1:0 with `handler`; returns its origin and a closer that never hangs. */
export async function startHttps(
  cert: TestCert,
  handler: (req: IncomingMessage, res: ServerResponse) => void,
): Promise<{ server: Server; origin: string; close(): Promise<void> }> {
  const server = createServer({ cert: cert.cert, key: cert.key }, handler);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    server,
    origin: `https://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** Mutable behaviour of a JwksServer. */
export interface JwksServerState {
  jwks: { keys: Record<string, unknown>[] };
  /** Respond 503 to everything. */
  down: boolean;
  /** Delay every response by this many ms. */
  delayMs: number;
  /** Issuer announced in the discovery document (defaults to the origin). */
  discoveryIssuer: string | undefined;
  cacheControl: string | undefined;
}

/** Discovery + JWKS server for one test issuer. */
export class JwksServer {
  readonly state: JwksServerState = { jwks: { keys: [] }, down: false, delayMs: 0, discoveryIssuer: undefined, cacheControl: undefined };
  /** Requests seen, by path. */
  readonly hits: Record<string, number> = {};
  private closer: (() => Promise<void>) | null = null;
  private timers = new Set<NodeJS.Timeout>();
  origin = '';

  constructor(readonly cert: TestCert) {}

  /** The issuer URL (the server origin). */
  get issuer(): string {
    return this.origin;
  }

  get jwksUri(): string {
    return `${this.origin}/.well-known/jwks`;
  }

  /** Total requests to the JWKS path. */
  get jwksHits(): number {
    return this.hits['/.well-known/jwks'] ?? 0;
  }

  async start(): Promise<this> {
    const started = await startHttps(this.cert, (req, res) => this.handle(req, res));
    this.origin = started.origin;
    this.closer = started.close;
    return this;
  }

  async close(): Promise<void> {
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    await this.closer?.();
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    this.hits[path] = (this.hits[path] ?? 0) + 1;
    const respond = (): void => {
      if (res.destroyed) return;
      if (this.state.down) {
        res.writeHead(503).end('down');
        return;
      }
      let body: unknown;
      if (path === '/.well-known/openid-configuration') {
        body = { issuer: this.state.discoveryIssuer ?? this.origin, jwks_uri: this.jwksUri, id_token_signing_alg_values_supported: ['RS256', 'ES256'] };
      } else if (path === '/.well-known/jwks') {
        body = this.state.jwks;
      } else {
        res.writeHead(404).end();
        return;
      }
      const headers: Record<string, string> = { 'content-type': 'application/json' };
      if (this.state.cacheControl) headers['cache-control'] = this.state.cacheControl;
      res.writeHead(200, headers).end(JSON.stringify(body));
    };
    if (this.state.delayMs > 0) {
      const t = setTimeout(() => {
        this.timers.delete(t);
        respond();
      }, this.state.delayMs);
      this.timers.add(t);
    } else {
      respond();
    }
  }
}

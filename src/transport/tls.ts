/**
 * TLS for both listeners: the broker's certificate, client certificates
 * requested but optional (bearer-token callers connect without one), and
 * SPIFFE validation done by us, not OpenSSL, because the X.509-SVID rules
 * (one URI SAN, per-trust-domain roots) are not expressible as a CA list.
 */
import type { PeerCertificate, DetailedPeerCertificate, TLSSocket } from 'node:tls';
import { mayflyError, MayflyError } from '../core/errors.js';
import type { CallerAuthenticator, Clock } from '../core/ports.js';
import type { Identity } from '../core/types.js';

export interface TlsMaterial {
  cert: Buffer;
  key: Buffer;
  /** PEM roots of all trust domains, advertised in the CertificateRequest. */
  clientCa?: Buffer;
}

/** The client's certificate chain as sent, leaf first, as DER. Empty without a client certificate. */
export function peerChain(socket: TLSSocket): Buffer[] {
  const leaf = socket.getPeerCertificate(true) as DetailedPeerCertificate | PeerCertificate;
  if (!leaf || !leaf.raw) return [];
  const chain: Buffer[] = [];
  const seen = new Set<string>();
  let cur: DetailedPeerCertificate | undefined = leaf as DetailedPeerCertificate;
  while (cur && cur.raw && chain.length < 10) {
    const fp = cur.fingerprint256;
    if (seen.has(fp)) break;
    seen.add(fp);
    chain.push(cur.raw);
    cur = cur.issuerCertificate;
  }
  return chain;
}

interface CachedPeer {
  chain: Buffer[];
  identity?: Identity;
  error?: MayflyError;
  checkedAt: number;
}

/** The key a connection is known by: its peer address, as grpc-js reports it and as audit records show it. */
export function peerKey(socket: { remoteAddress?: string | undefined; remotePort?: number | undefined }): string {
  return `${socket.remoteAddress}:${socket.remotePort}`;
}

/**
 * The per-connection identity cache of both listeners: remembers the client
 * chain of each live TLS connection, keyed by its peer address, and caches
 * the verified identity for a short time so verification is not repeated on
 * every call of a connection (and is repeated when the certificate expires).
 */
export class PeerRegistry {
  private readonly peers = new Map<string, CachedPeer>();

  constructor(
    private readonly auth: CallerAuthenticator,
    private readonly clock: Clock,
    private readonly recheckMs = 30_000,
  ) {}

  /** Registers a new TLS connection. */
  attach(socket: TLSSocket): void {
    const key = peerKey(socket);
    this.peers.set(key, { chain: peerChain(socket), checkedAt: 0 });
    socket.once('close', () => this.peers.delete(key));
  }

  /** Identity of the client certificate on connection `peer`, or null when it sent none (or is not a registered TLS connection). */
  identify(peer: string): Identity | null {
    const auth = this.auth;
    const now = this.clock.now();
    const p = this.peers.get(peer);
    if (!p || p.chain.length === 0) return null;
    const expired = p.identity?.credentialExpiresAt !== undefined && p.identity.credentialExpiresAt <= now;
    if (now - p.checkedAt > this.recheckMs || expired) {
      try {
        p.identity = auth.fromCertificate(p.chain);
        p.error = undefined;
      } catch (e) {
        p.identity = undefined;
        p.error = MayflyError.from(e);
      }
      p.checkedAt = now;
    }
    if (p.error) throw p.error;
    if (!p.identity) throw mayflyError('ERR_SVID_INVALID', 'client certificate could not be verified');
    return p.identity;
  }

  size(): number {
    return this.peers.size;
  }
}

// Relying parties for bench/run.mjs scenario (g), revocation propagation.
// Runs as a forked child: N MayflyVerifier instances, each with its own
// BrokerClient (own gRPC channel, dev relying-party SVID) subscribed to the
// broker's WatchRevocations (default heartbeat and silence limits).
// IPC protocol, as bench/loadgen.mjs:
//   parent -> {id, cmd: 'init', count, issuer, audience, jwksUrl, grpcAddress, ca, cert, key, clientCert}
//             (clientCert: PEM of the certificate the tokens are bound to, presented to every verify())
//   parent -> {id, cmd: 'accept', token}   every verifier must accept the token; then it is "armed"
//   parent -> {id, cmd: 'awaitRevoked', timeoutMs}
//             resolves with {tLast} = process.hrtime.bigint() (as a string) when the LAST
//             verifier has rejected the armed token with ERR_TOKEN_REVOKED, plus
//             {firstArrival, lastArrival}: when the first / last of the revoking feed
//             messages arrived (before the verifier processed it), for a breakdown,
//             {verifyMs}: the N rejecting verify() calls summed, {cpuMs}: this
//             process's CPU from arming to the last rejection
//   child  -> {id, ok: true, result} | {id, ok: false, error}
// Detection: each verifier's feed callback is wrapped; after the verifier has
// processed a feed message (synchronously, as MayflyVerifier does), the
// wrapper calls that verifier's verify(armed token). So the time recorded is
// when the revocation was applied and visible through the public API, with
// no polling delay. Misuse reports are disabled (reportMisuse: false): they
// would send N ReportMisuse calls to the broker in the middle of the
// measurement. CLOCK_MONOTONIC (process.hrtime) is shared by processes on
// one Linux host, so the parent subtracts its own t0.
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { BrokerClient } from '../dist/client/broker-client.js';
import { MayflyVerifier } from '../dist/verifier/index.js';
import { serveIpc } from './child-ipc.mjs';

if (!process.send) {
  console.error('bench/verifiers.mjs is started by bench/run.mjs (it needs an IPC channel)');
  process.exit(2);
}

let verifiers = [];
let clients = [];
/** verify() options: the client certificate the tokens are bound to. */
let verifyOptions = {};
/** The token being watched: {token, rejected: boolean[], left, tLast, error, waiters}. */
let armed = null;

function onMessageFor(i, arrivedAt) {
  const a = armed;
  if (!a || a.rejected[i]) return;
  a.lastArrival[i] = arrivedAt;
  if (a.checking[i]) {
    a.recheck[i] = true; // a message arrived while a check was in flight: check again after it
    return;
  }
  a.checking[i] = true;
  const started = process.hrtime.bigint();
  verifiers[i].verify(a.token, verifyOptions).then(
    () => {
      a.checking[i] = false; // not revoked yet at this verifier: wait for its next feed message
      if (a.recheck[i]) {
        a.recheck[i] = false;
        onMessageFor(i);
      }
    },
    (e) => {
      a.checking[i] = false;
      if (e?.code !== 'ERR_TOKEN_REVOKED') {
        a.error ??= `verifier ${i}: ${e?.code ?? ''} ${e?.message ?? e}`;
        settle(a);
        return;
      }
      const t = process.hrtime.bigint();
      a.rejected[i] = true;
      a.verifyNs += t - started;
      // Arrival of the feed message after which this verifier rejected (before the verifier processed it).
      const arr = a.lastArrival[i];
      if (a.firstArrival === null || arr < a.firstArrival) a.firstArrival = arr;
      if (a.lastArrivalMax === null || arr > a.lastArrivalMax) a.lastArrivalMax = arr;
      if (--a.left === 0) {
        a.tLast = t;
        a.cpu = process.cpuUsage(a.cpu0);
        settle(a);
      }
    },
  );
}

function settle(a) {
  const w = a.waiters;
  a.waiters = [];
  for (const fn of w) fn();
}

const handlers = {
  async init(m) {
    const ca = readFileSync(m.ca);
    const cert = readFileSync(m.cert);
    const key = readFileSync(m.key);
    // The tokens are bound to the workload's certificate, which a relying party sees on its mTLS connection.
    verifyOptions = { clientCertDer: new X509Certificate(readFileSync(m.clientCert)).raw };
    const t0 = performance.now();
    for (let i = 0; i < m.count; i++) {
      const client = new BrokerClient({ address: m.grpcAddress, ca, cert, key, timeoutMs: 10_000 });
      clients.push(client);
      // The verifier only sees the VerifierBrokerClient surface; wrap the feed callback.
      const wrapped = {
        watchRevocations: (req, onEvent, onEnd) =>
          client.watchRevocations(
            req,
            (e) => {
              const arrivedAt = process.hrtime.bigint();
              onEvent(e);
              onMessageFor(i, arrivedAt);
            },
            onEnd,
          ),
        ackKeySet: (s, v) => client.ackKeySet(s, v),
        reportMisuse: (k, t, d) => client.reportMisuse(k, t, d),
        introspect: (t) => client.introspect(t),
      };
      verifiers.push(
        new MayflyVerifier({
          issuer: m.issuer,
          audience: m.audience,
          jwks: { url: m.jwksUrl, ca },
          feed: { client: wrapped, subscriberId: `bench-rp-${i}` },
          reportMisuse: false,
        }),
      );
    }
    await Promise.all(verifiers.map((v) => v.start()));
    const reconnects = verifiers.reduce((s, v) => s + v.stats().reconnects, 0);
    return { verifiers: verifiers.length, startMs: performance.now() - t0, reconnects };
  },

  async accept(m) {
    armed = null;
    await Promise.all(verifiers.map((v) => v.verify(m.token, verifyOptions)));
    armed = { token: m.token, rejected: new Array(verifiers.length).fill(false), checking: new Array(verifiers.length).fill(false), recheck: new Array(verifiers.length).fill(false), lastArrival: new Array(verifiers.length).fill(0n), firstArrival: null, lastArrivalMax: null, verifyNs: 0n, cpu0: process.cpuUsage(), cpu: null, left: verifiers.length, tLast: null, error: null, waiters: [] };
    return { accepted: verifiers.length };
  },

  async awaitRevoked(m) {
    const a = armed;
    if (!a) throw new Error('no token armed');
    if (a.tLast === null && a.error === null) {
      await new Promise((resolve) => {
        const t = setTimeout(resolve, m.timeoutMs ?? 5000);
        a.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    armed = null;
    if (a.error) throw new Error(a.error);
    if (a.tLast === null) throw new Error(`only ${a.rejected.filter(Boolean).length} of ${verifiers.length} verifiers rejected the token within ${m.timeoutMs ?? 5000} ms`);
    return {
      tLast: a.tLast.toString(),
      firstArrival: a.firstArrival.toString(),
      lastArrival: a.lastArrivalMax.toString(),
      /** Sum of the N rejecting verify() calls, ms (each one is a full ES256 verify, then the revocation check). */
      verifyMs: Number(a.verifyNs) / 1e6,
      /** CPU this process used from arming (just before t0) to the last rejection, ms. */
      cpuMs: (a.cpu.user + a.cpu.system) / 1000,
    };
  },

  stats() {
    const s = verifiers.map((v) => v.stats());
    return {
      feedMessages: s.reduce((x, y) => x + y.feedMessages, 0),
      reconnects: s.reduce((x, y) => x + y.reconnects, 0),
      accepted: s.reduce((x, y) => x + y.accepted, 0),
      notSynchronized: s.filter((y) => !y.synchronized).length,
    };
  },

  close() {
    for (const v of verifiers) v.close();
    for (const c of clients) c.close();
    verifiers = [];
    clients = [];
    return {};
  },
};

serveIpc(handlers);

// Load generator for bench/run.mjs. Runs as a forked child process (its own
// core on the 2-core bench machine) and talks to the parent over IPC:
//   parent -> {id, cmd: 'init', ...}   sets up gRPC clients / HTTPS agents
//   parent -> {id, cmd: 'run', scenario, ...}
//   child  -> {id, ok: true, result} | {id, ok: false, error}
// Latency is measured with process.hrtime.bigint() per call. Only calls that
// complete inside the measurement window (after the warm-up) are counted.
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { readFileSync } from 'node:fs';
import { Agent, request } from 'node:https';
import { BrokerClient } from '../dist/client/broker-client.js';
import { serveIpc } from './child-ipc.mjs';

if (!process.send) {
  console.error('bench/loadgen.mjs is started by bench/run.mjs (it needs an IPC channel)');
  process.exit(2);
}

const now = () => process.hrtime.bigint();
const ms = (ns) => Number(ns) / 1e6;
const sleep = (t) => new Promise((r) => setTimeout(r, t));

let clients = [];
let agents = [];
let tasks = [];
let subjectTokens = [];

function percentile(sorted, p) {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

function summarize(lat, count, errors, firstError, windowNs, extra = {}) {
  const sorted = Float64Array.from(lat).sort();
  const seconds = Number(windowNs) / 1e9;
  return {
    count,
    seconds,
    perSecond: count / seconds,
    p50: percentile(sorted, 50),
    p90: percentile(sorted, 90),
    p99: percentile(sorted, 99),
    max: sorted.length ? sorted[sorted.length - 1] : NaN,
    errors,
    firstError,
    ...extra,
  };
}

/** N workers, each keeps one call in flight; counts completions inside [warm-up end, end]. */
async function closedLoop({ concurrency, warmupMs, durationMs }, op) {
  const start = now();
  const t0 = start + BigInt(warmupMs) * 1_000_000n;
  const t1 = t0 + BigInt(durationMs) * 1_000_000n;
  const lat = [];
  let count = 0;
  let errors = 0;
  let firstError = null;
  const worker = async (w) => {
    let i = w;
    while (now() < t1) {
      const s = now();
      try {
        await op(w, i);
      } catch (e) {
        errors++;
        firstError ??= `${e?.code ?? ''} ${e?.message ?? String(e)}`.trim();
        if (errors > 100) return; // loud, not endless
        continue;
      } finally {
        i += concurrency;
      }
      const e = now();
      if (e >= t0 && e <= t1) {
        lat.push(ms(e - s));
        count++;
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, (_, w) => worker(w)));
  return summarize(lat, count, errors, firstError, t1 - t0);
}

/**
 * Open loop at a fixed arrival rate: requests are scheduled every 1/rate s
 * regardless of completions; latency is measured from the SCHEDULED send time
 * (no coordinated omission). Timer granularity is ~1 ms, so arrivals come in
 * small bursts that this latency includes.
 */
async function openLoop({ rate, warmupMs, durationMs, maxOutstanding = 5000 }, op) {
  const start = now();
  const t0 = start + BigInt(warmupMs) * 1_000_000n;
  const t1 = t0 + BigInt(durationMs) * 1_000_000n;
  const interval = 1e9 / rate;
  const lat = [];
  const serviceLat = [];
  let count = 0;
  let errors = 0;
  let firstError = null;
  let outstanding = 0;
  let dropped = 0;
  let sent = 0;
  let all;
  const pending = new Set();
  await new Promise((resolveLoop) => {
    const tick = () => {
      const n = now();
      while (true) {
        const due = start + BigInt(Math.round(sent * interval));
        if (due > n || due >= t1) break;
        const i = sent++;
        if (outstanding >= maxOutstanding) {
          dropped++;
          continue;
        }
        outstanding++;
        const s = now();
        const p = op(i % 1_000_000, i).then(
          () => {
            const e = now();
            if (due >= t0 && e <= t1 + 5_000_000_000n) {
              lat.push(ms(e - due));
              serviceLat.push(ms(e - s));
              count++;
            }
          },
          (err) => {
            errors++;
            firstError ??= `${err?.code ?? ''} ${err?.message ?? String(err)}`.trim();
          },
        ).finally(() => {
          outstanding--;
          pending.delete(p);
        });
        pending.add(p);
      }
      if (n >= t1) resolveLoop();
      else setTimeout(tick, 1);
    };
    tick();
  });
  all = Promise.all([...pending]);
  await all;
  const measuredSent = Math.max(0, Math.round(Number(t1 - t0) / interval));
  const s = summarize(lat, count, errors, firstError, t1 - t0, { rate, dropped, measuredSent });
  const sl = Float64Array.from(serviceLat).sort();
  s.serviceP50 = percentile(sl, 50);
  s.serviceP99 = percentile(sl, 99);
  return s;
}

function post(agent, url, body, headers) {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: 'POST', agent, headers: { 'content-type': 'application/x-www-form-urlencoded', 'content-length': Buffer.byteLength(body), ...headers } }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        if (res.statusCode !== 200) return reject(Object.assign(new Error(`HTTP ${res.statusCode}: ${text.slice(0, 300)}`), { code: 'HTTP' }));
        let json;
        try {
          json = JSON.parse(text);
        } catch {
          return reject(new Error(`not JSON: ${text.slice(0, 200)}`));
        }
        if (typeof json.access_token !== 'string') return reject(new Error(`no access_token: ${text.slice(0, 200)}`));
        resolve(json);
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** GET that must answer 200 with a JSON object (the HTTPS transport floor). */
function get(agent, url) {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: 'GET', agent }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        if (res.statusCode !== 200) return reject(Object.assign(new Error(`HTTP ${res.statusCode}: ${text.slice(0, 300)}`), { code: 'HTTP' }));
        try {
          resolve(JSON.parse(text));
        } catch {
          reject(new Error(`not JSON: ${text.slice(0, 200)}`));
        }
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

// As bench/broker-probe.mjs measures the broker: the histogram holds timer intervals, the delay is that minus the resolution.
const LOOP_RESOLUTION_MS = 5;

const handlers = {
  init(m) {
    for (const c of clients) c.close();
    clients = [];
    if (m.grpc) {
      const ca = readFileSync(m.grpc.ca);
      const cert = readFileSync(m.grpc.cert);
      const key = readFileSync(m.grpc.key);
      for (let i = 0; i < m.grpc.channels; i++) clients.push(new BrokerClient({ address: m.grpc.address, ca, cert, key, timeoutMs: 30_000 }));
    }
    if (m.subjectTokensFile) subjectTokens = JSON.parse(readFileSync(m.subjectTokensFile, 'utf8'));
    return { channels: clients.length, subjectTokens: subjectTokens.length };
  },

  async prepareTasks(m) {
    tasks = [];
    for (let i = 0; i < m.count; i++) {
      const t = await clients[i % clients.length].beginTask({ purpose: `bench open task ${i}`, ttlSeconds: 3600, labels: { bench: 'open' } });
      tasks.push(t.taskId);
    }
    return { tasks: tasks.length };
  },

  /** Mints `count` tokens on the open tasks, `concurrency` in flight; returns them (scenario (h)). */
  async mint(m) {
    const out = new Array(m.count);
    let next = 0;
    const worker = async (w) => {
      for (let i = next++; i < m.count; i = next++) {
        const r = await clients[w % clients.length].issueToken({ taskId: tasks[i % tasks.length], audience: m.audience, scopes: m.scopes, ttlSeconds: m.tokenTtl });
        if (!r.token || r.token.split('.').length !== 3) throw new Error('IssueToken returned no JWT');
        out[i] = r.token;
      }
    };
    await Promise.all(Array.from({ length: m.concurrency }, (_, w) => worker(w)));
    return { tokens: out };
  },

  /** Runs one scenario, with this process's own event-loop delay over it (a late loop here delays sends and completions alike). */
  async run(m) {
    const loop = monitorEventLoopDelay({ resolution: LOOP_RESOLUTION_MS });
    loop.enable();
    try {
      const r = await handlers.scenario(m);
      r.loadgenLoopP99 = Math.max(0, loop.percentile(99) / 1e6 - LOOP_RESOLUTION_MS);
      r.loadgenLoopMax = Math.max(0, loop.max / 1e6 - LOOP_RESOLUTION_MS);
      return r;
    } finally {
      loop.disable();
    }
  },

  async scenario(m) {
    const cl = (w) => clients[w % clients.length];
    const tokenReq = (taskId) => ({ taskId, audience: m.audience, scopes: m.scopes, ttlSeconds: m.tokenTtl });
    const checkToken = (r) => {
      if (!r.token || r.token.split('.').length !== 3) throw new Error('IssueToken returned no JWT');
    };
    switch (m.scenario) {
      case 'ping':
        return closedLoop(m, (w) => cl(w).ping());
      case 'issue':
        return closedLoop(m, async (w, i) => checkToken(await cl(w).issueToken(tokenReq(tasks[i % tasks.length]))));
      case 'pair':
        return closedLoop(m, async (w, i) => {
          const t = await cl(w).beginTask({ purpose: `bench pair ${i}`, ttlSeconds: 600 });
          checkToken(await cl(w).issueToken(tokenReq(t.taskId)));
        });
      case 'issue-open':
        return openLoop(m, async (i) => checkToken(await cl(i).issueToken(tokenReq(tasks[i % tasks.length]))));
      case 'ping-open':
        return openLoop(m, (i) => cl(i).ping());
      case 'exchange':
      case 'http-get':
      case 'peer': {
        for (const a of agents) a.destroy();
        const ca = readFileSync(m.ca);
        const nAgents = m.agents ?? 1;
        let connections = 0;
        agents = Array.from({ length: nAgents }, () => {
          const a = new Agent({ keepAlive: true, maxSockets: Math.ceil(m.concurrency / nAgents), ca, servername: 'localhost' });
          const create = a.createConnection.bind(a);
          a.createConnection = (...args) => {
            connections++;
            return create(...args);
          };
          return a;
        });
        const url = new URL(m.url);
        let op;
        if (m.scenario === 'http-get') {
          op = (w) => get(agents[w % nAgents], url);
        } else if (m.scenario === 'exchange') {
          op = (w, i) =>
            post(
              agents[w % nAgents],
              url,
              new URLSearchParams({
                grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange',
                subject_token: subjectTokens[i % subjectTokens.length],
                subject_token_type: 'urn:ietf:params:oauth:token-type:jwt',
                audience: m.audience,
                scope: m.scopes.join(' '),
              }).toString(),
              {},
            );
        } else {
          const basic = `Basic ${Buffer.from(`${encodeURIComponent(m.clientId)}:${encodeURIComponent(m.clientSecret)}`).toString('base64')}`;
          const body = new URLSearchParams({ grant_type: 'client_credentials', scope: 'read' }).toString();
          op = (w) => post(agents[w % nAgents], url, body, { authorization: basic });
        }
        const r = await closedLoop(m, op);
        r.connections = connections;
        for (const a of agents) a.destroy();
        agents = [];
        return r;
      }
      default:
        throw new Error(`unknown scenario ${m.scenario}`);
    }
  },
};

await sleep(0);
serveIpc(handlers);

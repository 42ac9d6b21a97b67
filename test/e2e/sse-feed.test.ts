/**
 * The revocation feed as server-sent events (GET /v1/revocations), for
 * relying parties that do not speak gRPC: snapshot, live events, resume with
 * Last-Event-ID, and authentication.
 */
import { request, type RequestOptions } from 'node:https';
import type { IncomingMessage } from 'node:http';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestBroker, type TestBroker } from './helpers.js';

interface SseEvent {
  id?: string;
  event: string;
  data: Record<string, unknown>;
}

/** Opens the SSE stream; events are collected until close(). */
function openFeed(tb: TestBroker, opts: { cert?: string; lastEventId?: string } = {}) {
  const events: SseEvent[] = [];
  let res: IncomingMessage | undefined;
  const url = new URL('/v1/revocations', tb.httpUrl);
  const o: RequestOptions = {
    ca: tb.ca,
    headers: { accept: 'text/event-stream', ...(opts.lastEventId ? { 'last-event-id': opts.lastEventId } : {}) },
    ...(opts.cert ? { cert: readFileSync(join(tb.dir, `${opts.cert}.pem`)), key: readFileSync(join(tb.dir, `${opts.cert}.key`)) } : {}),
  };
  const ready = new Promise<number>((resolve, reject) => {
    const req = request(url, o, (r) => {
      res = r;
      let buf = '';
      r.setEncoding('utf8');
      r.on('data', (chunk: string) => {
        buf += chunk;
        let i: number;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const e: Partial<SseEvent> = {};
          for (const line of block.split('\n')) {
            if (line.startsWith('id: ')) e.id = line.slice(4);
            else if (line.startsWith('event: ')) e.event = line.slice(7);
            else if (line.startsWith('data: ')) e.data = JSON.parse(line.slice(6)) as Record<string, unknown>;
          }
          if (e.event) events.push(e as SseEvent);
        }
      });
      resolve(r.statusCode ?? 0);
    });
    req.on('error', reject);
    req.end();
  });
  return { events, ready, close: () => res?.destroy() };
}

const until = async (cond: () => boolean, ms = 3000) => {
  const t0 = Date.now();
  while (!cond() && Date.now() - t0 < ms) await new Promise((r) => setTimeout(r, 20));
  return cond();
};

describe('revocation feed over server-sent events', () => {
  let tb: TestBroker;
  beforeAll(async () => {
    tb = await startTestBroker();
  });
  afterAll(async () => {
    await tb?.stop();
  });

  it('needs an authenticated caller', async () => {
    const feed = openFeed(tb);
    expect(await feed.ready).toBe(401);
    feed.close();
  });

  it('sends a snapshot, then live task revocations; resumes from Last-Event-ID without losing any', async () => {
    const workload = tb.client();
    const feed = openFeed(tb, { cert: 'relying-party' });
    expect(await feed.ready).toBe(200);
    expect(await until(() => feed.events.some((e) => e.event === 'snapshot'))).toBe(true);
    expect(feed.events[0]!.data).toMatchObject({ kind: 'snapshot', reason: 'initial' });

    const t1 = await workload.beginTask({ purpose: 'sse 1' });
    await workload.completeTask(t1.taskId);
    expect(await until(() => feed.events.some((e) => e.event === 'task' && (e.data['taskIds'] as string[]).includes(t1.taskId)))).toBe(true);
    const seen = feed.events.filter((e) => e.event === 'task').at(-1)!;
    expect(Number(seen.id)).toBe(seen.data['cursor']);
    expect(seen.data['coversUntil']).toBeGreaterThan(Date.now());
    feed.close();

    // Revoked while the relying party is away...
    const t2 = await workload.beginTask({ purpose: 'sse 2' });
    await workload.completeTask(t2.taskId);
    // ...and replayed when it comes back with its last cursor, followed by the end-of-replay key set.
    const again = openFeed(tb, { cert: 'relying-party', lastEventId: seen.id! });
    expect(await again.ready).toBe(200);
    expect(await until(() => again.events.some((e) => e.event === 'keyset' && e.data['reason'] === 'current'))).toBe(true);
    const replayed = again.events.filter((e) => e.event === 'task').flatMap((e) => e.data['taskIds'] as string[]);
    expect(replayed).toContain(t2.taskId);
    expect(replayed).not.toContain(t1.taskId);
    again.close();
  });
});

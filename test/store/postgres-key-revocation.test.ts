/**
 * Finishing a key revocation from two brokers at once (two PostgresStore
 * instances, each with its own pool, so nothing in one process serialises
 * them): the revocation is announced once, whoever gets there first, also
 * when the command's own revokeTokensByKid is one of the racers.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PostgresStore } from '../../src/store/postgres.js';
import { task, token } from '../contracts/store.contract.js';
import { freshDatabase } from '../helpers/postgres.js';

const T0 = Date.UTC(2026, 0, 1);
const MIN = 60_000;

let a: PostgresStore;
let b: PostgresStore;

beforeAll(async () => {
  const url = await freshDatabase('mayfly_keyrev');
  [a, b] = await Promise.all([PostgresStore.open({ url }), PostgresStore.open({ url })]);
  await a.createTask(task('t', { expiresAt: T0 + 60 * MIN }));
});
afterAll(async () => {
  await a?.close();
  await b?.close();
});

describe('finishKeyRevocation on two brokers', () => {
  it('announces each key once when both brokers finish it at the same moment', async () => {
    for (let round = 0; round < 10; round++) {
      const kid = `k${round}`;
      for (let i = 0; i < 4; i++) await a.recordToken(token(`${kid}-${i}`, 't', { kid, expiresAt: T0 + 30 * MIN }));
      const now = T0 + MIN + round;
      const results = await Promise.all([a, b, a, b].map((s) => s.finishKeyRevocation(kid, 'signing key revoked', now)));
      const done = results.filter((e) => e !== null);
      expect(done).toHaveLength(1);
      expect([...done[0]!.jtis].sort()).toEqual([0, 1, 2, 3].map((i) => `${kid}-${i}`));
      expect((await a.eventsSince(0, 1000)).filter((e) => e.kid === kid)).toHaveLength(1);
    }
  });

  it('a lifecycle run racing the command on another broker adds no event once the command revoked the tokens', async () => {
    for (let round = 0; round < 10; round++) {
      const kid = `c${round}`;
      for (let i = 0; i < 4; i++) await a.recordToken(token(`${kid}-${i}`, 't', { kid, expiresAt: T0 + 30 * MIN }));
      const now = T0 + MIN + round;
      const [cmd, run] = await Promise.all([a.revokeTokensByKid(kid, 'signing key revoked', now), b.finishKeyRevocation(kid, 'signing key revoked', now)]);
      const events = (await a.eventsSince(0, 1000)).filter((e) => e.kid === kid);
      // The command always announces; the run announces only if it came first, and then the command found nothing left.
      expect(events).toHaveLength(run === null ? 1 : 2);
      if (run !== null) expect(cmd.jtis).toEqual([]);
      expect([...cmd.jtis, ...(run?.jtis ?? [])].sort()).toEqual([0, 1, 2, 3].map((i) => `${kid}-${i}`));
    }
  });
});

import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { inject } from 'vitest';
import { LocalCoordinator } from '../../src/store/local-coordinator.js';
import { PgCoordinator } from '../../src/store/postgres-coordinator.js';
import { runCoordinatorContract } from '../contracts/coordinator.contract.js';
import { freshDatabase } from '../helpers/postgres.js';

runCoordinatorContract('LocalCoordinator', { member: () => new LocalCoordinator(), shared: false });

// Each test file run gets its own database; members of one cluster share it.
const names = new WeakMap<object, string>();
let dbUrl: Promise<string> | undefined;
runCoordinatorContract('PgCoordinator', {
  shared: true,
  member: async () => {
    dbUrl ??= freshDatabase('mayfly_coord');
    const applicationName = `mayfly-coord-${randomBytes(4).toString('hex')}`;
    const c = new PgCoordinator({ url: await dbUrl, applicationName });
    names.set(c, applicationName);
    return c;
  },
  // What a kill -9 does to the broker's session: the server ends it.
  kill: async (c) => {
    const admin = new pg.Client({ connectionString: inject('pgAdminUrl') });
    await admin.connect();
    try {
      const { rows } = await admin.query<{ ok: boolean }>('SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity WHERE application_name = $1', [names.get(c)]);
      if (rows.length !== 1 || !rows[0]!.ok) throw new Error('coordinator session not found');
    } finally {
      await admin.end();
    }
  },
});

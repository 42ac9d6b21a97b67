import { PostgresStore } from '../../src/store/postgres.js';
import { runStoreContract } from '../contracts/store.contract.js';
import { freshDatabase } from '../helpers/postgres.js';

// Real PostgreSQL (started by the test run, see test/helpers/postgres.ts), one database per test.
runStoreContract('PostgresStore', async () => PostgresStore.open({ url: await freshDatabase('mayfly_contract') }), {
  endOnlyThis: async (store, id, at) => {
    await (store as PostgresStore).pool.query(`UPDATE tasks SET status = 'completed', ended_at = $1, end_reason = 'done' WHERE id = $2`, [at, id]);
  },
});

import { PostgresStore } from '../../src/store/postgres.js';
import { runStoreContract } from '../contracts/store.contract.js';
import { freshDatabase } from '../helpers/postgres.js';

// Real PostgreSQL (started by the test run, see test/helpers/postgres.ts), one database per test.
runStoreContract('PostgresStore', async () => PostgresStore.open({ url: await freshDatabase('mayfly_contract') }));

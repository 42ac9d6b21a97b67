/**
 * vitest globalSetup: one PostgreSQL cluster for the whole run (see
 * test/helpers/postgres.ts), stopped and removed at the end. Test files get
 * its superuser URL with `inject('pgAdminUrl')` and make their own database
 * (`createDatabase`), so files running in parallel never share state.
 * MAYFLY_TEST_PG_URL uses an existing server instead of starting one.
 */
import type { TestProject } from 'vitest/node';
import { startPgCluster } from '../helpers/pg-cluster.mjs';

declare module 'vitest' {
  export interface ProvidedContext {
    pgAdminUrl: string;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const external = process.env['MAYFLY_TEST_PG_URL'];
  if (external) {
    project.provide('pgAdminUrl', external);
    return async () => {};
  }
  const cluster = await startPgCluster();
  project.provide('pgAdminUrl', cluster.url);
  return () => cluster.destroy();
}

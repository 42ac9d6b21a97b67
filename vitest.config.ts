import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    pool: 'forks',
    // Two cores on CI machines: keep parallelism modest so socket tests are not starved.
    maxWorkers: 2,
    reporters: ['default', './test/support/summary-reporter.ts'],
    // One real PostgreSQL for the run (test/helpers/postgres.ts); each file makes its own database.
    globalSetup: ['./test/support/postgres-setup.ts'],
  },
});

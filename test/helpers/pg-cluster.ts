/** Temporary: a PostgreSQL URL for tests (replaced by the shared harness). */
export interface TestPostgres {
  url: string;
  release(): Promise<void>;
}
export async function testPostgres(): Promise<TestPostgres> {
  const url = process.env['MAYFLY_TEST_PG_URL'];
  if (!url) throw new Error('MAYFLY_TEST_PG_URL not set');
  return { url, release: async () => undefined };
}

/** Types of pg-cluster.mjs (plain JS so bench/ can use it as well). */
export interface PgBinaries {
  initdb: string;
  postgres: string;
}

/** One running PostgreSQL cluster in a temp dir. */
export interface PgCluster {
  /** Superuser URL (with password) of the `postgres` database. */
  readonly url: string;
  readonly port: number;
  readonly password: string;
  /** PID of the postmaster while it runs. */
  pid(): number | undefined;
  /** Fast shutdown (SIGINT): aborts sessions, waits for the postmaster to exit. Keeps the data. */
  stop(): Promise<void>;
  /** SIGKILLs the postmaster (a crash; its backends exit on their own). Keeps the data. */
  kill(): Promise<void>;
  /** Starts the server again on the same port with the same data. */
  start(): Promise<void>;
  /** Stops the server (if running) and removes its directory. */
  destroy(): Promise<void>;
}

export function pgBinaries(): Promise<PgBinaries>;
export function startPgCluster(options?: { fsync?: boolean }): Promise<PgCluster>;

/**
 * PostgreSQL schema migrations, applied in order at startup (and by
 * `mayfly db migrate`) under an advisory lock; each runs in its own
 * transaction together with its row in mayfly_schema_migrations. Never edit
 * or reorder a released entry: append a new one with the next version.
 *
 * Kept as a TypeScript array (not .sql files) so they ship inside dist/ with
 * the code that expects them.
 */
export interface PgMigration {
  version: number;
  name: string;
  sql: string;
}

export const PG_MIGRATIONS: readonly PgMigration[] = [
  {
    version: 1,
    name: 'tasks, tokens, revocation events, audit heads',
    sql: `
      CREATE TABLE tasks (
        id               text PRIMARY KEY,
        owner            text NOT NULL,
        owner_kind       text NOT NULL,
        purpose          text NOT NULL,
        labels           jsonb NOT NULL,
        created_at       bigint NOT NULL,
        expires_at       bigint NOT NULL,
        lease_expires_at bigint,
        status           text NOT NULL,
        ended_at         bigint,
        end_reason       text,
        parent_id        text,
        root_id          text NOT NULL,
        depth            integer NOT NULL,
        scope_ceiling    jsonb,
        actors           jsonb NOT NULL,
        tokens_issued    integer NOT NULL DEFAULT 0
      );
      CREATE INDEX tasks_parent ON tasks (parent_id) WHERE parent_id IS NOT NULL;
      CREATE INDEX tasks_owner_active ON tasks (owner) WHERE status = 'active';
      CREATE INDEX tasks_due_deadline ON tasks (expires_at) WHERE status = 'active';
      CREATE INDEX tasks_due_lease ON tasks (lease_expires_at) WHERE status = 'active' AND lease_expires_at IS NOT NULL;
      CREATE INDEX tasks_expires ON tasks (expires_at);

      CREATE TABLE tokens (
        jti             text PRIMARY KEY,
        task_id         text NOT NULL,
        kid             text NOT NULL,
        sub             text NOT NULL,
        audience        text NOT NULL,
        scopes          jsonb NOT NULL,
        issued_at       bigint NOT NULL,
        expires_at      bigint NOT NULL,
        cert_thumbprint text,
        single_use      boolean NOT NULL,
        tool            text,
        args_digest     text,
        revoked_at      bigint
      );
      CREATE INDEX tokens_task ON tokens (task_id);
      CREATE INDEX tokens_kid_expires ON tokens (kid, expires_at);
      CREATE INDEX tokens_revoked ON tokens (expires_at) WHERE revoked_at IS NOT NULL;

      -- The revocation feed. The cursor is not a sequence: sequences hand out
      -- numbers at INSERT time, and transactions commit in another order, so a
      -- reader could see cursor 8 before 7 commits and skip 7 for good. Every
      -- event instead takes the next cursor from the single row below,
      -- incrementing it inside its own transaction, as its last statement
      -- before COMMIT. The row lock is held until COMMIT, so the next writer
      -- waits: cursors become visible exactly in cursor order, without gaps
      -- (a rolled-back event gives its number back). docs/revocation-cursors.md.
      CREATE TABLE event_cursor (
        id     integer PRIMARY KEY CHECK (id = 1),
        latest bigint NOT NULL,
        pruned boolean NOT NULL
      );
      INSERT INTO event_cursor (id, latest, pruned) VALUES (1, 0, false);

      CREATE TABLE events (
        cursor       bigint PRIMARY KEY,
        kind         text NOT NULL,
        at           bigint NOT NULL,
        task_ids     jsonb NOT NULL,
        jtis         jsonb NOT NULL,
        kid          text,
        reason       text NOT NULL,
        covers_until bigint NOT NULL
      );
      CREATE INDEX events_covers ON events (covers_until);

      -- The head of each broker's audit chain (checkpoints), one row per broker_id.
      CREATE TABLE audit_heads (
        broker_id text PRIMARY KEY,
        seq       bigint NOT NULL,
        hash      text NOT NULL,
        at        bigint NOT NULL
      );
    `,
  },
  {
    version: 2,
    name: 'cluster: shared signing keys, feed acknowledgements of every replica',
    sql: `
      -- One row per signing key of the cluster (tokens/keystore-postgres.ts):
      -- the private key sealed under the KEK, which stays outside the database.
      CREATE TABLE signing_keys (
        kid                   text PRIMARY KEY,
        alg                   text NOT NULL,
        state                 text NOT NULL,
        created_at            bigint NOT NULL,
        state_since           bigint NOT NULL,
        last_token_expires_at bigint,
        public_jwk            jsonb NOT NULL,
        kek_id                text NOT NULL,
        private_key           jsonb NOT NULL,
        mac                   text NOT NULL
      );
      -- Live feed subscribers of each replica and the key set each acknowledged
      -- (store/postgres-cluster.ts): the key promotion gate reads every replica's.
      CREATE TABLE feed_acks (
        replica     text NOT NULL,
        subscriber  text NOT NULL,
        kids        jsonb NOT NULL,
        reported_at bigint NOT NULL,
        PRIMARY KEY (replica, subscriber)
      );
    `,
  },
  {
    version: 3,
    name: 'the identity that began each task',
    // Task-token narrowing is judged as the identity that began the task (issuer, trust domain, claims).
    sql: `ALTER TABLE tasks ADD COLUMN owner_identity jsonb;`,
  },
  {
    version: 4,
    name: 'cluster: pending key rotation requests',
    // `keys rotate` on one replica is completed by whichever replica runs the key lifecycle (tokens/keystore-postgres.ts).
    sql: `
      CREATE TABLE key_rotation_requests (
        kid          text PRIMARY KEY,
        requested_at bigint NOT NULL
      );
    `,
  },
  {
    version: 5,
    name: 'cluster: feed subscriber names and acknowledgements shared by every replica',
    // A verifier's stream and its AckKeySet calls may reach different replicas (store/postgres-cluster.ts).
    sql: `
      CREATE TABLE feed_subscribers (
        subscriber text PRIMARY KEY,
        identity   text NOT NULL,
        kids       jsonb,
        acked_at   bigint
      );
    `,
  },
];

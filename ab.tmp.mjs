import { mkdtempSync } from 'node:fs'; import { tmpdir } from 'node:os'; import { join } from 'node:path';
const root = process.argv[2];
const { FileAuditSink } = await import(join(root, 'dist/audit/file-sink.js'));
const { chainRecord, serializeRecord, redact } = await import(join(root, 'dist/audit/record.js'));
const { canonicalJson } = await import(join(root, 'dist/core/canonical-json.js'));
const sink = new FileAuditSink({ path: join(mkdtempSync(join(tmpdir(), 'ab-')), 'a.log'), brokerId: 'b' });
const entry = () => ({ event: 'token.issue', outcome: 'success', request_id: 'req_0123456789abcdef', identity: { kind: 'spiffe', id: 'spiffe://example.org/demo/workload', method: 'x509-svid', cert_sha256: 'AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_abcde' }, peer: 'ipv4:127.0.0.1:45678', task_id: 'tsk_0123456789abcdefghij', audience: 'demo-api', scopes: ['read'], token_id: 'tok_0123456789abcdefghij', expires_at: 1764790000, kid: 'k_abcdef', decision: { engine: 'builtin', revision: 'sha256:' + 'a'.repeat(64), source: 'demo', input_sha256: 'b'.repeat(64), allow: true, reasons: ['rule demo'], latency_us: 4 } });
function t(name, f, n) { for (let i = 0; i < 5000; i++) f(); const c0 = process.cpuUsage(); for (let i = 0; i < n; i++) f(); const c = process.cpuUsage(c0); console.log(name, ((c.user + c.system) / n).toFixed(2), 'µs'); }
const head = { seq: 1, hash: 'c'.repeat(64) };
const at = { now: Date.now(), brokerId: 'b' };
for (let k = 0; k < 2; k++) {
t('redact', () => redact(entry()), 100000);
t('chainRecord', () => chainRecord(redact(entry()), head, at), 100000);
const rec = chainRecord(redact(entry()), head, at);
t('serialize', () => serializeRecord(rec), 100000);
t('canonical', () => canonicalJson(rec), 100000);
t('entry()', () => entry(), 100000);
}
let n = 0;
async function batch(k) { for (let r = 0; r < k; r++) { const ps = []; for (let i = 0; i < 64; i++) ps.push(sink.writeConfirmed(entry())); await Promise.all(ps); } }
await batch(100);
for (let k = 0; k < 4; k++) { const c0 = process.cpuUsage(); await batch(300); const c = process.cpuUsage(c0); console.log('writeConfirmed per record', ((c.user + c.system) / (300 * 64)).toFixed(2), 'µs'); }
await sink.close();

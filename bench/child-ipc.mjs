// The request/response loop shared by the bench's forked children (loadgen,
// verifiers): the parent sends {id, cmd, ...}, the child answers {id, ok,
// result | error}; id 0 announces readiness; losing the parent ends the child.
export function serveIpc(handlers) {
  process.on('message', async (m) => {
    try {
      const fn = handlers[m.cmd];
      if (!fn) throw new Error(`unknown command ${m.cmd}`);
      const result = await fn(m);
      process.send({ id: m.id, ok: true, result });
    } catch (e) {
      process.send({ id: m.id, ok: false, error: `${e?.code ?? ''} ${e?.stack ?? e?.message ?? String(e)}`.trim() });
    }
  });
  process.on('disconnect', () => process.exit(0));
  process.send({ id: 0, ok: true, result: 'ready' });
}

import type { TaskRecord } from '../../src/core/types.js';
import { MemoryStore } from '../../src/store/memory.js';
import { runStoreContract } from '../contracts/store.contract.js';

runStoreContract('MemoryStore', () => new MemoryStore(), {
  endOnlyThis: async (store, id, at) => {
    const t = (store as unknown as { tasks: Map<string, TaskRecord> }).tasks.get(id)!;
    Object.assign(t, { status: 'completed', endedAt: at, endReason: 'done' });
  },
});

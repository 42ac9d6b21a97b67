import { MemoryStore } from '../../src/store/memory.js';
import { runStoreContract } from '../contracts/store.contract.js';

runStoreContract('MemoryStore', () => new MemoryStore());

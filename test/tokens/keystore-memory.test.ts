import { MemoryKeyStore } from '../../src/tokens/keystore-memory.js';
import { runKeyStoreContract } from '../contracts/keystore.contract.js';

runKeyStoreContract('MemoryKeyStore', () => ({ open: async () => new MemoryKeyStore() }));

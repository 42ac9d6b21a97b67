export * from './record.js';
export * from './chain.js';
export * from './file-sink.js';
export * from './memory-sink.js';
export * from './verify-chain.js';
export * from './checkpoint.js';

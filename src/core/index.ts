export * from './errors.js';
export * from './types.js';
export * from './decision.js';
export * from './ports.js';
export * from './clock.js';

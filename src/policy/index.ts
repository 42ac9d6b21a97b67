export * from './decision-point.js';
export * from './builtin.js';
export * from './opa.js';
export * from './bundle.js';
export * from './patterns.js';
export * from './explain.js';

export * from './decision-point.js';
export * from './builtin.js';
export * from './opa.js';
export * from './opa-bundle.js';
export * from './patterns.js';
export * from './explain.js';

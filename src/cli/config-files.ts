/** Reading what the config points at: files relative to the config, and listen addresses. */
import { readFileSync } from 'node:fs';
import { resolvePath } from '../config/load.js';
import { mayflyError } from '../core/errors.js';

/** Reads a file named by config field `field`; a missing or unreadable file is ERR_CONFIG_INVALID naming the field. */
export function readConfigFile(base: string, p: string, field: string): Buffer {
  const abs = resolvePath(base, p);
  try {
    return readFileSync(abs);
  } catch (e) {
    throw mayflyError('ERR_CONFIG_INVALID', `${field}: cannot read ${abs}: ${(e as Error).message}`, { field });
  }
}

/** `host:port`, `[v6]:port`. */
export function splitHostPort(s: string): { host: string; port: number } {
  const i = s.lastIndexOf(':');
  return { host: s.slice(0, i).replace(/^\[|\]$/g, ''), port: Number(s.slice(i + 1)) };
}

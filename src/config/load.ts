/** Loads and validates the config file; errors name the field. */
import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import type { z } from 'zod';
import { mayflyError } from '../core/errors.js';
import { configSchema, type MayflyConfig } from './schema.js';

export interface LoadedConfig {
  config: MayflyConfig;
  /** Directory of the config file; relative paths resolve against it. */
  baseDir: string;
  path: string;
}

/** Formats zod issues as `field.path: message` lines. */
export function formatIssues(issues: readonly z.core.$ZodIssue[]): string {
  return issues
    .map((i) => {
      const path = i.path.map(String).join('.') || '(root)';
      const msg = i.code === 'unrecognized_keys' ? `unknown option(s) ${(i as { keys: string[] }).keys.join(', ')}` : i.message;
      return `${path}: ${msg}`;
    })
    .join('\n  ');
}

/** Validates an already-parsed document. */
export function parseConfig(doc: unknown, source = 'config'): MayflyConfig {
  const r = configSchema.safeParse(doc ?? {});
  if (!r.success) throw mayflyError('ERR_CONFIG_INVALID', `${source} is invalid:\n  ${formatIssues(r.error.issues)}`);
  return r.data;
}

/** Reads, parses (YAML or JSON) and validates a config file. */
export function loadConfig(path: string): LoadedConfig {
  const abs = resolve(path);
  let text: string;
  try {
    text = readFileSync(abs, 'utf8');
  } catch (cause) {
    const code = (cause as { code?: unknown }).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') throw mayflyError('ERR_FILE_NOT_FOUND', `config file ${abs} does not exist (\`mayfly dev init\` writes one)`, undefined, cause);
    if (code === 'EISDIR') throw mayflyError('ERR_FILE_ACCESS', `config file ${abs} is a directory: name the YAML file, e.g. ${abs}/mayfly.yaml`, undefined, cause);
    throw mayflyError('ERR_FILE_ACCESS', `cannot read config file ${abs}: ${String(code ?? (cause as Error).message)}`, undefined, cause);
  }
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (cause) {
    throw mayflyError('ERR_CONFIG_INVALID', `${abs} is not valid YAML: ${(cause as Error).message}`);
  }
  return { config: parseConfig(doc, abs), baseDir: dirname(abs), path: abs };
}

/** Resolves a config path against the config file's directory. */
export function resolvePath(base: string, p: string): string {
  return isAbsolute(p) ? p : resolve(base, p);
}

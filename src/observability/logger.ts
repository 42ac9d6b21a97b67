/**
 * Structured JSON logging with pino. Credentials are redacted by path (the
 * usual field names, top level and one level down, plus request headers),
 * and compact JWS strings are scrubbed from messages and top-level string
 * fields as a second line of defence: a token must not reach a log even when
 * a caller logs it under an unexpected name.
 */
import { randomBytes } from 'node:crypto';
import { pino, type DestinationStream, type Logger as PinoLogger, type LevelWithSilentOrString } from 'pino';
import type { Random } from '../core/ports.js';
import { scrubTokens, SENSITIVE_FIELDS } from '../audit/record.js';

export type Logger = PinoLogger;

// The audit list, less the bare `key` (log lines name kids and config keys freely), plus camelCase spellings pino matches literally.
const SECRET_FIELDS = [...SENSITIVE_FIELDS.filter((f) => f !== 'key'), 'privateKey', 'accessToken', 'subjectToken'];

/** Paths pino redacts: each secret field at top level and one level deep, and HTTP/gRPC authorization headers. */
export const REDACT_PATHS: readonly string[] = [
  ...SECRET_FIELDS,
  ...SECRET_FIELDS.map((f) => `*.${f}`),
  'req.headers.authorization',
  'req.headers.cookie',
  'headers.authorization',
  'metadata.authorization',
  '*.d', // JWK private exponent/scalar under any object (e.g. a logged key)
];

export interface LoggerOptions {
  level?: LevelWithSilentOrString;
  /** Pretty printing is deliberately unsupported (no pino-pretty dependency); logs are JSON. */
  pretty?: false;
  /** Where lines go; defaults to stdout. Tests pass a stream that collects lines. */
  destination?: DestinationStream;
  /** Fixed fields on every line. */
  base?: Record<string, unknown>;
}

/** Creates the broker's root logger: JSON lines, ISO timestamps, credentials redacted. */
export function createLogger(options: LoggerOptions = {}): Logger {
  const opts = {
    level: options.level ?? 'info',
    base: { service: 'mayfly', ...options.base },
    timestamp: pino.stdTimeFunctions.isoTime,
    redact: { paths: [...REDACT_PATHS], censor: '[REDACTED]' },
    formatters: {
      level: (label: string) => ({ level: label }),
      log: (obj: Record<string, unknown>) => scrubTopLevel(obj),
    },
    hooks: {
      logMethod(this: Logger, args: unknown[], method: (...a: unknown[]) => void) {
        method.apply(
          this,
          args.map((a) => (typeof a === 'string' ? scrubTokens(a) : a)),
        );
      },
    },
  };
  return options.destination === undefined ? pino(opts) : pino(opts, options.destination);
}

function scrubTopLevel(obj: Record<string, unknown>): Record<string, unknown> {
  let out: Record<string, unknown> | undefined;
  for (const [k, v] of Object.entries(obj)) {
    if (typeof v !== 'string') continue;
    const s = scrubTokens(v);
    if (s !== v) (out ??= { ...obj })[k] = s;
  }
  return out ?? obj;
}

/** A random 96-bit request id, base64url (16 chars); shared by logs and audit records. */
export function requestId(random: Random = { bytes: randomBytes }): string {
  return random.bytes(12).toString('base64url');
}

/** Child logger for a component, optionally bound to a request id and other fields. */
export function childLogger(parent: Logger, component: string, bindings: Record<string, unknown> = {}): Logger {
  return parent.child({ component, ...bindings });
}

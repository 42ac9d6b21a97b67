/**
 * How the CLI turns any failure into its one error line: operating-system
 * errors (files, sockets, TLS material) become specific codes with a message
 * that says what to change, HTTP error bodies keep the code the broker sent,
 * and only what is left (our own bugs) stays ERR_INTERNAL.
 */
import { readFileSync } from 'node:fs';
import { ERROR_CODES, MayflyError, type ErrorCode } from '../core/errors.js';

type NodeError = Error & { code?: unknown; errno?: unknown; syscall?: unknown; path?: unknown; address?: unknown; port?: unknown; library?: unknown; reason?: unknown };

function nodeCode(e: unknown): string | undefined {
  return e instanceof Error && typeof (e as NodeError).code === 'string' ? ((e as NodeError).code as string) : undefined;
}

/** A file-system error on `path` as a MayflyError, phrased for the user who named the file. */
export function fileError(cause: unknown, path: string, what: string): MayflyError {
  const code = nodeCode(cause);
  switch (code) {
    case 'ENOENT':
      return new MayflyError('ERR_FILE_NOT_FOUND', `${what} ${path} does not exist`, { cause });
    case 'ENOTDIR':
      return new MayflyError('ERR_FILE_NOT_FOUND', `${what} ${path}: a parent of it is not a directory`, { cause });
    case 'EISDIR':
      return new MayflyError('ERR_FILE_ACCESS', `${what} ${path} is a directory; name a file`, { cause });
    case 'EACCES':
    case 'EPERM':
      return new MayflyError('ERR_FILE_ACCESS', `${what} ${path}: permission denied`, { cause });
    case 'EROFS':
      return new MayflyError('ERR_FILE_ACCESS', `${what} ${path} is on a read-only file system`, { cause });
    case 'ENOSPC':
      return new MayflyError('ERR_FILE_ACCESS', `${what} ${path}: no space left on the device`, { cause });
    case 'ENAMETOOLONG':
      return new MayflyError('ERR_FILE_ACCESS', `${what} ${path}: the name is too long`, { cause });
    case 'EEXIST':
      return new MayflyError('ERR_FILE_ACCESS', `${what} ${path} exists and is not a directory`, { cause });
    default:
      return new MayflyError('ERR_FILE_ACCESS', `${what} ${path}: ${code ?? 'cannot be read or written'}`, { cause });
  }
}

/** Reads a file the user named (flag `what`), or throws ERR_FILE_NOT_FOUND / ERR_FILE_ACCESS. */
export function readUserFile(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (e) {
    throw fileError(e, path, what);
  }
}

/** Reads a PEM file the user named and checks it holds `label` blocks (e.g. CERTIFICATE, PRIVATE KEY). */
export function readPem(path: string, what: string, label: 'CERTIFICATE' | 'PRIVATE KEY'): Buffer {
  const data = readUserFile(path, what);
  const text = data.toString('latin1');
  const ok = label === 'CERTIFICATE' ? text.includes('-----BEGIN CERTIFICATE-----') : /-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(text);
  if (!ok) throw new MayflyError('ERR_PEM_INVALID', `${what} ${path} holds no PEM ${label.toLowerCase()}`);
  return data;
}

/** The code and message an HTTP error body carries (`mayfly_code`, OAuth `error`/`error_description`), or a status-based fallback. */
export function fromHttpError(status: number, body: string, origin: string): MayflyError {
  let doc: Record<string, unknown> | undefined;
  try {
    const parsed = JSON.parse(body) as unknown;
    if (parsed && typeof parsed === 'object' && !Array.isArray(parsed)) doc = parsed as Record<string, unknown>;
  } catch {
    doc = undefined;
  }
  // OAuth endpoints send {error, error_description, mayfly_code}; the others {error: ERR_…, message}.
  const sent = [doc?.['mayfly_code'], doc?.['error']].find((c) => typeof c === 'string' && c in ERROR_CODES);
  const message = String(doc?.['error_description'] ?? doc?.['message'] ?? doc?.['error'] ?? (body.trim() || `HTTP ${status}`));
  if (typeof sent === 'string' && sent in ERROR_CODES) return new MayflyError(sent as ErrorCode, message.replace(/^ERR_[A-Z_]+: /, ''));
  const byStatus: ErrorCode =
    status === 400 ? 'ERR_INVALID_ARGUMENT'
    : status === 401 ? 'ERR_UNAUTHENTICATED'
    : status === 403 ? 'ERR_NOT_AUTHORIZED_CLIENT'
    : status === 404 ? 'ERR_INVALID_ARGUMENT'
    : status === 429 ? 'ERR_RATE_LIMITED'
    : status === 502 || status === 503 || status === 504 ? 'ERR_UNAVAILABLE'
    : 'ERR_INTERNAL';
  return new MayflyError(byStatus, `${origin} answered HTTP ${status}: ${message}`);
}

/** Listen-time socket errors (EADDRINUSE, EADDRNOTAVAIL, …) as operator-actionable codes. */
function listenError(e: NodeError): MayflyError | undefined {
  const where = typeof e.address === 'string' ? `${e.address}${typeof e.port === 'number' ? `:${e.port}` : ''}` : 'the listen address';
  switch (e.code) {
    case 'EADDRINUSE':
      return new MayflyError('ERR_ADDRESS_IN_USE', `${where} is already in use: stop the other process or choose another port (--grpc-listen / --http-listen, listen.* in the config)`, { cause: e });
    case 'EADDRNOTAVAIL':
      return new MayflyError('ERR_LISTEN_ADDRESS_INVALID', `${where} is not an address of this machine: listen on one of its addresses, 127.0.0.1 or 0.0.0.0`, { cause: e });
    case 'EACCES':
      if (e.syscall === 'listen' || e.syscall === 'bind') return new MayflyError('ERR_LISTEN_ADDRESS_INVALID', `not permitted to listen on ${where}: use a port above 1023`, { cause: e });
      return undefined;
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return new MayflyError('ERR_LISTEN_ADDRESS_INVALID', `cannot resolve the host of ${where}: use an IP address or a resolvable name`, { cause: e });
    case 'ERR_SOCKET_BAD_PORT':
      return new MayflyError('ERR_LISTEN_ADDRESS_INVALID', `invalid port in a listen address: use host:port with a port from 0 to 65535`, { cause: e });
    default:
      return undefined;
  }
}

/** TLS material errors from OpenSSL (through Node) as codes that say which file to fix. */
function tlsError(e: NodeError): MayflyError | undefined {
  const code = typeof e.code === 'string' ? e.code : '';
  // OpenSSL's library and reason travel as fields of the error; the message is never parsed.
  if (code === 'ERR_OSSL_X509_KEY_VALUES_MISMATCH' || e.reason === 'key values mismatch') {
    return new MayflyError('ERR_TLS_KEY_MISMATCH', 'the TLS certificate and key do not belong together (tls.cert_file / tls.key_file): give the key the certificate was issued for', { cause: e });
  }
  if (code.startsWith('ERR_OSSL_PEM') || code === 'ERR_OSSL_UNSUPPORTED' || e.library === 'PEM routines' || e.library === 'DECODER routines' || e.reason === 'bad decrypt') {
    return new MayflyError('ERR_PEM_INVALID', 'a TLS certificate or key is not valid PEM (tls.cert_file / tls.key_file): give a PEM certificate chain and its unencrypted PEM private key', { cause: e });
  }
  return undefined;
}

/** Turns anything thrown into the MayflyError the CLI prints. */
export function toCliError(e: unknown): MayflyError {
  if (e instanceof MayflyError && !(e.code === 'ERR_INTERNAL' && e.cause !== undefined)) return e;
  const cause = e instanceof MayflyError ? e.cause : e;
  if (cause instanceof MayflyError) return toCliError(cause);
  if (cause instanceof Error) {
    const n = cause as NodeError;
    const mapped = listenError(n) ?? tlsError(n);
    if (mapped) return mapped;
    if (typeof n.path === 'string' && typeof n.syscall === 'string') return fileError(cause, n.path, 'file');
    if (n.code === 'ERR_INVALID_URL') return new MayflyError('ERR_INVALID_ARGUMENT', `invalid URL ${JSON.stringify((n as { input?: unknown }).input ?? '')}: use e.g. https://127.0.0.1:8444`, { cause });
  }
  return e instanceof MayflyError ? e : MayflyError.from(e);
}

/** The message on one line: no line breaks, no trailing gRPC "Resolution note:" without a note. */
export function oneLine(message: string): string {
  return message
    .replace(/\s*\n\s*/g, '; ')
    .replace(/[.\s]*Resolution note:\s*$/, '')
    .trim();
}

/**
 * Out-of-range numbers are refused, never cut or wrapped: TTL and lease
 * varints past 32 bits, hand-encoded so the test does not depend on the
 * generated code's field types, reach the broker whole and are refused with
 * ERR_TTL_INVALID (they used to be cut to their low 32 bits: 2^40 became 0,
 * the default TTL, and 2^32 + 60 became 60).
 */
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { rawGrpcClient, rawUnary, startTestBroker, type TestBroker } from './helpers.js';

let tb: TestBroker;
let raw: grpc.Client;
let taskId: string;

beforeAll(async () => {
  tb = await startTestBroker();
  raw = rawGrpcClient(tb);
  taskId = (await tb.client().beginTask({ purpose: 'range checks', scopes: ['read'] })).taskId;
});

afterAll(async () => {
  raw?.close();
  await tb?.stop();
});

function varint(v: bigint): number[] {
  const out: number[] = [];
  do {
    let b = Number(v & 0x7fn);
    v >>= 7n;
    if (v > 0n) b |= 0x80;
    out.push(b);
  } while (v > 0n);
  return out;
}

const str = (field: number, s: string) => [(field << 3) | 2, ...varint(BigInt(Buffer.byteLength(s))), ...Buffer.from(s)];
const num = (field: number, v: bigint) => [(field << 3) | 0, ...varint(v)];

const BIG: Array<[string, bigint]> = [
  ['2^40', 2n ** 40n],
  ['2^32 (its low 32 bits are 0, the default)', 2n ** 32n],
  ['2^32 + 60 (its low 32 bits are a valid 60)', 2n ** 32n + 60n],
  ['2^64 - 1 (ten-byte varint)', 2n ** 64n - 1n],
];

describe('TTL and lease varints above 32 bits', () => {
  const calls: Array<[string, string, (v: bigint) => number[]]> = [
    ['BeginTask ttl_seconds', 'BeginTask', (v) => [...str(1, 'p'), ...num(2, v)]],
    ['BeginTask lease_seconds', 'BeginTask', (v) => [...str(1, 'p'), ...num(6, v)]],
    ['IssueToken ttl_seconds', 'IssueToken', (v) => [...str(1, taskId), ...str(2, 'demo-api'), ...str(3, 'read'), ...num(4, v)]],
    ['RenewTask lease_seconds', 'RenewTask', (v) => [...str(1, taskId), ...num(2, v)]],
  ];
  for (const [name, method, encode] of calls) {
    for (const [what, v] of BIG) {
      it(`${name} = ${what} → INVALID_ARGUMENT, ERR_TTL_INVALID`, async () => {
        const r = await rawUnary(raw, `/mayfly.v1.Broker/${method}`, Buffer.from(encode(v)));
        expect(r.error?.code).toBe(grpc.status.INVALID_ARGUMENT);
        expect(r.error?.metadata.get('mayfly-error-code')[0]).toBe('ERR_TTL_INVALID');
      });
    }
  }

  it('the same fields in range still work (60 s)', async () => {
    const r = await rawUnary(raw, '/mayfly.v1.Broker/IssueToken', Buffer.from([...str(1, taskId), ...str(2, 'demo-api'), ...str(3, 'read'), ...num(4, 60n)]));
    expect(r.error).toBeNull();
  });
});

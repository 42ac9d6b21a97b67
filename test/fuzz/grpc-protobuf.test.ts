/**
 * Fuzz: random and mutated protobuf for every unary RPC, over a real mTLS
 * connection as an authenticated workload. Every call must end, within its
 * deadline, with a status; a refusal must carry a status the caller can act
 * on (never INTERNAL, UNKNOWN or UNAVAILABLE) and a mayfly-error-code; the
 * broker must keep serving. Seeded (see prng.ts): a failure names its case.
 */
import * as grpc from '@grpc/grpc-js';
import { create, toBinary, ScalarType, type DescField, type DescMessage } from '@bufbuild/protobuf';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as pb from '../../src/gen/mayfly/v1/broker_pb.js';
import { FUZZ_SEED, mutateBytes, Prng } from './prng.js';
import { rawGrpcClient, startTestBroker, type TestBroker } from '../e2e/helpers.js';

const PER_KIND = 25;
const DEADLINE_MS = 3000;
/** Statuses a refused call may end with; anything else (INTERNAL, UNKNOWN, UNAVAILABLE, DEADLINE_EXCEEDED) is a failure. */
const REFUSALS = new Set([
  grpc.status.INVALID_ARGUMENT,
  grpc.status.UNAUTHENTICATED,
  grpc.status.PERMISSION_DENIED,
  grpc.status.NOT_FOUND,
  grpc.status.FAILED_PRECONDITION,
  grpc.status.RESOURCE_EXHAUSTED,
]);

let tb: TestBroker;
let raw: grpc.Client;
let knownTaskId = '';

beforeAll(async () => {
  tb = await startTestBroker();
  raw = rawGrpcClient(tb);
  knownTaskId = (await tb.client().beginTask({ purpose: 'fuzz anchor', scopes: ['read'] })).taskId;
});

afterAll(async () => {
  raw?.close();
  await tb?.stop();
});

interface Outcome {
  code: grpc.status;
  mayflyCode: string | undefined;
  details: string;
}

function call(method: string, bytes: Buffer): Promise<Outcome> {
  return new Promise((resolve) => {
    raw.makeUnaryRequest(
      `/mayfly.v1.Broker/${method}`,
      (b: Buffer) => b,
      (b: Buffer) => b,
      bytes,
      new grpc.Metadata(),
      { deadline: Date.now() + DEADLINE_MS },
      (err) => resolve(err ? { code: err.code, mayflyCode: err.metadata?.get('mayfly-error-code')[0] as string | undefined, details: err.details } : { code: grpc.status.OK, mayflyCode: undefined, details: '' }),
    );
  });
}

const TEXT = 'abcdefghijklmnopqrstuvwxyz0123456789-_./:@ spiffe';

function randomScalar(rng: Prng, t: ScalarType, f: DescField): unknown {
  switch (t) {
    case ScalarType.STRING:
      // Sometimes a real task id, so calls get past the lookup.
      if (f.name.endsWith('task_id') && rng.chance(0.4)) return knownTaskId;
      return rng.chance(0.1) ? rng.text(70_000, TEXT) : rng.text(rng.int(40), rng.chance(0.2) ? '\u0000\u202e\ud800é漢' + TEXT : TEXT);
    case ScalarType.BYTES:
      return rng.bytes(rng.int(40));
    case ScalarType.BOOL:
      return rng.chance(0.5);
    case ScalarType.UINT64:
    case ScalarType.FIXED64:
      return rng.u64();
    case ScalarType.INT64:
    case ScalarType.SINT64:
    case ScalarType.SFIXED64:
      return BigInt.asIntN(64, rng.u64());
    case ScalarType.DOUBLE:
    case ScalarType.FLOAT:
      return rng.pick([0, -1, 1e308, Number.NaN, Number.POSITIVE_INFINITY, 0.5]);
    case ScalarType.UINT32:
    case ScalarType.FIXED32:
      return rng.u32();
    default:
      return rng.u32() | 0;
  }
}

/** A message with random values in every field (schema-valid, content hostile). */
function randomMessage(rng: Prng, desc: DescMessage, depth = 0): Record<string, unknown> {
  const init: Record<string, unknown> = {};
  for (const f of desc.fields) {
    if (rng.chance(0.3)) continue;
    switch (f.fieldKind) {
      case 'scalar':
        init[f.localName] = randomScalar(rng, f.scalar, f);
        break;
      case 'enum':
        init[f.localName] = rng.int(5);
        break;
      case 'list':
        init[f.localName] =
          f.listKind === 'scalar' ? Array.from({ length: rng.int(rng.chance(0.1) ? 300 : 4) }, () => randomScalar(rng, f.scalar, f)) : [];
        break;
      case 'map':
        init[f.localName] = Object.fromEntries(Array.from({ length: rng.int(rng.chance(0.1) ? 200 : 4) }, () => [rng.text(1 + rng.int(20), TEXT), rng.text(rng.int(30), TEXT)]));
        break;
      case 'message':
        if (depth < 2) init[f.localName] = randomMessage(rng, f.message, depth + 1);
        break;
    }
  }
  return init;
}

const unaryMethods = pb.Broker.methods.filter((m) => m.methodKind === 'unary');

describe(`gRPC protobuf fuzz (seed ${FUZZ_SEED})`, () => {
  it('covers every unary RPC of mayfly.v1.Broker', () => {
    expect(unaryMethods.map((m) => m.name).sort()).toEqual(['AckKeySet', 'BeginTask', 'CompleteTask', 'Introspect', 'IssueToken', 'Ping', 'RenewTask', 'ReportMisuse', 'RevokeIdentity', 'RevokeToken'].sort());
  });

  for (const m of unaryMethods) {
    it(`${m.name}: random bytes, random fields and mutated messages each end with a status and a code`, async () => {
      const rng = new Prng(FUZZ_SEED ^ hash(m.name));
      const cases: Array<{ kind: string; bytes: Buffer }> = [];
      for (let i = 0; i < PER_KIND; i++) cases.push({ kind: 'random-bytes', bytes: rng.bytes(rng.int(64)) });
      for (let i = 0; i < PER_KIND; i++) {
        let bytes: Buffer;
        try {
          bytes = Buffer.from(toBinary(m.input, create(m.input, randomMessage(rng, m.input) as never)));
        } catch {
          continue;
        }
        cases.push({ kind: 'random-fields', bytes });
      }
      const valid = Buffer.from(toBinary(m.input, create(m.input, randomMessage(new Prng(1), m.input) as never)));
      for (let i = 0; i < PER_KIND; i++) {
        let b: Buffer = valid;
        for (let k = 1 + rng.int(3); k > 0; k--) b = mutateBytes(rng, b);
        cases.push({ kind: 'mutated', bytes: b });
      }
      const outcomes = await Promise.all(cases.map((c) => call(m.name, c.bytes)));
      outcomes.forEach((o, i) => {
        const where = `${m.name} case ${i} (${cases[i]!.kind}, seed ${FUZZ_SEED}): ${o.code} ${o.details}`;
        if (o.code === grpc.status.OK) return;
        expect(REFUSALS.has(o.code), where).toBe(true);
        expect(typeof o.mayflyCode === 'string' && /^ERR_[A-Z_]+$/.test(o.mayflyCode), where).toBe(true);
      });
      // Still serving.
      expect((await call('Ping', Buffer.alloc(0))).code).toBe(grpc.status.OK);
    });
  }
});

function hash(s: string): number {
  let h = 0;
  for (const c of s) h = (Math.imul(h, 31) + c.charCodeAt(0)) | 0;
  return h >>> 0;
}

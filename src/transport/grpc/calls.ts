/**
 * How one gRPC call runs: decode the request, authenticate the caller
 * through the shared authenticate-and-audit step, run the handler, and map
 * any failure to a status with the stable code in `mayfly-error-code`.
 */
import * as grpc from '@grpc/grpc-js';
import { create, fromBinary, toBinary, type DescMessage, type MessageShape } from '@bufbuild/protobuf';
import { mayflyError, MayflyError } from '../../core/errors.js';
import type { AuditSink } from '../../core/ports.js';
import type { CallerAuthentication } from '../../service/authenticate.js';
import type { CallContext } from '../../service/deps.js';
import { toGrpcStatus } from '../errors.js';
import type { PeerRegistry } from '../tls.js';

export type UnaryHandler<I extends DescMessage, O extends DescMessage> = (ctx: CallContext, req: MessageShape<I>) => Promise<Partial<MessageShape<O>>>;
export type StreamHandler<I extends DescMessage> = (ctx: CallContext, req: MessageShape<I>, call: grpc.ServerWritableStream<Buffer, Buffer>) => Promise<void>;

export interface CallDeps {
  authentication: CallerAuthentication;
  peers: PeerRegistry;
  audit: AuditSink;
  requestId: () => string;
  /** Called with every failure (for logging); never sees tokens. */
  onError?: (method: string, err: MayflyError, requestId: string) => void;
  /** Largest request message accepted; a larger one is refused here, with our code (grpc-js's own limit sits above it). */
  maxRequestBytes: number;
}

/** ERR_TOO_LARGE, answered as RESOURCE_EXHAUSTED as grpc-js itself would, but with the code trailer. */
class Oversized extends Error {}

type AnyCall = grpc.ServerUnaryCall<Buffer, Buffer> | grpc.ServerWritableStream<Buffer, Buffer>;

export function callRunner(deps: CallDeps) {
  const identify = (call: AnyCall, requestId: string, method: string): Promise<CallContext> => {
    const peer = call.getPeer();
    const header = call.metadata.get('authorization')[0];
    return deps.authentication.caller(
      { certificate: () => deps.peers.identify(peer), authorization: typeof header === 'string' ? header : header?.toString() },
      { requestId, peer, method },
    );
  };

  const failure = (method: string, requestId: string, e: unknown) => {
    if (e instanceof Oversized) {
      const err = mayflyError('ERR_TOO_LARGE', e.message);
      deps.onError?.(method, err, requestId);
      return { ...toGrpcStatus(err), code: grpc.status.RESOURCE_EXHAUSTED };
    }
    const err = MayflyError.from(e);
    deps.onError?.(method, err, requestId);
    return toGrpcStatus(err);
  };

  /** Decodes the request, refusing (and auditing) an oversized or malformed one. */
  const decode = <I extends DescMessage>(input: I, call: AnyCall, requestId: string, method: string): MessageShape<I> => {
    if (call.request.length > deps.maxRequestBytes) {
      deps.audit.write({ event: 'request.invalid', outcome: 'denied', request_id: requestId, peer: call.getPeer(), method, code: 'ERR_TOO_LARGE', reason: `request of ${call.request.length} bytes` });
      throw new Oversized(`request message of ${call.request.length} bytes exceeds the limit of ${deps.maxRequestBytes}`);
    }
    try {
      return fromBinary(input, call.request);
    } catch (cause) {
      deps.audit.write({ event: 'request.invalid', outcome: 'denied', request_id: requestId, peer: call.getPeer(), method, code: 'ERR_INVALID_ARGUMENT', reason: `malformed ${input.typeName} message` });
      throw mayflyError('ERR_INVALID_ARGUMENT', `malformed ${input.typeName} message`, undefined, cause);
    }
  };

  return {
    unary: <I extends DescMessage, O extends DescMessage>(method: string, input: I, output: O, fn: UnaryHandler<I, O>) =>
      (call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) => {
        const requestId = deps.requestId();
        void (async () => {
          try {
            const req = decode(input, call, requestId, method);
            const ctx = await identify(call, requestId, method);
            const res = await fn(ctx, req);
            callback(null, Buffer.from(toBinary(output, create(output, res as never))));
          } catch (e) {
            const st = failure(method, requestId, e);
            const md = new grpc.Metadata();
            md.set('mayfly-error-code', st.mayflyCode);
            md.set('x-request-id', requestId);
            callback({ code: st.code, details: st.details, metadata: md });
          }
        })();
      },

    serverStream: <I extends DescMessage>(method: string, input: I, fn: StreamHandler<I>) =>
      (call: grpc.ServerWritableStream<Buffer, Buffer>) => {
        const requestId = deps.requestId();
        void (async () => {
          try {
            const req = decode(input, call, requestId, method);
            const ctx = await identify(call, requestId, method);
            await fn(ctx, req, call);
          } catch (e) {
            endWithStatus(call, failure(method, requestId, e), requestId);
          }
        })();
      },
  };
}

/** Ends a server stream with the status of `err` and its stable code (after the messages it has queued). */
export function endStream(call: grpc.ServerWritableStream<Buffer, Buffer>, err: MayflyError, requestId: string): void {
  endWithStatus(call, toGrpcStatus(err), requestId);
}

function endWithStatus(call: grpc.ServerWritableStream<Buffer, Buffer>, st: ReturnType<typeof toGrpcStatus>, requestId: string): void {
  // Emitting 'error' (not destroy) is what makes grpc-js end the stream with this status:
  // a destroyed stream never sends one, and the caller would wait for its own deadline.
  const md = new grpc.Metadata();
  md.set('mayfly-error-code', st.mayflyCode);
  md.set('x-request-id', requestId);
  call.emit('error', { code: st.code, details: st.details, metadata: md });
}

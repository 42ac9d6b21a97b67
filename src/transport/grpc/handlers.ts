/** The mayfly.v1.Broker methods: each maps its protobuf request to one use-case and the result back. */
import type * as grpc from '@grpc/grpc-js';
import * as pb from '../../gen/mayfly/v1/broker_pb.js';
import type { BrokerService } from '../../service/broker.js';
import type { FeedSubscriptions } from '../../service/subscriptions.js';
import type { callRunner } from './calls.js';
import { GrpcFeedStream } from './feed-stream.js';

const seconds = (ms: number) => BigInt(Math.floor(ms / 1000));

export function brokerHandlers(b: BrokerService, subscriptions: FeedSubscriptions, run: ReturnType<typeof callRunner>): grpc.UntypedServiceImplementation {
  return {
    BeginTask: run.unary('BeginTask', pb.BeginTaskRequestSchema, pb.BeginTaskResponseSchema, async (ctx, r) => {
      const t = await b.beginTask(ctx, { purpose: r.purpose, ttlSeconds: r.ttlSeconds, labels: r.labels, parentTaskId: r.parentTaskId || undefined, scopes: r.scopes, leaseSeconds: r.leaseSeconds, actor: r.actor });
      return { taskId: t.id, expiresAt: seconds(t.expiresAt), leaseExpiresAt: t.leaseExpiresAt ? seconds(t.leaseExpiresAt) : 0n, parentTaskId: t.parentId ?? '', depth: t.depth };
    }),
    IssueToken: run.unary('IssueToken', pb.IssueTokenRequestSchema, pb.IssueTokenResponseSchema, async (ctx, r) => {
      const t = await b.issueToken(ctx, { taskId: r.taskId, audience: r.audience, scopes: r.scopes, ttlSeconds: r.ttlSeconds, tool: r.tool, argsDigest: r.argsDigest, singleUse: r.singleUse });
      return { token: t.token, tokenId: t.tokenId, expiresAt: seconds(t.expiresAt), scopes: t.scopes, tokenType: 'Bearer' };
    }),
    CompleteTask: run.unary('CompleteTask', pb.CompleteTaskRequestSchema, pb.CompleteTaskResponseSchema, async (ctx, r) => {
      const res = await b.completeTask(ctx, { taskId: r.taskId });
      return { revokedTokens: res.revokedTokens, taskIds: res.taskIds };
    }),
    RenewTask: run.unary('RenewTask', pb.RenewTaskRequestSchema, pb.RenewTaskResponseSchema, async (ctx, r) => {
      const until = await b.renewTask(ctx, { taskId: r.taskId, leaseSeconds: r.leaseSeconds });
      return { leaseExpiresAt: seconds(until) };
    }),
    Introspect: run.unary('Introspect', pb.IntrospectRequestSchema, pb.IntrospectResponseSchema, async (ctx, r) => {
      const res = await b.introspect(ctx, { token: r.token });
      if (!res.active || !res.claims) return { active: false, reason: res.reason ?? 'malformed' };
      const c = res.claims;
      return { active: true, sub: c.sub, aud: c.aud, scope: c.scope, jti: c.jti, taskId: c.tid, exp: BigInt(c.exp), iat: BigInt(c.iat), iss: c.iss, claimsJson: JSON.stringify(c) };
    }),
    RevokeToken: run.unary('RevokeToken', pb.RevokeTokenRequestSchema, pb.RevokeTokenResponseSchema, async (ctx, r) => {
      return { revoked: await b.revokeToken(ctx, { token: r.token || undefined, tokenId: r.tokenId || undefined }) };
    }),
    RevokeIdentity: run.unary('RevokeIdentity', pb.RevokeIdentityRequestSchema, pb.RevokeIdentityResponseSchema, async (ctx, r) => {
      const res = await b.revokeIdentity(ctx, { identity: r.identity, reason: r.reason });
      return { revokedTasks: res.taskIds.length, revokedTokens: res.revokedTokens };
    }),
    AckKeySet: run.unary('AckKeySet', pb.AckKeySetRequestSchema, pb.AckKeySetResponseSchema, async (ctx, r) => {
      await subscriptions.ack(ctx, { subscriberId: r.subscriberId, keysetVersion: r.keysetVersion });
      return {};
    }),
    ReportMisuse: run.unary('ReportMisuse', pb.ReportMisuseRequestSchema, pb.ReportMisuseResponseSchema, async (ctx, r) => {
      b.reportMisuse(ctx, { kind: r.kind, tokenId: r.tokenId, detail: r.detail });
      return {};
    }),
    Ping: run.unary('Ping', pb.PingRequestSchema, pb.PingResponseSchema, async () => ({})),
    WatchRevocations: run.serverStream('WatchRevocations', pb.WatchRevocationsRequestSchema, async (ctx, r, call) => {
      // The stream leaves the feed when the call closes (the hub listens through the stream), replay included.
      await subscriptions.subscribe(ctx, { subscriberId: r.subscriberId, cursor: r.cursor, transport: 'grpc' }, new GrpcFeedStream(call, ctx.requestId));
    }),
  };
}

/** Revocation feed messages in their protobuf form, encoded once per message however many subscribers get it. */
import { create, toBinary } from '@bufbuild/protobuf';
import * as pb from '../../gen/mayfly/v1/broker_pb.js';
import type { FeedMessage } from '../../service/feed.js';

const KIND: Record<FeedMessage['kind'], pb.RevocationEvent_Kind> = {
  task: pb.RevocationEvent_Kind.TASK,
  token: pb.RevocationEvent_Kind.TOKEN,
  keyset: pb.RevocationEvent_Kind.KEYSET,
  key: pb.RevocationEvent_Kind.KEY,
  snapshot: pb.RevocationEvent_Kind.SNAPSHOT,
  heartbeat: pb.RevocationEvent_Kind.HEARTBEAT,
};

// The hub hands one message object to every subscriber: encode it once, not once per subscriber.
const encoded = new WeakMap<FeedMessage, Buffer>();

export function encodeEvent(m: FeedMessage): Buffer {
  let b = encoded.get(m);
  if (!b) {
    b = Buffer.from(toBinary(pb.RevocationEventSchema, toProtoEvent(m)));
    encoded.set(m, b);
  }
  return b;
}

/** Feed message to its protobuf form. */
export function toProtoEvent(m: FeedMessage): pb.RevocationEvent {
  return create(pb.RevocationEventSchema, {
    kind: KIND[m.kind],
    cursor: BigInt(m.cursor),
    at: BigInt(m.at),
    taskIds: m.taskIds,
    tokenIds: m.jtis,
    kid: m.kid,
    reason: m.reason,
    kids: m.kids,
    jwksJson: m.jwksJson,
    coversUntil: BigInt(m.coversUntil),
  });
}

/**
 * Mayfly client SDK for workloads (`mayfly/client`): the gRPC BrokerClient
 * and task helpers that always complete what they begin.
 */
export {
  BrokerClient,
  fromGrpcError,
  pb,
  RETRY_AFTER_UNAVAILABLE,
  type BrokerClientOptions,
  type Plain,
  type BeginTaskResult,
  type IssueTokenResult,
  type CompleteTaskResult,
  type RenewTaskResult,
  type IntrospectResult,
  type RevokeTokenResult,
  type RevokeIdentityResult,
} from './broker-client.js';
export {
  withTask,
  beginTask,
  asyncDisposeSymbol,
  type TaskHandle,
  type TaskOptions,
  type TokenOptions,
  type ChildTaskOptions,
  type IssuedTaskToken,
  type TaskBrokerClient,
} from './with-task.js';
export { MayflyError, isMayflyError, type ErrorCode } from '../core/errors.js';

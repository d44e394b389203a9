/** The vhost-user transport: a VirtioDevice served to a VMM over a Unix socket (QEMU docs/interop/vhost-user.rst). */
export { VhostUserBackend, type VhostUserBackendOptions, type VhostUserBackendEvents } from './backend.js';
export {
  VhostUserProtocol,
  MessageReader,
  OFFERED_PROTOCOL_FEATURES,
  MAX_MESSAGE_FDS,
  type VhostUserContext,
  type VhostUserEffect,
  type VhostUserMessage,
  type VhostUserResult,
  type RingState,
} from './protocol.js';
export { InflightRegion, InflightQueue } from './inflight.js';
export { VhostUserError, type VhostUserErrorCode } from './errors.js';

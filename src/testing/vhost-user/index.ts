/** A userspace vhost-user front-end (a small VMM) for tests of vhost-user back-ends. */
export {
  VhostUserFrontend,
  VhostUserFrontendError,
  FRONTEND_PROTOCOL_FEATURES,
  type FrontendQueueSetup,
} from './frontend.js';

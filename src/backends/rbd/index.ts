/**
 * The Ceph RBD backend kind (`rbd:POOL/IMAGE...`, see ./spec.ts). Importing this module registers it (as the
 * NBD module registers its kinds); librbd itself is loaded only when an rbd: spec is opened.
 */
import type { BlockBackend } from '../backend.js';
import { registerBackend, type BackendDeps } from '../spec.js';
import { RbdBackend } from './backend.js';
import { RBD_HELP, parseRbdSpec, type RbdBackendSpec } from './spec.js';

export {
  RbdBackend,
  RbdError,
  RBD_FEATURE_EXCLUSIVE_LOCK,
  errnoName,
  type RbdBackendOptions,
} from './backend.js';
export { RBD_HELP, parseRbdSpec, type RbdBackendSpec } from './spec.js';
export { loadRbd, LIBRADOS, LIBRBD } from './native.js';

/** BackendKind.open for rbd specs. */
export function openRbdBackend(spec: RbdBackendSpec, deps: BackendDeps): Promise<BlockBackend> {
  return RbdBackend.open({
    pool: spec.pool,
    namespace: spec.namespace,
    image: spec.image,
    snap: spec.snap,
    conf: spec.conf,
    id: spec.id,
    keyring: spec.keyring,
    mon: spec.mon,
    cache: spec.cache,
    readOnly: spec.readOnly || deps.readOnly === true,
    timeout: spec.timeout,
    connectTimeout: spec.connectTimeout,
    ...(deps.binding !== undefined ? { binding: deps.binding } : {}),
    ...(deps.log !== undefined ? { log: deps.log } : {}),
  });
}

registerBackend<RbdBackendSpec>('rbd', {
  help: RBD_HELP,
  parse: (text) => parseRbdSpec(text),
  open: (spec, deps) => openRbdBackend(spec, deps),
});

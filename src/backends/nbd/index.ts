/** The NBD client backend: public API. */
export { NbdBackend, NBD_DEFAULT_MAX_IO, type NbdBackendOptions } from './backend.js';
export {
  NbdConnection,
  NbdConnectionError,
  NbdServerError,
  describeTarget,
  type NbdConnectOptions,
  type NbdTarget,
  type NbdTlsOptions,
} from './client.js';
export { NbdClientProtocol, NbdProtocolError, type NbdExportInfo, type NbdRequest } from './protocol.js';
export { NBD_SPEC_HELP, parseDuration, parseNbdSpec, type NbdSpecOptions } from './uri.js';

import { NbdBackend } from './backend.js';
import { parseNbdSpec } from './uri.js';

/** Parses an NBD spec string and opens the backend (`log` receives reconnect/failure messages). */
export async function openNbdBackend(spec: string, log?: (message: string) => void): Promise<NbdBackend> {
  const options = parseNbdSpec(spec);
  return NbdBackend.open(log ? { ...options, log } : options);
}

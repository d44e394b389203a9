/**
 * The NBD client backend: public API, and registration of the `nbd`, `nbds`, `nbd+unix` and `nbds+unix` kinds
 * in the backend registry (importing this module registers them).
 */
import type { BlockBackend } from '../backend.js';
import { registerBackend, type BackendSpec } from '../spec.js';
import { NbdBackend } from './backend.js';
import { NBD_SPEC_HELP, nbdSpecFromText, parseNbdSpec, type NbdSpecOptions } from './uri.js';

export {
  NbdBackend,
  NBD_DEFAULT_MAX_IO,
  NBD_MAX_MIN_BLOCK,
  nbdIoLimits,
  type NbdBackendOptions,
} from './backend.js';
export {
  NBD_CONN_ERR,
  NBD_ERR,
  NbdConnectionError,
  NbdError,
  NbdProtocolError,
  NbdServerError,
  type NbdErrorOptions,
} from './errors.js';
export {
  NbdConnection,
  describeTarget,
  type NbdConnectOptions,
  type NbdTarget,
  type NbdTlsOptions,
} from './client.js';
export { NbdClientProtocol, type NbdExportInfo, type NbdRequest } from './protocol.js';
export { NBD_SPEC_HELP, nbdSpecFromText, parseDuration, parseNbdSpec, type NbdSpecOptions } from './uri.js';

/** A parsed NBD backend spec, as the registry keeps it. */
export interface NbdBackendSpec extends BackendSpec, NbdSpecOptions {}

/** Parses an NBD spec string (`nbd:nbd://...`, `nbd://...`, ...) and opens the backend. */
export async function openNbdBackend(
  spec: string,
  deps: { log?: (message: string) => void; readOnly?: boolean } = {},
): Promise<NbdBackend> {
  const options = parseNbdSpec(spec);
  return NbdBackend.open({
    ...options,
    readOnly: options.readOnly || deps.readOnly === true,
    ...(deps.log !== undefined ? { log: deps.log } : {}),
  });
}

const HELP: Record<string, string> = {
  nbd: 'nbd:nbd://HOST[:PORT]/EXPORT[,connections=N][,timeout=30s][,retry=60s][,queue=64][,readonly=on]  NBD server (also nbds:, nbd+unix:)',
  nbds: 'nbds://HOST[:PORT]/EXPORT[,ca=FILE][,cert=FILE,key=FILE][,servername=NAME][,insecure=on][,...nbd options]  NBD over TLS',
  'nbd+unix': 'nbd+unix:///EXPORT?socket=PATH[,...nbd options]  NBD server on a Unix socket',
  'nbds+unix': 'nbds+unix:///EXPORT?socket=PATH[,...nbd and TLS options]  NBD over TLS on a Unix socket',
};

for (const kind of ['nbd', 'nbds', 'nbd+unix', 'nbds+unix']) {
  registerBackend<NbdBackendSpec>(kind, {
    help: HELP[kind]!,
    parse(text) {
      return { ...nbdSpecFromText(text), kind: text.kind, source: text.source };
    },
    open(spec, deps): Promise<BlockBackend> {
      return NbdBackend.open({
        ...spec,
        readOnly: spec.readOnly || deps.readOnly === true,
        ...(deps.log !== undefined ? { log: deps.log } : {}),
      });
    },
  });
}

/** Multi-line help for NBD specs (syntax and every option). */
export const nbdHelp = NBD_SPEC_HELP;

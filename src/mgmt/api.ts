/**
 * The management API methods (JSON-RPC 2.0 over the daemon's Unix socket), over a DeviceManager:
 *   device.add     params: the device options (name, backend, queues, queue-size, logical-block-size, serial,
 *                  readonly, packed, attach, driver; or type: "net", name, tap, mac, mtu, queue-size, link,
 *                  offloads, attach, driver)                             -> DeviceInfo
 *   device.remove  { name, force? }                                      -> { removed: name }
 *   device.list    {}                                                    -> DeviceInfo[]
 *   device.stats   { name? }                                             -> DeviceStats[]
 *   device.resize  { name, size: bytes or "2G" }                         -> DeviceInfo
 *   device.link    { name, state: "up" | "down" } (a net device)          -> DeviceInfo
 *   daemon.info    {}                                                    -> DaemonInfo
 * Bad params are UsageErrors (ConfigError, or RpcError ERR_RPC_INVALID_PARAMS) naming the field
 * ("params.size: ..."): JSON-RPC -32602 at the edge.
 */
import { parseSize } from '../backends/size.js';
import { checkName, parseDeviceOptions } from './config.js';
import type { DeviceManager } from './manager.js';
import { RpcError, type RpcMethods } from './daemon/rpc.js';

export interface DaemonInfo {
  version: string;
  pid: number;
  uptimeSeconds: number;
  socket: string | null;
  metrics: string | null;
  user: string | null;
  /** false after --user dropped the privileges (device.add / device.remove are refused then). */
  privileged: boolean;
  devices: number;
}

function params(value: unknown, allowed: readonly string[]): Record<string, unknown> {
  if (Array.isArray(value))
    throw new RpcError('ERR_RPC_INVALID_PARAMS', 'invalid params: expected an object, got a list');
  const o = (value ?? {}) as Record<string, unknown>;
  for (const key of Object.keys(o)) {
    if (!allowed.includes(key)) {
      throw new RpcError(
        'ERR_RPC_INVALID_PARAMS',
        `params.${key}: unknown parameter${allowed.length > 0 ? ` (known: ${allowed.join(', ')})` : ' (none taken)'}`,
      );
    }
  }
  return o;
}

/** A bad name is a ConfigError (a UsageError): answered as invalid params, naming the field. */
function name(o: Record<string, unknown>): string {
  return checkName(o.name, 'params.name');
}

export function createApi(manager: DeviceManager, info: () => DaemonInfo): RpcMethods {
  return {
    'device.add': (p: unknown) => {
      const config = parseDeviceOptions(Array.isArray(p) ? p[0] : p, 'params');
      return manager.add(config);
    },
    'device.remove': async (p: unknown) => {
      const o = params(p, ['name', 'force']);
      const n = name(o);
      if (o.force !== undefined && typeof o.force !== 'boolean') {
        throw new RpcError(
          'ERR_RPC_INVALID_PARAMS',
          `params.force: expected true or false, got ${JSON.stringify(o.force)}`,
        );
      }
      await manager.remove(n, { force: o.force === true });
      return { removed: n };
    },
    'device.list': (p: unknown) => {
      params(p, []);
      return manager.list();
    },
    'device.stats': (p: unknown) => {
      const o = params(p, ['name']);
      return manager.stats(o.name === undefined ? undefined : name(o));
    },
    'device.resize': (p: unknown) => {
      const o = params(p, ['name', 'size']);
      const n = name(o);
      const size =
        typeof o.size === 'number' ? o.size : typeof o.size === 'string' ? parseSize(o.size) : null;
      if (size === null || !Number.isSafeInteger(size) || size <= 0) {
        throw new RpcError(
          'ERR_RPC_INVALID_PARAMS',
          `params.size: expected a size in bytes or like "2G", got ${o.size === undefined ? 'nothing' : JSON.stringify(o.size)}`,
        );
      }
      return manager.resize(n, size);
    },
    'device.link': (p: unknown) => {
      const o = params(p, ['name', 'state']);
      const n = name(o);
      if (o.state !== 'up' && o.state !== 'down') {
        throw new RpcError(
          'ERR_RPC_INVALID_PARAMS',
          `params.state: expected "up" or "down", got ${o.state === undefined ? 'nothing' : JSON.stringify(o.state)}`,
        );
      }
      return manager.link(n, o.state);
    },
    'daemon.info': (p: unknown) => {
      params(p, []);
      return info();
    },
  };
}

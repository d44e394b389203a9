/**
 * The management API methods (JSON-RPC 2.0 over the daemon's Unix socket), over a DeviceManager:
 *   device.add     params: the device options (name, backend, queues, queue-size, logical-block-size, serial,
 *                  readonly, packed, attach, driver)                     -> DeviceInfo
 *   device.remove  { name, force? }                                      -> { removed: name }
 *   device.list    {}                                                    -> DeviceInfo[]
 *   device.stats   { name? }                                             -> DeviceStats[]
 *   device.resize  { name, size: bytes or "2G" }                         -> DeviceInfo
 *   daemon.info    {}                                                    -> DaemonInfo
 * Bad params are -32602 errors naming the field ("params.size: ...").
 */
import { parseSize } from '../backends/size.js';
import { ConfigError, checkName, parseDeviceOptions } from './config.js';
import type { DeviceManager } from './manager.js';
import { INVALID_PARAMS, RpcError, type RpcMethods } from './daemon/rpc.js';

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
    throw new RpcError(INVALID_PARAMS, 'invalid params: expected an object, got a list');
  const o = (value ?? {}) as Record<string, unknown>;
  for (const key of Object.keys(o)) {
    if (!allowed.includes(key)) {
      throw new RpcError(
        INVALID_PARAMS,
        `params.${key}: unknown parameter${allowed.length > 0 ? ` (known: ${allowed.join(', ')})` : ' (none taken)'}`,
      );
    }
  }
  return o;
}

function name(o: Record<string, unknown>): string {
  try {
    return checkName(o.name, 'params.name');
  } catch (err) {
    throw new RpcError(INVALID_PARAMS, (err as Error).message);
  }
}

export function createApi(manager: DeviceManager, info: () => DaemonInfo): RpcMethods {
  return {
    'device.add': (p: unknown) => {
      let config;
      try {
        config = parseDeviceOptions(Array.isArray(p) ? p[0] : p, 'params');
      } catch (err) {
        if (err instanceof ConfigError) throw new RpcError(INVALID_PARAMS, err.message);
        throw err;
      }
      return manager.add(config);
    },
    'device.remove': async (p: unknown) => {
      const o = params(p, ['name', 'force']);
      const n = name(o);
      if (o.force !== undefined && typeof o.force !== 'boolean') {
        throw new RpcError(
          INVALID_PARAMS,
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
          INVALID_PARAMS,
          `params.size: expected a size in bytes or like "2G", got ${o.size === undefined ? 'nothing' : JSON.stringify(o.size)}`,
        );
      }
      return manager.resize(n, size);
    },
    'daemon.info': (p: unknown) => {
      params(p, []);
      return info();
    },
  };
}

/**
 * `vduse blk`: the vduse-blk daemon. Order of things (and the reverse on the way out):
 *   open backend -> VDUSE_CREATE_DEV -> open /dev/vduse/NAME + serve -> vdpa DEV_NEW (worker thread) ->
 *   print the device path -> wait for SIGINT/SIGTERM -> DEV_DEL (still serving: it resets the device) ->
 *   close the dev fd -> VDUSE_DESTROY_DEV -> close the backend.
 */
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';

import type { BlockBackend } from '../backends/backend.js';
import { FileBackend } from '../backends/file-backend.js';
import { openBackend, parseBackendSpec } from '../backends/index.js';
import { VirtioBlkDevice } from '../devices/blk/device.js';
import type { SysBinding } from '../sys/binding.js';
import { VduseControl, describeDevice } from '../vduse/control.js';
import { VduseDevice } from '../vduse/device.js';
import type { Logger } from '../vduse/logger.js';
import { VdpaClient } from '../vduse/vdpa-client.js';
import type { BlkCommand } from './args.js';
import { CountingBackend } from './stats.js';
import {
  VDPA_BUS,
  boundDriver,
  findBlockDevice,
  findVhostDevice,
  rebindVdpaDevice,
  waitFor,
  waitForDevNode,
} from './sysfs.js';

export interface BlkEnvironment {
  binding: SysBinding;
  logger: Logger;
  /** Where the ready line goes (stdout). */
  print(line: string): void;
  /** Resolves with the signal name that asks the daemon to stop. */
  stopSignal: Promise<string>;
  /** Registers a handler for SIGHUP / SIGUSR1. */
  onSignal(signal: 'SIGHUP' | 'SIGUSR1', handler: () => void): void;
  vdpa?: VdpaClient;
}

/** Runs the daemon until the stop signal; resolves when everything is torn down. Throws on setup failures. */
export async function runBlk(cmd: BlkCommand, env: BlkEnvironment): Promise<void> {
  const { binding, logger: log } = env;
  const cleanup: { what: string; run: () => Promise<void> | void }[] = [];
  const unwind = async (): Promise<void> => {
    let failed: unknown = null;
    while (cleanup.length > 0) {
      const step = cleanup.pop()!;
      try {
        log.debug(`teardown: ${step.what}`);
        await step.run();
      } catch (err) {
        log.error(`${step.what}: ${(err as Error).message}`);
        failed ??= err;
      }
    }
    if (failed !== null) throw failed;
  };

  try {
    const spec = parseBackendSpec(cmd.backend);
    // --readonly also opens the storage read-only, so nothing can write to it.
    const opened = cmd.readOnly && 'readOnly' in spec ? { ...spec, readOnly: true } : spec;
    const inner = await openBackend(opened, { binding, log: (m: string) => log.warn(m) });
    const backend = new CountingBackend(inner);
    cleanup.push({ what: 'close the backend', run: () => backend.close() });

    const device = new VirtioBlkDevice({
      backend,
      name: cmd.name,
      numQueues: cmd.queues,
      queueSize: cmd.queueSize,
      logicalBlockSize: cmd.logicalBlockSize,
      readOnly: cmd.readOnly,
      packed: cmd.packed,
      logger: log,
      ...(cmd.serial !== undefined ? { serial: cmd.serial } : {}),
    });

    const control = VduseControl.open(binding);
    cleanup.push({ what: 'close the control device', run: () => control.close() });
    control.createDevice(describeDevice(cmd.name, device));
    log.debug(`created VDUSE device ${cmd.name}`);
    cleanup.push({ what: `destroy VDUSE device ${cmd.name}`, run: () => control.destroyDevice(cmd.name) });

    const dev = VduseDevice.open({ binding, name: cmd.name, device, logger: log });
    cleanup.push({ what: `close /dev/vduse/${cmd.name}`, run: () => dev.close() });
    dev.on('broken', () => {
      log.error(`device ${cmd.name} is broken (a message timed out); stopping`);
      process.kill(process.pid, 'SIGTERM');
    });

    const vdpa = env.vdpa ?? new VdpaClient();
    if (!env.vdpa) cleanup.push({ what: 'stop the vdpa worker', run: () => vdpa.close() });
    let ready = `/dev/vduse/${cmd.name}`;
    if (cmd.attach) {
      await vdpa.addDevice(cmd.name);
      cleanup.push({ what: `detach ${cmd.name} from the vdpa bus`, run: () => vdpa.deleteDevice(cmd.name) });
      ready = await attachedPath(cmd, log);
    } else {
      // Attached by someone else (vdpa dev add) meanwhile: detach it on the way out, or it cannot be destroyed.
      cleanup.push({
        what: `detach ${cmd.name} from the vdpa bus if attached`,
        run: async () => {
          if (existsSync(join(VDPA_BUS, 'devices', cmd.name))) await vdpa.deleteDevice(cmd.name);
        },
      });
    }
    env.print(ready);
    log.info(
      `serving ${cmd.name}: ${describeSize(device.capacityBytes)}, ${cmd.queues} queue(s) of ${cmd.queueSize}${cmd.readOnly ? ', read-only' : ''}${cmd.packed ? ', packed rings offered' : ''}`,
    );

    env.onSignal('SIGHUP', () => void resizeFromBackend(device, inner, log));
    env.onSignal('SIGUSR1', () => {
      if (cmd.stats) log.info(`stats: ${backend.format()}`);
    });
    const signal = await env.stopSignal;
    log.info(`${signal}: stopping ${cmd.name}`);
    if (cmd.stats)
      cleanup.push({ what: 'print the stats', run: () => log.info(`stats: ${backend.format()}`) });
    // print stats after everything else is down: move it to the bottom of the stack
    if (cmd.stats) cleanup.unshift(cleanup.pop()!);
  } catch (err) {
    await unwind().catch(() => undefined);
    throw err;
  }
  await unwind();
}

async function attachedPath(cmd: BlkCommand, log: Logger): Promise<string> {
  if (cmd.driver === 'vhost-vdpa') {
    if (boundDriver(cmd.name) !== 'vhost_vdpa') await rebindVdpaDevice(cmd.name, 'vhost_vdpa');
    const node = await waitFor(() => findVhostDevice(cmd.name), 5000);
    if (node === null)
      throw new Error(`vdpa device ${cmd.name} has no vhost-vdpa char device (is vhost_vdpa loaded?)`);
    return (await waitForDevNode(node, 5000)) ?? `/dev/${node}`;
  }
  const driver = boundDriver(cmd.name);
  if (driver !== 'virtio_vdpa') {
    if (driver === null) log.debug(`${cmd.name} is not bound to a bus driver yet`);
    await rebindVdpaDevice(cmd.name, 'virtio_vdpa');
  }
  const block = await waitFor(() => findBlockDevice(cmd.name), 10000);
  if (block === null) {
    throw new Error(`no block device appeared for ${cmd.name} (is virtio_blk loaded? see dmesg)`);
  }
  return (await waitForDevNode(block, 5000)) ?? `/dev/${block}`;
}

/** SIGHUP: the file behind a file backend may have grown (truncate -s): resize the device to it. */
async function resizeFromBackend(device: VirtioBlkDevice, backend: BlockBackend, log: Logger): Promise<void> {
  try {
    if (!(backend instanceof FileBackend) || backend.kind !== 'file') {
      log.warn('SIGHUP: only a file backend (a regular file) can be resized; ignored');
      return;
    }
    const lbs = device.options.logicalBlockSize;
    const size = statSync(backend.path).size;
    const bytes = size - (size % lbs);
    if (bytes === device.capacityBytes) {
      log.info(`SIGHUP: size unchanged (${describeSize(bytes)})`);
      return;
    }
    await device.resize(bytes);
    log.info(`resized to ${describeSize(bytes)}`);
  } catch (err) {
    log.error(`resize failed: ${(err as Error).message}`);
  }
}

function describeSize(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < units.length - 1 && v % 1024 === 0) {
    v /= 1024;
    i++;
  }
  return `${v} ${units[i]}`;
}

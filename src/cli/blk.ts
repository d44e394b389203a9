/**
 * `vduse blk`: the vduse-blk daemon for one device.
 *
 * NOTE: the device lifecycle (open backend -> VDUSE_CREATE_DEV -> open /dev/vduse/NAME + serve -> vdpa DEV_NEW
 * -> wait for the block device; and the ordered teardown DEV_DEL -> close the dev fd -> VDUSE_DESTROY_DEV ->
 * close the backend; resize) lives in src/mgmt/blk/runner.ts (BlkRunner), shared with `vduse serve`. Change it
 * there, not here. This file only wires a BlkRunner to the command line: print the device path, wait for
 * SIGINT/SIGTERM, SIGHUP = resize from the backend, SIGUSR1 = print the counters.
 */
import { BlkRunner, describeSize } from '../mgmt/blk/runner.js';
import { VhostUserBlkRunner } from '../mgmt/blk/vhost-user-runner.js';
import type { SysBinding } from '../sys/binding.js';
import { isVduseTsError, messageOf } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { ControlLatency } from '../transports/vduse/recovery/reconnect.js';
import { VdpaClient } from '../transports/vdpa/client.js';
import type { BlkCommand } from './args.js';

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

/** The vdpa client of a foreground command: the one given (its owner closes it), or a new one closed at exit. */
export function ownVdpa(env: { vdpa?: VdpaClient; logger: Logger }): {
  vdpa: VdpaClient;
  closeVdpa: () => Promise<void>;
} {
  const vdpa = env.vdpa ?? new VdpaClient();
  const closeVdpa = async (): Promise<void> => {
    if (env.vdpa) return;
    try {
      env.logger.debug('teardown: stop the vdpa worker');
      await vdpa.close();
    } catch (err) {
      env.logger.error(`stop the vdpa worker: ${messageOf(err)}`);
    }
  };
  return { vdpa, closeVdpa };
}

/** What a foreground command serves: a VDUSE device runner (BlkRunner, NetRunner). */
interface ForegroundRunner {
  readonly path: string;
  on(event: 'broken', listener: (reason: Error) => void): unknown;
  stop(): Promise<void>;
}

/**
 * The life of a VDUSE device in a foreground command around what the command adds: start it (the vdpa client
 * is closed again when that fails), print its path, stop the process when the device breaks; `serving` runs
 * once it is up (log it, install signal handlers); at the stop signal it is stopped and the vdpa client closed,
 * then `stopped` runs (final counters) and a failed stop's error is thrown.
 */
export async function runForeground<R extends ForegroundRunner>(
  name: string,
  env: Omit<BlkEnvironment, 'onSignal'>,
  start: (deps: { binding: SysBinding; logger: Logger; vdpa: VdpaClient }) => Promise<R>,
  hooks: { serving(runner: R): void; stopped(runner: R): void },
): Promise<void> {
  const log = env.logger;
  const { vdpa, closeVdpa } = ownVdpa(env);
  let runner: R;
  try {
    runner = await start({ binding: env.binding, logger: log, vdpa });
  } catch (err) {
    await closeVdpa();
    throw err;
  }
  runner.on('broken', () => {
    log.error(`device ${name} is broken (a message timed out); stopping`);
    process.kill(process.pid, 'SIGTERM');
  });
  env.print(runner.path);
  hooks.serving(runner);
  const signal = await env.stopSignal;
  log.info(`${signal}: stopping ${name}`);
  let failed: unknown = null;
  try {
    await runner.stop();
  } catch (err) {
    failed = err;
  }
  await closeVdpa();
  hooks.stopped(runner);
  if (failed !== null) throw failed;
}

/** Runs the daemon until the stop signal; resolves when everything is torn down. Throws on setup failures. */
export async function runBlk(cmd: BlkCommand, env: BlkEnvironment): Promise<void> {
  if (cmd.vhostUser !== undefined) return runVhostUserBlk(cmd, env);
  const log = env.logger;
  let control: ControlLatency | null = null;
  await runForeground(cmd.name, env, (deps) => BlkRunner.start(cmd, deps), {
    serving: (runner) => {
      log.info(
        `serving ${cmd.name}: ${describeSize(runner.device.capacityBytes)}, ${cmd.queues} queue(s) of ${cmd.queueSize}${cmd.queueThreads > 1 ? ` on ${cmd.queueThreads} threads` : ''}${cmd.readOnly ? ', read-only' : ''}${cmd.packed ? ', packed rings offered' : ''}`,
      );
      env.onSignal('SIGHUP', () => void resizeFromBackend(runner, log));
      const latency = new ControlLatency(() => runner.vduse.controlStats);
      control = latency;
      env.onSignal('SIGUSR1', () => {
        if (!cmd.stats) return;
        log.info(`stats: ${runner.formatCounters()}`);
        log.info(latency.format());
      });
    },
    stopped: (runner) => {
      const latency = control as ControlLatency | null;
      latency?.stop();
      if (latency !== null) log.info(latency.format());
      // print stats after everything else is down
      if (cmd.stats) log.info(`stats: ${runner.formatCounters()}`);
    },
  });
}

/**
 * `vduse blk --vhost-user PATH`: serve the device as a vhost-user-blk back-end on PATH (no VDUSE, no vdpa bus)
 * until the stop signal; VMMs may come and go meanwhile. Prints PATH once listening.
 */
async function runVhostUserBlk(cmd: BlkCommand, env: BlkEnvironment): Promise<void> {
  const { binding, logger: log } = env;
  const runner = await VhostUserBlkRunner.start(cmd, { binding, logger: log });
  env.print(runner.path);
  log.info(
    `serving ${cmd.name} over vhost-user on ${runner.path}: ${describeSize(runner.device.capacityBytes)}, ${cmd.queues} queue(s) of ${cmd.queueSize}${cmd.queueThreads > 1 ? ` on ${cmd.queueThreads} threads` : ''}${cmd.readOnly ? ', read-only' : ''}`,
  );
  env.onSignal('SIGHUP', () => void resizeFromBackend(runner, log));
  env.onSignal('SIGUSR1', () => {
    if (cmd.stats) log.info(`stats: ${runner.formatCounters()}`);
  });
  const signal = await env.stopSignal;
  log.info(`${signal}: stopping ${cmd.name}`);
  await runner.stop();
  if (cmd.stats) log.info(`stats: ${runner.formatCounters()}`);
}

/** SIGHUP: the file behind a file backend may have grown (truncate -s): resize the device to it. */
async function resizeFromBackend(runner: BlkRunner | VhostUserBlkRunner, log: Logger): Promise<void> {
  try {
    const before = runner.device.capacityBytes;
    const bytes = await runner.resize();
    if (bytes === before) log.info(`SIGHUP: size unchanged (${describeSize(bytes)})`);
    else log.info(`resized to ${describeSize(bytes)}`);
  } catch (err) {
    if (isVduseTsError(err, 'ERR_MGMT_RESIZE_NO_FILE')) {
      log.warn('SIGHUP: only a file backend (a regular file) can be resized; ignored');
    } else log.error(`resize failed: ${messageOf(err)}`);
  }
}

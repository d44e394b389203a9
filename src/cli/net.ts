/**
 * `vduse net`: a virtio-net device with a TAP backend, in the foreground.
 *
 * The device lifecycle (open the tap -> VDUSE_CREATE_DEV -> serve -> vdpa DEV_NEW -> wait for the guest's
 * interface; and the ordered teardown) lives in src/mgmt/net/runner.ts (NetRunner, on the shared DeviceRunner).
 * This file wires it to the command line: print the interface (or vhost node), wait for SIGINT/SIGTERM,
 * SIGUSR1 = print the counters.
 */
import { describeNet, NetRunner } from '../mgmt/net/runner.js';
import type { NetCommand } from './args.js';
import { ownVdpa, type BlkEnvironment } from './blk.js';

export type NetEnvironment = Omit<BlkEnvironment, 'onSignal'> & {
  /** Registers a handler for SIGUSR1. */
  onSignal(signal: 'SIGUSR1', handler: () => void): void;
  /** The tun clone device (default /dev/net/tun). */
  tunPath?: string;
};

/** Runs the device until the stop signal; resolves when everything is torn down. Throws on setup failures. */
export async function runNet(cmd: NetCommand, env: NetEnvironment): Promise<void> {
  const { binding, logger: log } = env;
  const { vdpa, closeVdpa } = ownVdpa(env);
  let runner: NetRunner;
  try {
    runner = await NetRunner.start(
      cmd,
      { binding, logger: log, vdpa },
      env.tunPath !== undefined ? { tunPath: env.tunPath } : {},
    );
  } catch (err) {
    await closeVdpa();
    throw err;
  }
  runner.on('broken', () => {
    log.error(`device ${cmd.name} is broken (a message timed out); stopping`);
    process.kill(process.pid, 'SIGTERM');
  });
  env.print(runner.path);
  log.info(`serving ${cmd.name}: ${describeNet(runner)}, queue size ${cmd.queueSize}`);
  env.onSignal('SIGUSR1', () => {
    if (cmd.stats) log.info(`stats: ${runner.formatCounters()}`);
  });
  const signal = await env.stopSignal;
  log.info(`${signal}: stopping ${cmd.name}`);
  let failed: unknown = null;
  try {
    await runner.stop();
  } catch (err) {
    failed = err;
  }
  await closeVdpa();
  if (cmd.stats) log.info(`stats: ${runner.formatCounters()}`);
  if (failed !== null) throw failed;
}

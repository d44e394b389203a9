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
import { runForeground, type BlkEnvironment } from './blk.js';

export type NetEnvironment = Omit<BlkEnvironment, 'onSignal'> & {
  /** Registers a handler for SIGUSR1. */
  onSignal(signal: 'SIGUSR1', handler: () => void): void;
  /** The tun clone device (default /dev/net/tun). */
  tunPath?: string;
};

/** Runs the device until the stop signal; resolves when everything is torn down. Throws on setup failures. */
export async function runNet(cmd: NetCommand, env: NetEnvironment): Promise<void> {
  const log = env.logger;
  const options = env.tunPath !== undefined ? { tunPath: env.tunPath } : {};
  await runForeground(cmd.name, env, (deps) => NetRunner.start(cmd, deps, options), {
    serving: (runner) => {
      log.info(`serving ${cmd.name}: ${describeNet(runner)}, queue size ${cmd.queueSize}`);
      env.onSignal('SIGUSR1', () => {
        if (cmd.stats) log.info(`stats: ${runner.formatCounters()}`);
      });
    },
    stopped: (runner) => {
      if (cmd.stats) log.info(`stats: ${runner.formatCounters()}`);
    },
  });
}

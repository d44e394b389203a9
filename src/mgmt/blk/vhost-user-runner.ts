/**
 * VhostUserBlkRunner: one virtio-blk device served as a vhost-user-blk back-end on a Unix socket
 * (`vduse blk --vhost-user PATH`, a `vhost-user: PATH` device of `vduse serve`). No VDUSE: no /dev/vduse, no
 * vdpa bus; the VMM connects to PATH (mode 0600), and may disconnect and come back while the daemon runs.
 *
 * Order: open the backend -> make the device -> listen on PATH. stop(): drop the VMM (its queues stop, the
 * device is reset and its requests settle), remove the socket, close the backend.
 */
import { EventEmitter } from 'node:events';
import { existsSync } from 'node:fs';

import type { BlockBackend } from '../../backends/backend.js';
import type { CountingBackend } from '../../backends/counting-backend.js';
import { parseBackendSpec } from '../../backends/index.js';
import type { FileBackendSpec } from '../../backends/spec.js';
import type { Logger } from '../../common/logger.js';
import { VirtioBlkDevice } from '../../devices/blk/device.js';
import type { SysBinding } from '../../sys/binding.js';
import { VhostUserBackend } from '../../transports/vhost-user/backend.js';
import { MgmtError } from '../daemon/errors.js';
import { Teardown, type RunnerState, type StopMode } from '../runner/device-runner.js';
import type { BlkDeviceConfig } from './options.js';
import { startBlkWarmup, stopAtFirstRequest } from './warmup.js';
import {
  blkThreadOptions,
  followBackendSize,
  formatBackendCounters,
  removeCreatedFile,
  resizeServedBlk,
} from './runner.js';
import {
  servedBlkCounters,
  blkDeviceOptions,
  blkThreadSpec,
  openBlkBackend,
  type BlkCounters,
} from './thread-device.js';
import { UsageError } from '../../common/errors.js';

export interface VhostUserRunnerDeps {
  binding: SysBinding;
  logger: Logger;
}

export class VhostUserBlkRunner extends EventEmitter<{ broken: [reason: Error] }> {
  readonly config: Readonly<BlkDeviceConfig>;
  readonly device: VirtioBlkDevice;
  readonly backend: CountingBackend;
  readonly innerBackend: BlockBackend;
  readonly transport: VhostUserBackend;
  readonly startedAt = Date.now();
  readonly #teardown: Teardown;
  #state: RunnerState = 'starting';

  private constructor(
    config: BlkDeviceConfig,
    parts: {
      device: VirtioBlkDevice;
      backend: CountingBackend;
      inner: BlockBackend;
      transport: VhostUserBackend;
      teardown: Teardown;
    },
  ) {
    super();
    this.config = Object.freeze({ ...config });
    this.device = parts.device;
    this.backend = parts.backend;
    this.innerBackend = parts.inner;
    this.transport = parts.transport;
    this.#teardown = parts.teardown;
  }

  /** Open the backend, make the device and listen on the socket. On failure everything is undone. */
  static async start(config: BlkDeviceConfig, deps: VhostUserRunnerDeps): Promise<VhostUserBlkRunner> {
    const { binding, logger: log } = deps;
    const path = config.vhostUser;
    if (path === undefined)
      throw new MgmtError('ERR_MGMT_VHOST_USER', `${config.name}: no vhost-user socket path`);
    const teardown = new Teardown(log);
    let createdFile: string | null = null;
    try {
      const spec = parseBackendSpec(config.backend);
      const threads = config.queueThreads > 1 ? config.queueThreads : 0;
      if (threads > 0 && spec.kind === 'memory') {
        throw new UsageError(
          'queue threads cannot serve a memory backend (its data lives in one thread); use a file on tmpfs instead',
          { code: 'ERR_MGMT_THREADS_MEMORY' },
        );
      }
      if (spec.kind === 'file') {
        const file = spec as FileBackendSpec;
        if (file.size !== undefined && !existsSync(file.path)) createdFile = file.path;
      }
      let served: VirtioBlkDevice | null = null;
      if (threads === 0) {
        const warm = startBlkWarmup(blkThreadOptions(config), log, {
          stop: stopAtFirstRequest(() => served),
        });
        teardown.add('finish the warm-up', () => warm.then(() => undefined));
      }
      const { inner, backend } = await openBlkBackend(config, { binding, logger: log });
      teardown.add('close the backend', () => backend.close());
      const threadOptions = blkThreadOptions(config);
      const device = new VirtioBlkDevice(blkDeviceOptions(threadOptions, backend, log));
      served = device;
      const transport = new VhostUserBackend({
        binding,
        device,
        logger: log,
        ...(threads > 0
          ? { queueThreads: { threads, spec: blkThreadSpec(threadOptions), debug: true } }
          : {}),
      });
      teardown.add(`stop serving vhost-user on ${path}`, () => transport.close());
      transport.listen(path);
      const runner = new VhostUserBlkRunner(config, { device, backend, inner, transport, teardown });
      followBackendSize(
        inner,
        config,
        log,
        (size) => (runner.state === 'running' ? runner.resize(size) : null),
        (what, run) => teardown.add(what, run),
      );
      runner.#state = 'running';
      return runner;
    } catch (err) {
      await teardown.run().catch(() => undefined);
      if (createdFile !== null) removeCreatedFile(createdFile, log);
      throw err;
    }
  }

  get name(): string {
    return this.config.name;
  }

  get state(): RunnerState {
    return this.#state;
  }

  /** The socket path. */
  get path(): string {
    return this.config.vhostUser!;
  }

  currentPath(): string {
    return this.path;
  }

  /** Online resize (see BlkRunner.resize); a connected VMM is told with CONFIG_CHANGE_MSG. */
  async resize(bytes?: number): Promise<number> {
    return resizeServedBlk(this, this.transport.queueThreads, bytes);
  }

  /** The negotiated features (0 while no VMM got that far). */
  get features(): bigint {
    return this.transport.features;
  }

  /** Transport counters, as VduseDevice.stats has them (no message latency here: 0). */
  get stats(): {
    kicks: Float64Array;
    interrupts: Float64Array;
    configInterrupts: number;
    messages: number;
    messageMaxMs: number;
  } {
    const n = this.device.numQueues;
    const c = this.transport.counters;
    return {
      kicks: c.subarray(0, n),
      interrupts: c.subarray(n, 2 * n),
      configInterrupts: this.transport.configNotifications,
      messages: this.transport.messages,
      messageMaxMs: 0,
    };
  }

  get inFlight(): number {
    return this.transport.queueThreads === null ? this.device.inFlight : this.counters().inFlight;
  }

  /** The device's counters: this thread's device, plus every queue thread's. */
  counters(): BlkCounters {
    return servedBlkCounters(this.device, this.backend, this.transport.queueThreads);
  }

  formatCounters(): string {
    return formatBackendCounters(this.counters());
  }

  /** Drop the VMM, remove the socket, close the backend (once; a second call waits for the first). Nothing persists. */
  stop(_mode?: StopMode): Promise<void> {
    if (!this.#teardown.started) this.#state = 'stopping';
    return this.#teardown.run().finally(() => {
      this.#state = 'stopped';
    });
  }
}

/**
 * The VDUSE side of serving queues (a QueueTransport for the engine, ../engine/data-path.ts): a kick source is a
 * fresh eventfd given to the kernel with VDUSE_VQ_SETUP_KICKFD, a signal is VDUSE_VQ_INJECT_IRQ, guest memory is
 * the device's IOTLB (IotlbMemory over VDUSE_IOTLB_GET_FD), the in-flight log of a queue is its part of the
 * state log. On the main thread the device builds it over its own memory and state log; in a queue thread
 * createThreadTransport builds it from a serializable spec (fds are process-wide; the thread maps memory and
 * the state log itself).
 */
import { closeSync } from 'node:fs';

import { EFD_CLOEXEC, EFD_NONBLOCK, type SysBinding } from '../../sys/binding.js';
import { IotlbMemory } from '../../memory/iotlb-memory.js';
import { VDUSE_VQ_INJECT_IRQ } from '../../uapi/vduse.js';
import type { QueueTransport } from '../engine/data-path.js';
import type { CreateThreadTransport, ThreadTransportSpec } from '../engine/threads/protocol.js';
import { deviceFdSource } from './iotlb-source.js';
import { vqInjectIrq, vqSetupKickfd } from './ioctls.js';
import { StateLog } from './recovery/state-log.js';

/** What a queue thread needs to build the VDUSE side: the dev fd and the state log file, if any. */
export interface VduseThreadTransportOptions {
  devFd: number;
  stateLog: string | null;
}

/** The engine's hooks for the VDUSE device on `devFd`. */
export function vduseQueueTransport(
  binding: SysBinding,
  devFd: number,
  memory: IotlbMemory,
  stateLog: StateLog | null,
  closeFd: (fd: number) => void = closeSync,
): QueueTransport {
  return {
    memory,
    openKick(index) {
      const fd = binding.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
      try {
        vqSetupKickfd(binding, devFd, index, fd);
      } catch (err) {
        closeFd(fd);
        throw err;
      }
      return fd;
    },
    signal(index) {
      vqInjectIrq(binding, devFd, index);
    },
    interruptTarget: () => ({ fd: devFd, request: VDUSE_VQ_INJECT_IRQ }),
    inflightLog(index) {
      return stateLog?.queue(index);
    },
  };
}

/** The spec a queue thread builds the VDUSE side from. */
export function vduseThreadTransport(options: VduseThreadTransportOptions): ThreadTransportSpec {
  return { module: import.meta.url, options };
}

/** ThreadTransportSpec entry point (in a queue thread): its own IOTLB mappings and state-log mapping. */
export const createThreadTransport: CreateThreadTransport<VduseThreadTransportOptions> = (options, env) => {
  const { binding } = env;
  const memory = new IotlbMemory(binding, deviceFdSource(binding, options.devFd));
  const stateLog = options.stateLog !== null ? StateLog.open(binding, options.stateLog) : null;
  return {
    ...vduseQueueTransport(binding, options.devFd, memory, stateLog),
    close: () => stateLog?.close(),
  };
};

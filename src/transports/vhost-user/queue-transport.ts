/**
 * The vhost-user side of serving queues on queue threads (`--queue-threads N`; ../engine/threads/): each thread
 * maps the VMM's memory regions into a RegionMemory of its own, signals the VMM's call eventfds and watches
 * its kick eventfds, and maps the inflight region itself. Fds are process-wide, so the thread uses them by
 * number: the main thread owns every one of them and closes it only after the threads have stopped using it
 * (a region fd once the next table is mapped, a kick or call fd once the rings were stopped).
 *
 * What changes while the VMM is connected (the memory table, the fds, the inflight region) reaches a thread with
 * each start (DataPathStart.transportState, a VhostUserThreadState): a table or region that changed is mapped
 * again there; the old mappings retire and are unmapped once no request in flight can write into them.
 */
import type { SysBinding } from '../../sys/binding.js';
import type { InflightPayload } from '../../uapi/vhost-user.js';
import { RegionMemory, type RegionSpec } from '../../memory/region-memory.js';
import type { QueueTransport } from '../engine/data-path.js';
import type { CreateThreadTransport, ThreadTransportSpec } from '../engine/threads/protocol.js';
import { VhostUserError } from './errors.js';
import { InflightRegion } from './inflight.js';

/** What a queue thread builds the vhost-user side from. */
export interface VhostUserThreadTransportOptions {
  numQueues: number;
}

/** What each start tells a thread (plain data; the fds are the main thread's). */
export interface VhostUserThreadState {
  /** Bumped by the main thread for every new memory table. */
  tableVersion: number;
  regions: RegionSpec[];
  /** Kick and call fd per queue index (-1: none). */
  kick: number[];
  call: number[];
  /** Bumped for every new inflight region. */
  inflightVersion: number;
  inflight: { fd: number; payload: InflightPayload } | null;
}

const NO_FD = -1;

/** The spec a queue thread builds the vhost-user side from. */
export function vhostUserThreadTransport(options: VhostUserThreadTransportOptions): ThreadTransportSpec {
  return { module: import.meta.url, options };
}

/** ThreadTransportSpec entry point (in a queue thread). */
export const createThreadTransport: CreateThreadTransport<VhostUserThreadTransportOptions> = (options, env) =>
  vhostUserQueueTransport(env.binding, options.numQueues);

/** The thread's QueueTransport; exported for tests. */
export function vhostUserQueueTransport(binding: SysBinding, numQueues: number): QueueTransport {
  const memory = new RegionMemory(binding);
  let tableVersion = -1;
  let inflightVersion = -1;
  let inflight: InflightRegion | null = null;
  let kick: number[] = [];
  let call: number[] = [];
  return {
    memory,
    begin(state) {
      const s = state as VhostUserThreadState | undefined;
      if (s === undefined) throw new VhostUserError('ERR_VHOST_USER_PROTOCOL', 'no vhost-user thread state');
      if (s.tableVersion !== tableVersion) {
        memory.setTable(s.regions);
        tableVersion = s.tableVersion;
      }
      if (s.inflightVersion !== inflightVersion) {
        const next =
          s.inflight !== null
            ? InflightRegion.open(binding, s.inflight.fd, s.inflight.payload, numQueues)
            : null;
        // the queues were stopped before this start: nothing logs into the old region any more
        inflight?.close();
        inflight = next;
        inflightVersion = s.inflightVersion;
      }
      kick = s.kick;
      call = s.call;
    },
    openKick(index) {
      const fd = kick[index] ?? NO_FD;
      if (fd === NO_FD) throw new VhostUserError('ERR_VHOST_USER_PROTOCOL', `ring ${index} has no kick fd`);
      return fd;
    },
    // The kick fds are the VMM's, held (and closed) by the main thread.
    closeKick: () => undefined,
    signal(index) {
      const fd = call[index] ?? NO_FD;
      if (fd !== NO_FD) binding.eventfdWrite(fd, 1);
    },
    interruptTarget: (index) => ({ fd: call[index] ?? NO_FD, request: 0 }),
    inflightLog(index) {
      return inflight?.queues[index];
    },
    close() {
      inflight?.close();
      inflight = null;
      memory.clear();
    },
  };
}

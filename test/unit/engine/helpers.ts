// Test set-ups of the queue-serving engine shared by its test files.
import assert from 'node:assert/strict';

import { nullLogger, type Logger } from '../../../src/common/logger.js';
import { systemError } from '../../../src/sys/errors.js';
import { FakeBinding, type FakeKickLoop } from '../../../src/testing/fake-binding.js';
import { MockDriver } from '../../../src/testing/mock-driver.js';
import { QueueSet } from '../../../src/transports/engine/queue-set.js';
import { VDUSE_VQ_INJECT_IRQ } from '../../../src/uapi/vduse.js';
import { EchoDevice, splitStart } from '../vduse/helpers.js';

/**
 * A 2-queue QueueSet with a KickLoop (a queue thread's) over FakeBinding: `target` says how interrupts are
 * injected (ioctl on a fake device fd, or call eventfds); `device` defaults to an EchoDevice.
 */
export function kickLoopSet<D extends EchoDevice = EchoDevice>(
  target: 'ioctl' | 'eventfd' = 'ioctl',
  device: D = new EchoDevice() as D,
) {
  const binding = new FakeBinding();
  const q0 = new MockDriver({ size: 16 });
  const q1 = new MockDriver({ size: 16, index: 1, shareWith: q0 });
  const kicks = new Map<number, number>();
  const injected: number[] = [];
  let failIrq: string | null = null;
  const devFd = binding.openDevice({
    ioctl: (request, arg) => {
      assert.equal(request, VDUSE_VQ_INJECT_IRQ);
      if (failIrq !== null) throw systemError(failIrq, 'ioctl');
      injected.push(new DataView((arg as Uint8Array).buffer).getUint32(0, true));
      return 0;
    },
  });
  const calls = [binding.eventfd(0, 0), binding.eventfd(0, 0)];
  const debug: string[] = [];
  const logger: Logger = { ...nullLogger, debug: (m) => debug.push(m) };
  const resets: Error[] = [];
  const set = new QueueSet({
    binding,
    device,
    kickLoop: true,
    transport: {
      memory: q0.memory,
      openKick: (i) => {
        const fd = binding.eventfd(0, 0);
        kicks.set(i, fd);
        return fd;
      },
      signal: () => assert.fail('a folded interrupt went through transport.signal()'),
      interruptTarget: (i) =>
        target === 'ioctl' ? { fd: devFd, request: VDUSE_VQ_INJECT_IRQ } : { fd: calls[i]!, request: 0 },
      inflightLog: () => undefined,
    },
    numQueues: 2,
    logger,
    closeFd: (fd) => binding.close(fd),
    onNeedsReset: (r) => resets.push(r),
  });
  device.bind({ configChanged: () => undefined, needsReset: (r) => set.fail(r) });
  const start = (): number => set.start(splitStart(q0, q1));
  const kick = (drv: MockDriver, index: number): void => {
    drv.addChain({ readable: [new Uint8Array([index + 1])], writable: [1] });
    drv.kick();
    binding.eventfdWrite(kicks.get(index)!, 1);
  };
  /** Only the kick eventfd (the driver's avail.idx as it is). */
  const kickFd = (index: number): void => binding.eventfdWrite(kicks.get(index)!, 1);
  /** The set's KickLoop (the fake's, reached through the binding's only one). */
  let loop: FakeKickLoop | undefined;
  const original = binding.createKickLoop.bind(binding);
  binding.createKickLoop = (...args) => (loop = original(...args) as FakeKickLoop);
  return {
    binding,
    q0,
    q1,
    device,
    set,
    kicks,
    injected,
    calls,
    debug,
    resets,
    start,
    kick,
    kickFd,
    loop: () => loop!,
    failIrq: (code: string | null) => void (failIrq = code),
  };
}

/** IOTLB look-ups of a VDUSE device: VDUSE_IOTLB_GET_FD on its fd, for IotlbMemory. */
import type { IotlbSource } from '../../memory/iotlb-memory.js';
import type { SysBinding } from '../../sys/binding.js';
import { iotlbGetFd } from './ioctls.js';

/** VDUSE_IOTLB_GET_FD on the device fd for the single byte at `iova`; EINVAL means unmapped. */
export function deviceFdSource(binding: SysBinding, devFd: number): IotlbSource {
  return {
    lookup(iova: number) {
      try {
        return iotlbGetFd(binding, devFd, iova, iova);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EINVAL') return null;
        throw err;
      }
    },
  };
}

// The cases and fio workloads of `npm run bench:vm`, shared by the guest runner and the host-side report.

/** Backend kinds; the first contender is always the project, `peer` names the other one. */
export const CASES = [
  { id: 'null', title: 'null backend', peer: 'qsd', peerLabel: 'qemu-storage-daemon (null-co)' },
  { id: 'file', title: 'raw file on guest tmpfs', peer: 'qsd', peerLabel: 'qemu-storage-daemon (file)' },
  { id: 'nbd', title: 'NBD (nbdkit memory)', peer: 'kernel-nbd', peerLabel: 'kernel NBD client' },
  // one image of a one-node Ceph cluster (monitor + bluestore OSD) in the guest, librbd on both sides
  { id: 'rbd', title: 'Ceph RBD (one-node cluster)', peer: 'qsd', peerLabel: 'qemu-storage-daemon (rbd)' },
];

/** fio jobs: 4 KiB random at QD1/QD32, 2 jobs x QD32 (one per queue), 128 KiB sequential at QD8. */
export const WORKLOADS = [
  { id: 'randread-4k-qd1', title: '4K randread QD1', rw: 'randread', bs: '4k', iodepth: 1, numjobs: 1 },
  { id: 'randwrite-4k-qd1', title: '4K randwrite QD1', rw: 'randwrite', bs: '4k', iodepth: 1, numjobs: 1 },
  { id: 'randread-4k-qd32', title: '4K randread QD32', rw: 'randread', bs: '4k', iodepth: 32, numjobs: 1 },
  { id: 'randwrite-4k-qd32', title: '4K randwrite QD32', rw: 'randwrite', bs: '4k', iodepth: 32, numjobs: 1 },
  {
    id: 'randread-4k-qd32-2j',
    title: '4K randread 2 jobs x QD32',
    rw: 'randread',
    bs: '4k',
    iodepth: 32,
    numjobs: 2,
  },
  { id: 'read-128k-qd8', title: '128K seq read QD8', rw: 'read', bs: '128k', iodepth: 8, numjobs: 1 },
  { id: 'write-128k-qd8', title: '128K seq write QD8', rw: 'write', bs: '128k', iodepth: 8, numjobs: 1 },
];

/** Workloads of `--quick`. */
export const QUICK_WORKLOADS = [
  'randread-4k-qd1',
  'randread-4k-qd32',
  'randread-4k-qd32-2j',
  'write-128k-qd8',
];

/** Workloads also measured on freshly started daemons (rows "fresh daemon"). */
export const FRESH_WORKLOADS = ['randread-4k-qd1', 'randread-4k-qd32'];

/** What a fresh-daemon row must reach: our IOPS in the first seconds after start, over our warm IOPS. */
export const FRESH_TARGET = 0.8;

/** The ratio project/peer a row must reach. */
export function targetOf(caseId, workloadId) {
  if (caseId !== 'nbd' && workloadId === 'randread-4k-qd32-2j') return 1.3;
  return 1.0;
}

// Host-side: the vhost-user-blk scenarios against this project's `vduse blk --vhost-user PATH` (see
// vhost-user-scenarios.ts), QEMU 7.2 as the VMM.
import { vhostUserScenarios } from './vhost-user-scenarios.js';

vhostUserScenarios('ours');

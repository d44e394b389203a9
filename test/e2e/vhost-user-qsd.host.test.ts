// Host-side harness check: the vhost-user-blk scenarios against qemu-storage-daemon's export (see
// vhost-user-scenarios.ts).
import { vhostUserScenarios } from './vhost-user-scenarios.js';

vhostUserScenarios('qsd');

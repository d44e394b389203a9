/**
 * Helper library for e2e scenarios (test/e2e/*.test.ts), which run as root inside the test VM.
 * See test/e2e/lib/README.md for an overview and an example scenario.
 */
export * from './env.js';
export * from './exec.js';
export * from './wait.js';
export * from './cleanup.js';
export * from './prereq.js';
export * from './vdpa.js';
export * from './qsd.js';
export * from './blockio.js';
export * from './netns.js';
export * from './host-vm.js';
export * from './vhost-user.js';

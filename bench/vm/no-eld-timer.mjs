// node --import ./bench/vm/no-eld-timer.mjs: an experiment for bench/vm/cpu-probe.mjs, not for production. Makes
// perf_hooks.monitorEventLoopDelay() histograms never start their timer (enable() does nothing), so that a daemon
// that watches its event-loop delay (src/transports/vduse/recovery/reconnect.ts, resolution 10 ms) has no timer
// due every 10 ms: libuv's poll timeout, and so the KickLoop's epoll_wait timeout, can then be infinite.
import module from 'node:module';
import perfHooks from 'node:perf_hooks';

const original = perfHooks.monitorEventLoopDelay;
perfHooks.monitorEventLoopDelay = function monitorEventLoopDelay(options) {
  const h = original.call(this, options);
  h.enable = () => false;
  return h;
};
module.syncBuiltinESMExports();

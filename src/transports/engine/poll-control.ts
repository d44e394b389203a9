/**
 * Adaptive ring polling (issue #16 item 3): whether the engine's wait loop (KickLoop) spins over idle rings
 * before it blocks, decided at run time from what it does to the request rate.
 *
 * Spinning removes the daemon's sleep and wake-up from each request, which is most of a request's time at
 * queue depth 1 (measured: 2.4x at QD1). It also takes a CPU: where the guest needs that CPU (deep queues, the
 * guest CPU-bound; a host core that is not free, e.g. single-threaded TCG, where the spinning vCPU is the one
 * the driver would run on) it costs 10-20 %. QEMU's IOThread rule (grow the window while events come soon
 * after it closes, shrink it when they come late) only looks at event timing, and under a shared core the
 * events come soon after we stop spinning precisely because we stopped. So this controller judges by the
 * outcome: it measures completed requests per epoch (100 ms) with the window closed and then open, keeps the
 * better one (open only when it is better by a margin: a tie costs CPU for nothing) and checks again after a
 * run that doubles while the choice holds (1 s up to 4 s), so a changed workload is followed within seconds and
 * a wrong probe costs one epoch in every few seconds. An idle device (few requests per epoch) never spins.
 *
 * Pure state: the engine feeds it each epoch's count and applies the window it returns.
 */

/** Epoch length (ms): the rate is measured over one. */
export const POLL_EPOCH_MS = 100;
/** The window while polling pays (µs): requests come up to ~1 ms after a completion under emulation. */
export const POLL_WINDOW_US = 1000;
/** Below this many completions in an epoch the device counts as idle: no spinning, no probe. */
export const POLL_MIN_REQUESTS = 20;
/** Polling is kept only when it beats not polling by this fraction. */
export const POLL_MARGIN = 0.1;
/** Epochs a choice runs before it is checked again: the first run, and the longest after confirmations. */
export const POLL_RUN_MIN = 10;
export const POLL_RUN_MAX = 40;

export type PollPhase = 'off' | 'probe-on' | 'on' | 'probe-off';

export interface PollControlOptions {
  /** The window while polling (µs). Default POLL_WINDOW_US. */
  windowUs?: number;
  minRequests?: number;
  margin?: number;
  runMin?: number;
  runMax?: number;
}

export class PollControl {
  readonly windowUs: number;
  readonly #minRequests: number;
  readonly #margin: number;
  readonly #runMin: number;
  readonly #runMax: number;
  #phase: PollPhase = 'off';
  /** Epochs left in the current run ('off' / 'on'). The first probe comes after one measured epoch. */
  #left = 1;
  /** Length of the next run of the current choice (doubles while probes confirm it). */
  #offRun: number;
  #onRun: number;
  /** Requests per ms of the last epoch without / with polling. */
  #offRate = 0;
  #onRate = 0;
  #idleEpoch = false;
  /** Probes made, and those that found polling better. */
  probes = 0;
  wins = 0;

  constructor(options: PollControlOptions = {}) {
    this.windowUs = options.windowUs ?? POLL_WINDOW_US;
    this.#minRequests = options.minRequests ?? POLL_MIN_REQUESTS;
    this.#margin = options.margin ?? POLL_MARGIN;
    this.#runMin = options.runMin ?? POLL_RUN_MIN;
    this.#runMax = options.runMax ?? POLL_RUN_MAX;
    this.#offRun = this.#runMin;
    this.#onRun = this.#runMin;
  }

  get phase(): PollPhase {
    return this.#phase;
  }

  /**
   * The last epoch was idle and the window is closed: nothing changes until requests come again, so the engine
   * may stop counting epochs until the next kick (and then start again from here).
   */
  get idle(): boolean {
    return this.#phase === 'off' && this.#idleEpoch;
  }

  /** The window to apply now (µs; 0: do not spin). */
  get window(): number {
    return this.#phase === 'on' || this.#phase === 'probe-on' ? this.windowUs : 0;
  }

  /**
   * An epoch ended: `completed` requests in `elapsedMs`. Returns the window for the next one (µs).
   */
  epoch(completed: number, elapsedMs: number): number {
    const busy = completed >= this.#minRequests && elapsedMs > 0;
    const rate = busy ? completed / elapsedMs : 0;
    this.#idleEpoch = !busy;
    switch (this.#phase) {
      case 'off':
        this.#offRate = rate;
        if (!busy)
          this.#left = 1; // probe as soon as there is load
        else if (--this.#left <= 0) this.#phase = 'probe-on';
        break;
      case 'probe-on':
        this.probes++;
        if (busy && rate > this.#offRate * (1 + this.#margin)) {
          this.wins++;
          this.#onRate = rate;
          this.#phase = 'on';
          this.#left = this.#onRun;
          this.#offRun = this.#runMin;
        } else {
          this.#phase = 'off';
          this.#left = this.#offRun;
          this.#offRun = Math.min(this.#offRun * 2, this.#runMax);
          this.#onRun = this.#runMin;
        }
        break;
      case 'on':
        this.#onRate = rate;
        if (!busy) {
          this.#phase = 'off';
          this.#left = 1;
          this.#onRun = this.#runMin;
        } else if (--this.#left <= 0) this.#phase = 'probe-off';
        break;
      case 'probe-off':
        this.probes++;
        if (busy && this.#onRate > rate * (1 + this.#margin)) {
          this.wins++;
          this.#offRate = rate;
          this.#onRun = Math.min(this.#onRun * 2, this.#runMax);
          this.#phase = 'on';
          this.#left = this.#onRun;
        } else {
          this.#offRate = rate;
          this.#phase = 'off';
          this.#left = this.#offRun;
          this.#onRun = this.#runMin;
        }
        break;
    }
    return this.window;
  }
}

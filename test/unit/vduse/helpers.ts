import assert from 'node:assert/strict';

/** One turn of the event loop (fake watchers fire from setImmediate). */
export const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

/** Turns the event loop until `cond` holds; fails after 200 turns. */
export async function until(what: string, cond: () => boolean): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (cond()) return;
    await tick();
  }
  assert.fail(`timed out waiting for ${what}`);
}

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { DAEMON_INTERRUPT_BUDGET, tieringFlag } from '../../../src/cli/tiering.js';

test("the daemon lowers V8's interrupt budget unless node was given one or VDUSE_TIERING=default", () => {
  assert.equal(tieringFlag([], {}), `--interrupt-budget=${DAEMON_INTERRUPT_BUDGET}`);
  assert.ok(DAEMON_INTERRUPT_BUDGET > 0 && DAEMON_INTERRUPT_BUDGET < 67584);
  assert.equal(tieringFlag(['--perf-basic-prof'], { VDUSE_TIERING: 'fast' }), tieringFlag([], {}));
  // node's own flag wins, in either spelling
  assert.equal(tieringFlag(['--interrupt-budget=100000'], {}), null);
  assert.equal(tieringFlag(['--interrupt_budget', '100000'], {}), null);
  assert.notEqual(tieringFlag(['--interrupt-budget-for-feedback-allocation=10'], {}), null);
  assert.equal(tieringFlag([], { VDUSE_TIERING: 'default' }), null);
});

/**
 * Cleanup that always runs, in reverse order of registration, even when the test failed half-way.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { TestContext } from 'node:test';

export type CleanupFn = () => void | Promise<void>;

export class Cleanup {
  private readonly steps: { name: string; fn: CleanupFn }[] = [];

  /** Registers a step; steps run last-in first-out. Returns `fn` for convenience. */
  add(name: string, fn: CleanupFn): CleanupFn {
    this.steps.push({ name, fn });
    return fn;
  }

  /**
   * Runs every registered step (each once), newest first. A failing step does not stop the others; the
   * failures are thrown together at the end as one Error naming each step.
   */
  async run(): Promise<void> {
    const failures: string[] = [];
    while (this.steps.length > 0) {
      const step = this.steps.pop()!;
      try {
        await step.fn();
      } catch (e) {
        failures.push(`${step.name}: ${e instanceof Error ? e.message : String(e)}`);
      }
    }
    if (failures.length > 0) throw new Error(`cleanup failed:\n  ${failures.join('\n  ')}`);
  }
}

/** A {@link Cleanup} that runs after the test `t` (pass or fail). */
export function useCleanup(t: TestContext): Cleanup {
  const c = new Cleanup();
  t.after(() => c.run());
  return c;
}

/** A fresh directory `e2e-TAG-XXXXXX` under the (guest's) temp dir, removed with everything in it at cleanup. */
export function tempDir(cleanup: Cleanup, tag: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `e2e-${tag}-`));
  cleanup.add(`remove ${dir}`, () => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/**
 * Lowers the kernel's hung-task threshold to `seconds` for the test (restored at cleanup), so that "no task
 * was reported hung" means something. Returns false when the kernel has no hung-task detector.
 */
export function lowerHungTaskThreshold(cleanup: Cleanup, seconds: number): boolean {
  const knob = '/proc/sys/kernel/hung_task_timeout_secs';
  let old: string;
  try {
    old = fs.readFileSync(knob, 'utf8').trim();
  } catch {
    return false;
  }
  fs.writeFileSync(knob, String(seconds));
  cleanup.add('restore hung_task_timeout_secs', () => fs.writeFileSync(knob, old));
  return true;
}

// The commit a benchmark measured, for its report: shared by the bench:* commands.
import { spawnSync } from 'node:child_process';

/** The short hash of HEAD in `root`, '-dirty' when the tree had changes outside bench/results; 'unknown' outside git. */
export function commitOf(root) {
  const git = (...args) => spawnSync('git', args, { cwd: root, encoding: 'utf8' });
  const head = git('rev-parse', '--short', 'HEAD');
  if (head.status !== 0) return 'unknown';
  const dirty = git('status', '--porcelain', '--', '.', ':!bench/results').stdout.trim() !== '';
  return `${head.stdout.trim()}${dirty ? '-dirty' : ''}`;
}

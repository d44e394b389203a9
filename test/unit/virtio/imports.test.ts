// The virtqueue engines import one way: no file of src/virtio imports a file that (directly or through others)
// imports it back. Type-only imports count: they tie the files together for a reader just the same.
import assert from 'node:assert/strict';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { dirname, join, normalize } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pkg = join(dir, 'package.json');
    if (existsSync(pkg) && (JSON.parse(readFileSync(pkg, 'utf8')) as { name?: string }).name === 'vduse-ts')
      return dir;
    const up = dirname(dir);
    if (up === dir) throw new Error('cannot find the vduse-ts package root');
    dir = up;
  }
}

/** Relative imports of every .ts file under `dir` (paths relative to `dir`, '.js' read as '.ts'). */
export function importGraph(dir: string): Map<string, string[]> {
  const graph = new Map<string, string[]>();
  for (const file of readdirSync(dir)) {
    if (!file.endsWith('.ts')) continue;
    const text = readFileSync(join(dir, file), 'utf8');
    const targets: string[] = [];
    for (const m of text.matchAll(/(?:^|\n)\s*(?:import|export)\b[^'"]*?from\s*'(\.[^']+)'/g)) {
      const target = normalize(m[1]!.replace(/\.js$/, '.ts'));
      if (!target.includes('/')) targets.push(target);
    }
    graph.set(file, targets);
  }
  return graph;
}

/** A cycle in `graph` as a list of files (first = last), or null. */
export function findCycle(graph: Map<string, string[]>): string[] | null {
  const state = new Map<string, 'open' | 'done'>();
  const stack: string[] = [];
  const visit = (node: string): string[] | null => {
    const s = state.get(node);
    if (s === 'done') return null;
    if (s === 'open') return [...stack.slice(stack.indexOf(node)), node];
    state.set(node, 'open');
    stack.push(node);
    for (const next of graph.get(node) ?? []) {
      const cycle = visit(next);
      if (cycle !== null) return cycle;
    }
    stack.pop();
    state.set(node, 'done');
    return null;
  };
  for (const node of graph.keys()) {
    const cycle = visit(node);
    if (cycle !== null) return cycle;
  }
  return null;
}

describe('src/virtio imports', () => {
  it('the checker finds a cycle when there is one', () => {
    const graph = new Map([
      ['a.ts', ['b.ts']],
      ['b.ts', ['c.ts']],
      ['c.ts', ['a.ts']],
      ['d.ts', ['a.ts']],
    ]);
    assert.deepEqual(findCycle(graph), ['a.ts', 'b.ts', 'c.ts', 'a.ts']);
    assert.equal(findCycle(new Map([['a.ts', ['b.ts']]])), null);
  });

  it('no file imports a file that imports it back', () => {
    const graph = importGraph(join(packageRoot(), 'src', 'virtio'));
    assert.ok(graph.size >= 6, `read ${graph.size} files`);
    assert.ok(graph.get('split-queue.ts')?.includes('queue-base.ts'), 'the parser sees the imports');
    const cycle = findCycle(graph);
    assert.equal(cycle, null, `import cycle: ${cycle?.join(' -> ')}`);
  });
});

// The layer rule (scripts/layers.mjs, run by `npm run lint`): the real tree keeps it, and a deliberately wrong
// import or an import cycle in a tree made for the test is reported.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import type * as LayersModule from '../../scripts/layers.mjs';

// The checker is plain JavaScript in scripts/ (run by lint before any build): loaded from the source tree.
type Layers = typeof LayersModule;
const { checkLayers, unitOf } = (await import(
  new URL('../../../scripts/layers.mjs', import.meta.url).href
)) as Layers;

const SRC = fileURLToPath(new URL('../../../src', import.meta.url));

function tree(files: Record<string, string>): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vduse-layers-'));
  for (const [rel, text] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(dir, rel)), { recursive: true });
    fs.writeFileSync(path.join(dir, rel), text);
  }
  return dir;
}

describe('layer rule', () => {
  it('src/ keeps it', () => {
    const violations = checkLayers(SRC);
    assert.deepEqual(
      violations.map((v) => `${v.file}:${v.line} ${v.target}: ${v.why}`),
      [],
    );
  });

  it('names the unit of a file', () => {
    assert.equal(unitOf('index.ts'), '(root)');
    assert.equal(unitOf('virtio/split-queue.ts'), 'virtio');
    assert.equal(unitOf('transports/vduse/recovery/state-log.ts'), 'transports/vduse');
    assert.equal(unitOf('mgmt/daemon/rpc.ts'), 'mgmt/daemon');
    assert.equal(unitOf('mgmt/manager.ts'), 'mgmt');
  });

  it('reports an upward import, with file and line', () => {
    const dir = tree({
      'virtio/queue.ts':
        "import type { X } from '../sys/binding.js';\nimport { Manager } from '../mgmt/manager.js';\n",
      'sys/binding.ts': 'export type X = number;\n',
      'mgmt/manager.ts': 'export class Manager {}\n',
    });
    const violations = checkLayers(dir);
    assert.equal(violations.length, 1);
    assert.deepEqual(violations[0], {
      file: 'virtio/queue.ts',
      line: 2,
      target: '../mgmt/manager.js',
      why: 'virtio may not import mgmt',
    });
  });

  it('reports a sideways import between transports and a worker module started from above', () => {
    const dir = tree({
      'transports/engine/set.ts': "export { E } from '../vduse/errors.js';\n",
      'transports/vduse/errors.ts': 'export class E {}\n',
      'backends/pool.ts': "const w = new URL('../mgmt/blk/worker.js', import.meta.url);\nexport { w };\n",
      'mgmt/blk/worker.ts': 'export {};\n',
    });
    const why = checkLayers(dir).map((v) => v.why);
    assert.deepEqual(why.sort(), [
      'backends may not import mgmt/blk',
      'transports/engine may not import transports/vduse',
    ]);
  });

  it('reports an import cycle once, type imports included', () => {
    const dir = tree({
      'virtio/a.ts': "import type { B } from './b.js';\nexport class A { b?: B }\n",
      'virtio/b.ts': "import { A } from './a.js';\nexport class B extends A {}\n",
    });
    const violations = checkLayers(dir);
    assert.equal(violations.length, 1);
    assert.match(
      violations[0]!.why,
      /^import cycle: virtio\/(a|b)\.ts -> virtio\/(a|b)\.ts -> virtio\/(a|b)\.ts$/,
    );
  });

  it('reports a folder the rule does not know', () => {
    const dir = tree({ 'misc/x.ts': "import '../sys/y.js';\n", 'sys/y.ts': 'export {};\n' });
    assert.deepEqual(
      checkLayers(dir).map((v) => v.why),
      ['folder "misc" has no place in the layer rule'],
    );
  });
});

// The layer rule of vduse-ts: which folder of src/ may import which, and no import cycles between files.
//
//   common <- sys <- uapi <- memory <- virtio <- backends/devices <- transports (engine <- vduse, vhost-user; vdpa) <- mgmt
//   (daemon plumbing, the shared device runner, blk and net wiring) <- cli;  testing uses the layers below mgmt;  src/index.ts may import anything.
//
// `node scripts/layers.mjs [SRC_DIR]` prints every violation (file:line, the import, why) and exits 1 if there is
// one. `npm run lint` runs it; test/unit/layers.test.ts shows it failing on a deliberately wrong import.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const BASE = ['common', 'sys', 'uapi'];
const LOW = [...BASE, 'memory', 'virtio', 'backends', 'devices'];
const TRANSPORTS = ['transports/engine', 'transports/vduse', 'transports/vhost-user', 'transports/vdpa'];

/** For each unit (a top folder of src/, or transports/X, mgmt/X): the units it may import. */
export const LAYERS = {
  common: [],
  sys: ['common'],
  uapi: ['common', 'sys'],
  memory: BASE,
  virtio: [...BASE, 'memory'],
  backends: [...BASE, 'memory'],
  devices: [...BASE, 'memory', 'virtio', 'backends'],
  'transports/engine': LOW,
  'transports/vduse': [...LOW, 'transports/engine'],
  'transports/vhost-user': [...LOW, 'transports/engine'],
  'transports/vdpa': BASE,
  testing: [...LOW, ...TRANSPORTS],
  'mgmt/daemon': [...LOW, ...TRANSPORTS],
  'mgmt/runner': [...LOW, ...TRANSPORTS, 'mgmt/daemon'],
  'mgmt/blk': [...LOW, ...TRANSPORTS, 'mgmt/daemon', 'mgmt/runner'],
  'mgmt/net': [...LOW, ...TRANSPORTS, 'mgmt/daemon', 'mgmt/runner'],
  mgmt: [...LOW, ...TRANSPORTS, 'mgmt/daemon', 'mgmt/runner', 'mgmt/blk', 'mgmt/net'],
  cli: [...LOW, ...TRANSPORTS, 'mgmt', 'mgmt/daemon', 'mgmt/runner', 'mgmt/blk', 'mgmt/net'],
  '(root)': null, // src/index.ts: the library surface, may import anything
};

/** The unit of a path relative to src/ ('transports/vduse/device.ts' -> 'transports/vduse'). */
export function unitOf(rel) {
  const parts = rel.split(/[\\/]/);
  if (parts.length === 1) return '(root)';
  if ((parts[0] === 'transports' || parts[0] === 'mgmt') && parts.length > 2)
    return `${parts[0]}/${parts[1]}`;
  return parts[0];
}

const IMPORT = /^\s*(?:import|export)\s+(type\s+)?(?:[^'";]*?\sfrom\s+)?['"](\.{1,2}\/[^'"]+)['"]/gm;
const DYNAMIC = /\bimport\(\s*['"](\.{1,2}\/[^'"]+)['"]\s*\)|new URL\(\s*['"](\.{1,2}\/[^'"]+\.js)['"]/g;

function listTs(dir) {
  const out = [];
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const f = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...listTs(f));
    else if (e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) out.push(f);
  }
  return out;
}

function lineOf(text, index) {
  return text.slice(0, index).split('\n').length;
}

/** Every violation of the rule under `srcDir`: [{ file, line, target, why }]. */
export function checkLayers(srcDir) {
  const root = path.resolve(srcDir);
  const files = listTs(root);
  const violations = [];
  const graph = new Map();
  for (const file of files) {
    const rel = path.relative(root, file);
    const from = unitOf(rel);
    const text = fs.readFileSync(file, 'utf8');
    const deps = [];
    const found = [];
    for (const m of text.matchAll(IMPORT)) found.push({ spec: m[2], index: m.index, spawn: false });
    // new URL('./x.js', import.meta.url): a module started as a worker; a dependency, but not an import cycle
    for (const m of text.matchAll(DYNAMIC))
      found.push({ spec: m[1] ?? m[2], index: m.index, spawn: m[1] === undefined });
    for (const { spec, index, spawn } of found) {
      const target = path.resolve(path.dirname(file), spec).replace(/\.js$/, '.ts');
      const trel = path.relative(root, target);
      const line = lineOf(text, index);
      if (trel.startsWith('..')) {
        violations.push({ file: rel, line, target: spec, why: 'imports from outside src/' });
        continue;
      }
      if (!spawn) deps.push({ target, line, spec });
      const to = unitOf(trel);
      if (to === from) continue;
      const allowed = LAYERS[from];
      if (allowed === undefined) {
        violations.push({
          file: rel,
          line,
          target: spec,
          why: `folder "${from}" has no place in the layer rule`,
        });
      } else if (allowed !== null && !allowed.includes(to)) {
        violations.push({ file: rel, line, target: spec, why: `${from} may not import ${to}` });
      }
    }
    graph.set(file, deps);
  }
  // Import cycles between files (type imports included: a cycle is a design knot either way).
  const state = new Map();
  const stack = [];
  const reported = new Set();
  const visit = (file) => {
    state.set(file, 1);
    stack.push(file);
    for (const dep of graph.get(file) ?? []) {
      if (!graph.has(dep.target)) continue;
      const s = state.get(dep.target);
      if (s === 1) {
        const cycle = stack.slice(stack.indexOf(dep.target)).map((f) => path.relative(root, f));
        const id = [...cycle].sort().join(' ');
        if (!reported.has(id)) {
          reported.add(id);
          violations.push({
            file: path.relative(root, file),
            line: dep.line,
            target: dep.spec,
            why: `import cycle: ${[...cycle, cycle[0]].join(' -> ')}`,
          });
        }
      } else if (s === undefined) visit(dep.target);
    }
    stack.pop();
    state.set(file, 2);
  };
  for (const file of files) if (!state.has(file)) visit(file);
  return violations;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  const dir = process.argv[2] ?? path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'src');
  const violations = checkLayers(dir);
  for (const v of violations) process.stderr.write(`src/${v.file}:${v.line}: ${v.target}: ${v.why}\n`);
  if (violations.length > 0) {
    process.stderr.write(
      `layers: ${violations.length} violation(s) of the layer rule (scripts/layers.mjs)\n`,
    );
    process.exit(1);
  }
}

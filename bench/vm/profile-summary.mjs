#!/usr/bin/env node
// node bench/vm/profile-summary.mjs FILE.cpuprofile [--top N]: the functions with the most self time in a
// V8 CPU profile (node --cpu-prof), with their share of all samples, and the share per source file.
// --all: from the start; by default the summary starts at the first sample in the data path (a stack through
// the kick handler), so the daemon's start-up (module loading) does not hide the steady state.
import fs from 'node:fs';
import path from 'node:path';

const argv = process.argv.slice(2);
const topAt = argv.indexOf('--top');
const top = topAt >= 0 ? Number(argv[topAt + 1]) : 25;
const files = argv.filter((a, i) => !a.startsWith('--') && (topAt < 0 || i !== topAt + 1));
const all = argv.includes('--all');
if (files.length === 0) {
  console.error('usage: node bench/vm/profile-summary.mjs FILE.cpuprofile [...] [--top N]');
  process.exit(2);
}

for (const file of files) {
  const prof = JSON.parse(fs.readFileSync(file, 'utf8'));
  const byId = new Map(prof.nodes.map((n) => [n.id, n]));
  const parent = new Map();
  for (const n of prof.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const inDataPath = (id) => {
    for (let cur = id; cur !== undefined; cur = parent.get(cur)) {
      if (/onKick/.test(byId.get(cur).callFrame.functionName)) return true;
    }
    return false;
  };
  const self = new Map();
  const deltas = prof.timeDeltas ?? [];
  let total = 0;
  let started = all;
  prof.samples.forEach((id, i) => {
    const dt = deltas[i] ?? 0;
    if (!started && !inDataPath(id)) return;
    started = true;
    total += dt;
    self.set(id, (self.get(id) ?? 0) + dt);
  });
  const perFn = new Map();
  const perFile = new Map();
  for (const [id, t] of self) {
    const n = byId.get(id);
    const cf = n.callFrame;
    const where = cf.url ? path.basename(cf.url.replace(/^file:\/\//, '')) : '';
    const key = `${cf.functionName || '(anonymous)'} ${where}${where ? `:${cf.lineNumber + 1}` : ''}`;
    perFn.set(key, (perFn.get(key) ?? 0) + t);
    const fk = where || cf.functionName || '(native)';
    perFile.set(fk, (perFile.get(fk) ?? 0) + t);
  }
  const pct = (t) => ((t / total) * 100).toFixed(1).padStart(5);
  console.log(`${file}: ${(total / 1e6).toFixed(2)} s sampled`);
  console.log('  self%  function');
  for (const [k, t] of [...perFn].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`  ${pct(t)}  ${k}`);
  console.log('  self%  file');
  for (const [k, t] of [...perFile].sort((a, b) => b[1] - a[1]).slice(0, 12))
    console.log(`  ${pct(t)}  ${k}`);
  console.log('');
}

// One boot of the test VM running a guest-side benchmark script that writes its results as JSON to --out: the
// common part of the bench:* commands that run one script in one guest (bench:vhost-vdpa, bench:net).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

/**
 * Boot the VM (scripts/vm/vm.mjs, `timeoutSec` for the whole run) with `node SCRIPT ARGS --out RAW` and return the
 * VM's exit code and the parsed results; exits the process (with `tag` in the message) when there are none.
 */
export async function runGuestScript({ root, script, args, timeoutSec, tag }) {
  const raw = path.join(root, 'bench/results', `.${tag}-raw-${process.pid}.json`);
  fs.mkdirSync(path.dirname(raw), { recursive: true });
  const code = await new Promise((resolve) => {
    const vm = spawn(
      process.execPath,
      [
        path.join(root, 'scripts/vm/vm.mjs'),
        '--timeout',
        String(timeoutSec),
        '--',
        'node',
        path.join(root, script),
        ...args,
        '--out',
        raw,
      ],
      { stdio: 'inherit', cwd: root },
    );
    vm.on('exit', (c, s) => resolve(c ?? (s ? 128 : 1)));
  });
  if (!fs.existsSync(raw)) {
    console.error(`bench:${tag}: the VM run ended (${code}) without results`);
    process.exit(code === 0 ? 1 : code);
  }
  const result = JSON.parse(fs.readFileSync(raw, 'utf8'));
  fs.rmSync(raw, { force: true });
  return { code, result };
}

/** Write `json` and `md` as bench/results/TAG-<time>.{json,md} and TAG-latest.{json,md}. */
export function writeResults(root, tag, json, md) {
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const dir = path.join(root, 'bench/results');
  for (const base of [`${tag}-${stamp}`, `${tag}-latest`]) {
    fs.writeFileSync(path.join(dir, `${base}.json`), JSON.stringify(json, null, 2) + '\n');
    fs.writeFileSync(path.join(dir, `${base}.md`), md);
  }
}

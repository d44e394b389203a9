// Guest side of `npm run bench:net` (run by bench/vm/net.mjs inside the test VM, as root): throughput and latency
// between two network namespaces through our VDUSE NIC <-> its TAP (vduse net), next to a veth pair (the kernel's
// own path) in the same guest. Rounds alternate the two paths; each round: a TCP stream for --seconds, TCP
// request/response (1-byte round trips) and ping. Writes every round as JSON to --out.
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const CLI = path.join(ROOT, 'dist/src/cli/main.js');
const PEER = path.join(ROOT, 'dist/test/e2e/net-peer.js');

const argv = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = argv.indexOf(name);
  return i < 0 ? dflt : argv[i + 1];
};
const seconds = Number(opt('--seconds', '10'));
const rounds = Number(opt('--rounds', '5'));
const rrCount = Number(opt('--rr', '2000'));
const out = opt('--out', '/tmp/net-bench.json');

const sh = (cmd, args) => execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
const inNs = (ns, cmd, args) => sh('ip', ['netns', 'exec', ns, cmd, ...args]);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function netns(name) {
  if (fs.existsSync(`/run/netns/${name}`)) sh('ip', ['netns', 'del', name]);
  sh('ip', ['netns', 'add', name]);
  inNs(name, 'ip', ['link', 'set', 'lo', 'up']);
}

function place(ifname, ns, cidr) {
  sh('ip', ['link', 'set', ifname, 'netns', ns]);
  inNs(ns, 'ip', ['addr', 'add', cidr, 'dev', ifname]);
  inNs(ns, 'ip', ['link', 'set', ifname, 'up']);
}

async function waitPing(ns, addr) {
  for (let i = 0; i < 150; i++) {
    try {
      inNs(ns, 'ping', ['-c', '1', '-W', '1', addr]);
      return;
    } catch {
      await sleep(200);
    }
  }
  throw new Error(`no ping from ${ns} to ${addr}`);
}

/** A net-peer in `ns`; resolves with its JSON line. Listeners resolve `ready` once listening. */
function peer(ns, args) {
  const child = spawn('ip', ['netns', 'exec', ns, process.execPath, PEER, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d) => (stderr += d));
  const result = new Promise((resolve, reject) =>
    child.on('exit', (code) => {
      const line = stdout.split('\n').find((l) => l.startsWith('{'));
      if (code === 0 && line) resolve(JSON.parse(line));
      else reject(new Error(`net-peer ${args.join(' ')} exited ${code}: ${stderr}`));
    }),
  );
  const ready = (async () => {
    for (let i = 0; i < 600 && !stdout.includes('listening'); i++) await sleep(25);
  })();
  return { result, ready };
}

let port = 6000;
async function measure(p) {
  port += 2;
  const sink = peer(p.b, ['sink', String(port)]);
  await sink.ready;
  const stream = peer(p.a, ['stream', p.addrB, String(port), String(seconds)]);
  const [, got] = await Promise.all([stream.result, sink.result]);
  const echo = peer(p.b, ['echo', String(port + 1)]);
  await echo.ready;
  const rr = await peer(p.a, ['rr', p.addrB, String(port + 1), String(rrCount)]).result;
  await echo.result;
  const ping = inNs(p.a, 'ping', ['-q', '-c', '50', '-i', '0.02', p.addrB]);
  const m = /= ([\d.]+)\/([\d.]+)\/([\d.]+)\/([\d.]+) ms/.exec(ping);
  return {
    path: p.name,
    gbitps: (got.bytes * 8) / got.seconds / 1e9,
    mbytes: got.bytes / 1e6,
    rrMedianUs: rr.medianUs,
    rrP99Us: rr.p99Us,
    pingAvgUs: m ? Number(m[2]) * 1000 : null,
  };
}

const daemon = spawn(process.execPath, [CLI, 'net', '--name', 'bench-net', '--tap', 'vtsbench', '--stats'], {
  stdio: ['ignore', 'pipe', 'pipe'],
});
let dOut = '';
let dErr = '';
daemon.stdout.setEncoding('utf8').on('data', (d) => (dOut += d));
daemon.stderr.setEncoding('utf8').on('data', (d) => (dErr += d));
const exited = new Promise((r) => daemon.on('exit', (code) => r(code)));
try {
  for (let i = 0; i < 2400 && !dOut.includes('\n'); i++) {
    if (daemon.exitCode !== null) throw new Error(`vduse net exited: ${dErr}`);
    await sleep(25);
  }
  const nic = dOut.split('\n')[0];
  if (!nic) throw new Error(`vduse net not ready: ${dErr}`);
  for (const ns of ['bn-nic', 'bn-tap', 'bv-a', 'bv-b']) netns(ns);
  place(nic, 'bn-nic', '10.78.0.1/24');
  place('vtsbench', 'bn-tap', '10.78.0.2/24');
  sh('ip', ['link', 'add', 'bvA', 'type', 'veth', 'peer', 'name', 'bvB']);
  place('bvA', 'bv-a', '10.79.0.1/24');
  place('bvB', 'bv-b', '10.79.0.2/24');
  const paths = [
    { name: 'vduse-net <-> tap', a: 'bn-nic', b: 'bn-tap', addrB: '10.78.0.2' },
    { name: 'veth (kernel)', a: 'bv-a', b: 'bv-b', addrB: '10.79.0.2' },
  ];
  await waitPing('bn-nic', '10.78.0.2');
  await waitPing('bv-a', '10.79.0.2');
  const results = [];
  for (let r = 0; r < rounds; r++) {
    const order = r % 2 === 0 ? paths : [...paths].reverse();
    for (const p of order) {
      const row = { round: r + 1, ...(await measure(p)) };
      results.push(row);
      process.stderr.write(
        `bench:net: round ${r + 1} ${p.name}: ${row.gbitps.toFixed(2)} Gbit/s, rr ${row.rrMedianUs.toFixed(0)} us\n`,
      );
    }
  }
  daemon.kill('SIGINT');
  const code = await exited;
  fs.writeFileSync(
    out,
    JSON.stringify(
      {
        kernel: os.release(),
        node: process.version,
        cpus: os.cpus().length,
        seconds,
        rounds,
        rrCount,
        results,
        daemonExit: code,
        daemonStats:
          dErr
            .split('\n')
            .filter((l) => l.includes('stats: '))
            .pop() ?? null,
      },
      null,
      2,
    ),
  );
} finally {
  if (daemon.exitCode === null) daemon.kill('SIGKILL');
  for (const ns of ['bn-nic', 'bn-tap', 'bv-a', 'bv-b']) {
    try {
      sh('ip', ['netns', 'del', ns]);
    } catch {
      // already gone
    }
  }
}

/**
 * A throw-away one-node Ceph cluster (one monitor, one OSD, no manager) in a temporary directory, for the rbd
 * backend's tests on the host and in the test VM (the recipe of /work/shared/reference/ceph.md: Debian's ceph-mon
 * and ceph-osd, every path under the directory, paxos proposals every 0.1 s so that it is up in a few seconds).
 *
 *   const cluster = await CephCluster.start({ store: 'bluestore' });
 *   await cluster.rbd('create', '--size', '64M', 'rbd/img');
 *   ... rbd:rbd/img,conf=${cluster.conf} ...
 *   await cluster.stop();
 *
 * memstore is fastest and loses everything on a SIGKILL of the OSD; tests that kill the OSD use bluestore (a
 * sparse file in the directory).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export interface CephClusterOptions {
  /** Object store of the OSD. Default memstore. */
  store?: 'memstore' | 'bluestore';
  /** cephx (default) or none. */
  auth?: 'cephx' | 'none';
  /** Parent of the cluster directory; default os.tmpdir(). */
  parent?: string;
  /** Monitor ports (v2, v1); default a free-looking pair from the pid. */
  ports?: [number, number];
}

/** The Ceph daemons and tools the helper runs, or the first one missing. */
export function cephMissing(): string | null {
  for (const tool of ['ceph-mon', 'ceph-osd', 'ceph', 'rbd', 'monmaptool']) {
    if (spawnSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' }).status !== 0) return tool;
  }
  return null;
}

/**
 * A reason to skip the tests that need a cluster (Ceph not installed), or undefined. Under CI=true a missing
 * Ceph is an error (provisioning installs it).
 */
export function cephSkip(): string | undefined {
  const missing = cephMissing();
  if (missing === null) return undefined;
  const text = `missing ${missing} (Debian packages: ceph-mon ceph-osd ceph-common librbd1)`;
  if (process.env.CI === 'true') throw new Error(`rbd tests need ${text}`);
  return text;
}

interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs = 60_000): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      resolve({ code: null, stdout, stderr: stderr + e.message });
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** `n` bytes of a xorshift pattern seeded by `seed` (the same for the same seed). */
export function pattern(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

let portSeq = 0;

/**
 * A new cephx secret as ceph-authtool --gen-print-key prints it: base64 of (le16 type 1 = AES, le32 seconds,
 * le32 nanoseconds, le16 length 16, 16 random bytes).
 */
export function cephxKey(): string {
  const key = Buffer.alloc(28);
  key.writeUInt16LE(1, 0);
  key.writeUInt32LE(Math.floor(Date.now() / 1000), 2);
  key.writeUInt32LE(0, 6);
  key.writeUInt16LE(16, 10);
  randomBytes(16).copy(key, 12);
  return key.toString('base64');
}

/** One entity of a keyring file. */
function keyringEntry(entity: string, key: string, caps: Record<string, string>): string {
  const lines = [`[${entity}]`, `\tkey = ${key}`];
  for (const [what, cap] of Object.entries(caps)) lines.push(`\tcaps ${what} = "${cap}"`);
  return lines.join('\n') + '\n';
}

export class CephCluster {
  readonly dir: string;
  readonly conf: string;
  readonly keyring: string;
  readonly store: 'memstore' | 'bluestore';
  readonly auth: 'cephx' | 'none';
  /** The monitor address (v2 port, v1 port). */
  readonly monHost: string;
  readonly ports: [number, number];
  readonly env: NodeJS.ProcessEnv;
  #mon: ChildProcess | null = null;
  #osd: ChildProcess | null = null;
  readonly #exitHook = () => this.#killAll();

  private constructor(dir: string, options: CephClusterOptions) {
    this.dir = dir;
    this.conf = path.join(dir, 'ceph.conf');
    this.keyring = path.join(dir, 'ceph.client.admin.keyring');
    this.store = options.store ?? 'memstore';
    this.auth = options.auth ?? 'cephx';
    const base = 20000 + ((process.pid * 7 + portSeq++ * 2) % 20000);
    this.ports = options.ports ?? [base, base + 1];
    this.monHost = `127.0.0.1:${this.ports[0]}`;
    this.env = { ...process.env, CEPH_CONF: this.conf };
    process.on('exit', this.#exitHook);
  }

  /** Bootstrap a cluster with pool `rbd`; about 2 s with memstore, 5 s with bluestore on an idle machine. */
  static async start(options: CephClusterOptions = {}): Promise<CephCluster> {
    const parent = options.parent ?? os.tmpdir();
    const dir = fs.mkdtempSync(path.join(parent, 'vduse-ceph-'));
    const cluster = new CephCluster(dir, options);
    try {
      await cluster.#bootstrap();
      return cluster;
    } catch (err) {
      await cluster.stop();
      throw err;
    }
  }

  #writeConf(fsid: string): void {
    const b = this.dir;
    const auth = this.auth === 'cephx' ? 'cephx' : 'none';
    const [v2, v1] = this.ports;
    const lines = [
      '[global]',
      `fsid = ${fsid}`,
      `mon host = [v2:127.0.0.1:${v2},v1:127.0.0.1:${v1}]`,
      'mon initial members = a',
      'public addr = 127.0.0.1',
      'cluster addr = 127.0.0.1',
      `auth cluster required = ${auth}`,
      `auth service required = ${auth}`,
      `auth client required = ${auth}`,
      'auth allow insecure global id reclaim = false',
      `run dir = ${b}/run`,
      'admin socket = $run_dir/$cluster-$name.asok',
      'pid file = $run_dir/$cluster-$name.pid',
      `log file = ${b}/log/$cluster-$name.log`,
      `mon cluster log file = ${b}/log/$cluster.log`,
      `crash dir = ${b}/crash`,
      `mon data = ${b}/mon/$cluster-$id`,
      `osd data = ${b}/osd/$cluster-$id`,
      'osd journal = $osd_data/journal',
      `mon debug dump location = ${b}/log/$cluster-$name.tdump`,
      'osd pool default size = 1',
      'osd pool default min size = 1',
      'mon allow pool size one = true',
      'mon warn on pool no redundancy = false',
      'osd crush chooseleaf type = 0',
      'osd pool default pg num = 8',
      'osd pool default pgp num = 8',
      'osd pool default pg autoscale mode = off',
      'paxos propose interval = 0.1',
      'paxos min wait = 0.01',
      `osd objectstore = ${this.store}`,
      'memstore device bytes = 1073741824',
      'osd fast shutdown = false',
      'bluestore block create = true',
      'bluestore block size = 2147483648',
      'osd memory target = 939524096',
      'bluestore cache autotune = false',
      'bluestore cache size = 134217728',
      'osd op num shards = 1',
      'osd op num threads per shard = 2',
      'mon data avail warn = 5',
      'mon data avail crit = 2',
      // a restarted OSD is marked down quickly, and clients resend to it at once
      'osd heartbeat grace = 6',
      'osd heartbeat interval = 2',
      '[mon]',
      'keyring = $mon_data/keyring',
      '[osd]',
      'keyring = $osd_data/keyring',
      '[client]',
      `keyring = ${this.keyring}`,
      'admin socket =',
      `log file = ${b}/log/$cluster-$name.$pid.log`,
      '',
    ];
    fs.writeFileSync(this.conf, lines.join('\n'));
  }

  async #must(cmd: string, args: string[], timeoutMs?: number): Promise<string> {
    const r = await run(cmd, args, this.env, timeoutMs);
    if (r.code !== 0) {
      const tail = (r.stderr || r.stdout).trim().split('\n').slice(-5).join(' | ');
      throw new Error(`${cmd} ${args.join(' ')} failed (exit ${r.code}): ${tail}`);
    }
    return r.stdout;
  }

  /** Milliseconds each bootstrap step took (for the log of a slow start). */
  readonly timings: [string, number][] = [];

  async #step<T>(what: string, run: () => Promise<T>): Promise<T> {
    const started = Date.now();
    const result = await run();
    this.timings.push([what, Date.now() - started]);
    return result;
  }

  async #bootstrap(): Promise<void> {
    const b = this.dir;
    for (const sub of ['mon/ceph-a', 'osd/ceph-0', 'run', 'log', 'crash']) {
      fs.mkdirSync(path.join(b, sub), { recursive: true });
    }
    const fsid = randomUUID();
    this.#writeConf(fsid);
    // Keyrings written here rather than by ceph-authtool (each Ceph tool costs a second or more in the VM).
    const all = { mon: 'allow *', osd: 'allow *', mgr: 'allow *' };
    const admin = keyringEntry('client.admin', cephxKey(), all);
    fs.writeFileSync(this.keyring, admin);
    const monKeyring = path.join(b, 'mon.keyring');
    fs.writeFileSync(monKeyring, keyringEntry('mon.', cephxKey(), { mon: 'allow *' }) + admin);
    const monmap = path.join(b, 'monmap');
    const [v2, v1] = this.ports;
    await this.#step('monmaptool', () =>
      this.#must('monmaptool', [
        '--create',
        '--fsid',
        fsid,
        '--addv',
        'a',
        `[v2:127.0.0.1:${v2},v1:127.0.0.1:${v1}]`,
        monmap,
      ]),
    );
    await this.#step('mon mkfs', () =>
      this.#must('ceph-mon', ['--mkfs', '-i', 'a', '--monmap', monmap, '--keyring', monKeyring]),
    );
    await this.#step('mon start', () => this.startMon());
    const osdUuid = randomUUID();
    const osdKey = cephxKey();
    const secrets = path.join(b, 'osd-secrets.json');
    fs.writeFileSync(secrets, JSON.stringify({ cephx_secret: osdKey }));
    const id = (await this.#step('osd new', () => this.ceph('osd', 'new', osdUuid, '-i', secrets))).trim();
    if (id !== '0') throw new Error(`ceph osd new gave id '${id}', expected 0`);
    fs.writeFileSync(path.join(b, 'osd/ceph-0/keyring'), keyringEntry('osd.0', osdKey, {}));
    await this.#step('osd mkfs', () =>
      this.#must('ceph-osd', ['-i', '0', '--mkfs', '--osd-uuid', osdUuid], 120_000),
    );
    await this.#step('osd start', () => this.startOsd());
    await this.#step('pool create', () => this.ceph('osd', 'pool', 'create', 'rbd', '8', '8', 'replicated'));
    await this.#step('pool init', () => this.#must('rbd', ['pool', 'init', 'rbd']));
  }

  /** Run the ceph CLI against this cluster; resolves with stdout, rejects on failure. */
  ceph(...args: string[]): Promise<string> {
    return this.#must('ceph', ['--connect-timeout', '20', ...args]);
  }

  /** Run the rbd CLI against this cluster; resolves with stdout, rejects on failure. */
  rbd(...args: string[]): Promise<string> {
    return this.#must('rbd', args, 120_000);
  }

  /** `rbd export IMAGE`: the image's bytes as another client reads them. */
  async rbdExport(image: string): Promise<Buffer> {
    const file = path.join(this.dir, `export-${Date.now()}-${portSeq++}.raw`);
    await this.#must('rbd', ['export', '--no-progress', image, file], 120_000);
    try {
      return fs.readFileSync(file);
    } finally {
      fs.rmSync(file, { force: true });
    }
  }

  #spawn(name: string, args: string[]): ChildProcess {
    const out = fs.openSync(path.join(this.dir, 'log', `${name}.out`), 'a');
    const child = spawn(args[0]!, args.slice(1), { env: this.env, stdio: ['ignore', out, out] });
    fs.closeSync(out);
    child.on('error', () => {});
    return child;
  }

  /** How many lines of daemon log `file` (under log/) match `re`. */
  #logCount(file: string, re: RegExp): number {
    try {
      return fs
        .readFileSync(path.join(this.dir, 'log', file), 'utf8')
        .split('\n')
        .filter((l) => re.test(l)).length;
    } catch {
      return 0;
    }
  }

  /**
   * Wait until `file` has more lines matching `re` than `before` (the daemon logged that it is ready: no ceph CLI
   * polling, which costs seconds per call in the emulated test VM).
   */
  async #waitForLog(
    child: ChildProcess,
    what: string,
    file: string,
    re: RegExp,
    before: number,
  ): Promise<void> {
    const deadline = Date.now() + 120_000;
    while (this.#logCount(file, re) <= before) {
      if (child.exitCode !== null || child.signalCode !== null) {
        throw new Error(`${what} exited (${child.exitCode ?? child.signalCode}); see ${this.dir}/log`);
      }
      if (Date.now() > deadline) throw new Error(`${what} not ready within 120 s; see ${this.dir}/log`);
      await sleep(100);
    }
  }

  /** Start the monitor (again) and wait until it leads (a one-monitor quorum). */
  async startMon(): Promise<void> {
    const re = /win_standalone_election/;
    const before = this.#logCount('ceph-mon.a.log', re);
    this.#mon = this.#spawn('mon', ['ceph-mon', '-f', '-i', 'a']);
    await this.#waitForLog(this.#mon, 'ceph-mon', 'ceph-mon.a.log', re, before);
  }

  /** Start the OSD (again) and wait until it is up and active in the cluster's map. */
  async startOsd(): Promise<void> {
    const re = /state: booting -> active/;
    const before = this.#logCount('ceph-osd.0.log', re);
    this.#osd = this.#spawn('osd', ['ceph-osd', '-f', '-i', '0']);
    await this.#waitForLog(this.#osd, 'ceph-osd', 'ceph-osd.0.log', re, before);
  }

  /** Stop the OSD with `signal` and wait until it is gone. */
  stopOsd(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    return CephCluster.#stopChild(this.#osd, signal).then(() => {
      this.#osd = null;
    });
  }

  /** Stop the monitor with `signal` and wait until it is gone. */
  stopMon(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    return CephCluster.#stopChild(this.#mon, signal).then(() => {
      this.#mon = null;
    });
  }

  static #stopChild(child: ChildProcess | null, signal: NodeJS.Signals): Promise<void> {
    if (child === null || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
      child.once('exit', () => {
        clearTimeout(timer);
        resolve();
      });
      child.kill(signal);
    });
  }

  #killAll(): void {
    for (const child of [this.#osd, this.#mon]) {
      if (child !== null && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
  }

  /** Stop both daemons and remove the directory. */
  async stop(): Promise<void> {
    await this.stopOsd('SIGKILL');
    await this.stopMon('SIGKILL');
    process.off('exit', this.#exitHook);
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

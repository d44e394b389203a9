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
import { randomUUID } from 'node:crypto';
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
  for (const tool of ['ceph-mon', 'ceph-osd', 'ceph', 'rbd', 'ceph-authtool', 'monmaptool']) {
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

  async #bootstrap(): Promise<void> {
    const b = this.dir;
    for (const sub of ['mon/ceph-a', 'osd/ceph-0', 'run', 'log', 'crash']) {
      fs.mkdirSync(path.join(b, sub), { recursive: true });
    }
    const fsid = randomUUID();
    this.#writeConf(fsid);
    const monKeyring = path.join(b, 'mon.keyring');
    await this.#must('ceph-authtool', [
      '--create-keyring',
      monKeyring,
      '--gen-key',
      '-n',
      'mon.',
      '--cap',
      'mon',
      'allow *',
    ]);
    await this.#must('ceph-authtool', [
      '--create-keyring',
      this.keyring,
      '--gen-key',
      '-n',
      'client.admin',
      '--cap',
      'mon',
      'allow *',
      '--cap',
      'osd',
      'allow *',
      '--cap',
      'mgr',
      'allow *',
    ]);
    await this.#must('ceph-authtool', [monKeyring, '--import-keyring', this.keyring]);
    const monmap = path.join(b, 'monmap');
    const [v2, v1] = this.ports;
    await this.#must('monmaptool', [
      '--create',
      '--fsid',
      fsid,
      '--addv',
      'a',
      `[v2:127.0.0.1:${v2},v1:127.0.0.1:${v1}]`,
      monmap,
    ]);
    await this.#must('ceph-mon', ['--mkfs', '-i', 'a', '--monmap', monmap, '--keyring', monKeyring]);
    await this.startMon();
    const osdUuid = randomUUID();
    const osdKey = (await this.#must('ceph-authtool', ['--gen-print-key'])).trim();
    const secrets = path.join(b, 'osd-secrets.json');
    fs.writeFileSync(secrets, JSON.stringify({ cephx_secret: osdKey }));
    const id = (await this.ceph('osd', 'new', osdUuid, '-i', secrets)).trim();
    if (id !== '0') throw new Error(`ceph osd new gave id '${id}', expected 0`);
    await this.#must('ceph-authtool', [
      '--create-keyring',
      path.join(b, 'osd/ceph-0/keyring'),
      '--name',
      'osd.0',
      '--add-key',
      osdKey,
    ]);
    await this.#must('ceph-osd', ['-i', '0', '--mkfs', '--osd-uuid', osdUuid], 120_000);
    await this.startOsd();
    await this.ceph('osd', 'pool', 'create', 'rbd', '8', '8', 'replicated');
    await this.#must('rbd', ['pool', 'init', 'rbd']);
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

  /** Start the monitor (again) and wait until it answers. */
  async startMon(): Promise<void> {
    this.#mon = this.#spawn('mon', ['ceph-mon', '-f', '-i', 'a']);
    const deadline = Date.now() + 60_000;
    for (;;) {
      const r = await run('ceph', ['--connect-timeout', '3', 'mon', 'stat'], this.env, 10_000);
      if (r.code === 0) return;
      if (this.#mon.exitCode !== null)
        throw new Error(`ceph-mon exited (${this.#mon.exitCode}); see ${this.dir}/log`);
      if (Date.now() > deadline) throw new Error(`ceph-mon did not answer within 60 s; see ${this.dir}/log`);
      await sleep(200);
    }
  }

  /** Start the OSD (again) and wait until the monitor sees it up. */
  async startOsd(): Promise<void> {
    this.#osd = this.#spawn('osd', ['ceph-osd', '-f', '-i', '0']);
    const deadline = Date.now() + 120_000;
    for (;;) {
      const r = await run('ceph', ['--connect-timeout', '5', 'osd', 'dump'], this.env, 15_000);
      if (r.code === 0 && /^osd\.0 up/m.test(r.stdout)) return;
      if (this.#osd.exitCode !== null)
        throw new Error(`ceph-osd exited (${this.#osd.exitCode}); see ${this.dir}/log`);
      if (Date.now() > deadline) throw new Error(`ceph-osd not up within 120 s; see ${this.dir}/log`);
      await sleep(250);
    }
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

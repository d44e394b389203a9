// Scenarios of `vduse net` on the real kernel: virtio_vdpa + virtio_net over our VDUSE transport, frames to and
// from a TAP. The guest's NIC goes into one network namespace and the tap into another, so that traffic between
// their addresses crosses our device (and not the loopback).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { test } from 'node:test';

import {
  NetPeer,
  TEST_TIMEOUT_MS,
  addNetns,
  exec,
  execOk,
  inNetns,
  linkAttr,
  moveInterface,
  requirePrereqs,
  tempDir,
  tryInNetns,
  useCleanup,
  vdpaDevExists,
  vdpaDriver,
  vduseDevExists,
  waitFor,
  waitForPing,
  type Cleanup,
} from './lib/index.js';
import { assertNoKernelWarnings, uptimeSeconds } from './lib/kernel-log.js';
import { VhostVdpaDriver } from '../../src/testing/vhost-vdpa/index.js';
import { VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS } from '../../src/uapi/virtio-net.js';
import { bit } from './lib/vhost-vdpa.js';
import { ServeDaemon } from './serve-daemon.js';
import { VduseDaemon, lastStats } from './vduse-daemon.js';

export const NET_PREREQS = {
  root: true,
  commands: ['ip', 'ping'],
  paths: ['/dev/vduse/control', '/sys/bus/vdpa', '/dev/net/tun'],
  modules: ['vduse', 'vdpa', 'virtio_vdpa', 'virtio_net', 'tun'],
};

const MiB = 1 << 20;
/** The guest NIC's and the tap's addresses. */
const NIC_IP = '10.77.0.1';
const TAP_IP = '10.77.0.2';

interface NetSetup {
  d: VduseDaemon;
  /** The guest's interface (in nsNic). */
  nic: string;
  nsNic: string;
  nsTap: string;
}

/**
 * Start `vduse net --name NAME --tap TAP ARGS`, then move the guest's NIC into one namespace and the tap into
 * another, with addresses on both, and wait until they reach each other.
 */
async function netPair(
  cleanup: Cleanup,
  name: string,
  tap: string,
  args: string[] = [],
  tapMtu?: number,
): Promise<NetSetup> {
  const d = VduseDaemon.spawn(['net', '--name', name, '--tap', tap, '--stats', ...args]);
  cleanup.add(`stop vduse net ${name}`, async () => {
    if (d.child.exitCode === null && d.child.signalCode === null) await d.stop();
  });
  const nic = await d.ready();
  assert.match(nic, /^[a-z][a-z0-9]*$/, `the ready line is an interface name: ${nic}`);
  assert.equal(vdpaDriver(name), 'virtio_vdpa');
  const nsNic = await addNetns(cleanup, `${name}-nic`);
  const nsTap = await addNetns(cleanup, `${name}-tap`);
  await moveInterface(nic, nsNic, `${NIC_IP}/24`);
  await moveInterface(tap, nsTap, `${TAP_IP}/24`, tapMtu);
  await waitForPing(nsNic, TAP_IP);
  return { d, nic, nsNic, nsTap };
}

/** SIGINT, exit 0, nothing left behind; returns the last counters. */
async function stopClean(d: VduseDaemon, name: string): Promise<Record<string, number>> {
  const e = await d.stop('SIGINT', 30_000);
  assert.equal(e.code, 0, `daemon exit status; stderr:\n${e.stderr}`);
  assert.equal(vdpaDevExists(name), false, 'vdpa device removed');
  assert.equal(vduseDevExists(name), false, 'VDUSE device destroyed');
  return lastStats(e.stderr);
}

/** A TCP transfer of `bytes` from `from` to `toAddr` (a listener in `to`), checked by hash. */
async function tcpTransfer(
  cleanup: Cleanup,
  from: string,
  to: string,
  toAddr: string,
  bytes: number,
  port: number,
) {
  const recv = await NetPeer.start(cleanup, to, ['recv', String(port)]);
  const send = await NetPeer.start(cleanup, from, ['send', toAddr, String(port), String(bytes)]);
  const [sent, got] = await Promise.all([send.result(), recv.result()]);
  assert.equal(sent.bytes, bytes);
  assert.equal(got.bytes, bytes, 'every byte arrived');
  assert.equal(got.sha256, sent.sha256, 'the data arrived unchanged');
  return got;
}

test(
  'vduse net: NIC and tap in two namespaces; ping both ways; 64 MiB over TCP both ways by hash; counters; clean stop',
  { timeout: TEST_TIMEOUT_MS },
  async (t) => {
    if (!requirePrereqs(t, NET_PREREQS)) return;
    const cleanup = useCleanup(t);
    const since = uptimeSeconds();
    const name = 'e2e-net-basic';
    const mac = '52:54:00:77:00:01';
    const { d, nic, nsNic, nsTap } = await netPair(cleanup, name, 'vtsbasic', ['--mac', mac]);
    assert.equal(await linkAttr(nsNic, nic, 'address'), mac, 'the guest got our MAC');
    assert.equal(await linkAttr(nsNic, nic, 'mtu'), '1500');
    assert.equal(await linkAttr(nsNic, nic, 'operstate'), 'up');
    assert.equal(
      fs
        .readFileSync(
          `/sys/bus/vdpa/devices/${name}/${fs.readdirSync(`/sys/bus/vdpa/devices/${name}`).find((e) => /^virtio\d+$/.test(e))}/device`,
          'utf8',
        )
        .trim(),
      '0x0001',
      'virtio-net',
    );
    await inNetns(nsNic, 'ping', ['-c', '5', '-i', '0.2', '-W', '2', TAP_IP]);
    await inNetns(nsTap, 'ping', ['-c', '5', '-i', '0.2', '-W', '2', NIC_IP]);
    await inNetns(nsTap, 'ping', ['-c', '3', '-s', '1472', '-M', 'do', '-W', '2', NIC_IP]);
    // guest -> tap, then tap -> guest: the offloads (TSO, checksum) carry 64 KiB frames both ways
    const out = await tcpTransfer(cleanup, nsNic, nsTap, TAP_IP, 64 * MiB, 5301);
    const back = await tcpTransfer(cleanup, nsTap, nsNic, NIC_IP, 64 * MiB, 5302);
    t.diagnostic(
      `64 MiB guest->tap in ${out.seconds.toFixed(2)} s, tap->guest in ${back.seconds.toFixed(2)} s (TCG: slow)`,
    );
    d.signal('SIGUSR1');
    await d.waitStderr(/stats: rx_packets=\d+/);
    const s = await stopClean(d, name);
    assert.ok(s.rx_bytes! >= 64 * MiB, `rx bytes ${s.rx_bytes}`);
    assert.ok(s.tx_bytes! >= 64 * MiB, `tx bytes ${s.tx_bytes}`);
    assert.ok(s.rx_packets! > 10 && s.tx_packets! > 10);
    assert.equal(s.driver_errors, 0);
    assert.equal(fs.existsSync(`/run/netns/${nsNic}`), true);
    assert.equal((await tryInNetns(nsNic, 'ip', ['link', 'show', nic])).code, 1, 'the guest NIC is gone');
    await assertNoKernelWarnings(since);
  },
);

test(
  'MTU: the guest is told it; DF pings just below pass and just above fail; a longer frame from the tap is dropped and counted',
  { timeout: TEST_TIMEOUT_MS },
  async (t) => {
    if (!requirePrereqs(t, NET_PREREQS)) return;
    const cleanup = useCleanup(t);
    const name = 'e2e-net-mtu';
    const { d, nic, nsNic, nsTap } = await netPair(cleanup, name, 'vtsmtu', ['--mtu', '1400'], 1500);
    assert.equal(await linkAttr(nsNic, nic, 'mtu'), '1400');
    // the guest cannot go above what the device said (VIRTIO_NET_F_MTU sets max_mtu)
    assert.notEqual((await tryInNetns(nsNic, 'ip', ['link', 'set', nic, 'mtu', '1401'])).code, 0);
    // 1372 + 8 (ICMP) + 20 (IP) = 1400
    await inNetns(nsNic, 'ping', ['-c', '2', '-s', '1372', '-M', 'do', '-W', '2', TAP_IP]);
    const above = await tryInNetns(nsNic, 'ping', ['-c', '1', '-s', '1373', '-M', 'do', '-W', '2', TAP_IP]);
    assert.notEqual(above.code, 0, 'a DF packet over the MTU does not leave the guest');
    await inNetns(nsTap, 'ping', ['-c', '2', '-s', '1372', '-M', 'do', '-W', '2', NIC_IP]);
    // from the tap (MTU 1500) a 1428-byte packet is a frame the device must not hand to the guest
    d.signal('SIGUSR1');
    const before = lastStats((await d.waitStderr(/stats: rx_packets=.*\n/)).input!);
    const big = await tryInNetns(nsTap, 'ping', ['-c', '2', '-s', '1400', '-M', 'do', '-W', '1', NIC_IP]);
    assert.notEqual(big.code, 0, 'no answer to a frame over the MTU');
    const s = await stopClean(d, name);
    assert.ok(s.rx_drops! >= before.rx_drops! + 2, `rx drops ${before.rx_drops} -> ${s.rx_drops}`);
  },
);

test(
  'stopping the daemon while the NIC is in use (a TCP stream and a ping flood): prompt exit 0, NIC gone, no kernel warning',
  { timeout: TEST_TIMEOUT_MS },
  async (t) => {
    if (!requirePrereqs(t, NET_PREREQS)) return;
    const cleanup = useCleanup(t);
    const since = uptimeSeconds();
    const name = 'e2e-net-stop';
    const { d, nic, nsNic, nsTap } = await netPair(cleanup, name, 'vtsstop');
    const recv = await NetPeer.start(cleanup, nsTap, ['recv', '5303']);
    const send = await NetPeer.start(cleanup, nsNic, ['send', TAP_IP, '5303', String(4096 * MiB)]);
    const flood = exec('ip', ['netns', 'exec', nsTap, 'ping', '-f', '-w', '20', NIC_IP], {
      timeoutMs: 60_000,
    });
    await new Promise((r) => setTimeout(r, 3000));
    assert.equal(send.child.exitCode, null, `the sender is still sending: ${send.stderr}`);
    const t0 = Date.now();
    const e = await d.stop('SIGTERM', 30_000);
    const took = Date.now() - t0;
    assert.equal(e.code, 0, `exit status; stderr:\n${e.stderr}`);
    assert.ok(took < 15_000, `stopped in ${took} ms`);
    t.diagnostic(`stopped in ${took} ms with traffic both ways`);
    assert.equal(vdpaDevExists(name), false);
    assert.equal(vduseDevExists(name), false);
    assert.equal((await tryInNetns(nsNic, 'ip', ['link', 'show', nic])).code, 1, 'the guest NIC is gone');
    send.child.kill('SIGKILL');
    recv.child.kill('SIGKILL');
    await flood;
    await assertNoKernelWarnings(since);
  },
);

test(
  'errors: a tap in use, a bad MAC, an MTU out of range: one line each, non-zero exit, nothing left behind',
  { timeout: TEST_TIMEOUT_MS },
  async (t) => {
    if (!requirePrereqs(t, NET_PREREQS)) return;
    const cleanup = useCleanup(t);
    await execOk('ip', ['tuntap', 'add', 'dev', 'vtsbusy', 'mode', 'tap']);
    cleanup.add('ip tuntap del vtsbusy', () =>
      execOk('ip', ['tuntap', 'del', 'dev', 'vtsbusy', 'mode', 'tap']).then(() => undefined),
    );
    const first = VduseDaemon.spawn(['net', '--name', 'e2e-net-busy1', '--tap', 'vtsbusy']);
    cleanup.add('stop the first', async () => {
      if (first.child.exitCode === null) await first.stop();
    });
    await first.ready();
    const cases: [string[], number, RegExp][] = [
      [
        ['--name', 'e2e-net-busy2', '--tap', 'vtsbusy'],
        1,
        /^vduse: tap vtsbusy is in use by another process/,
      ],
      [['--name', 'e2e-net-bad', '--tap', 'x', '--mac', '01:02:03:04:05:06'], 2, /^vduse: --mac .*multicast/],
      [
        ['--name', 'e2e-net-bad', '--tap', 'x', '--mtu', '65536'],
        2,
        /^vduse: --mtu must be between 68 and 65535/,
      ],
      [['--name', 'e2e-net-bad', '--tap', 'lo'], 1, /^vduse: lo exists and is not a tap/],
    ];
    for (const [args, code, re] of cases) {
      const e = await VduseDaemon.spawn(['net', ...args]).exited;
      assert.equal(e.code, code, `${args.join(' ')}: ${e.stderr}`);
      assert.match(e.stderr, re);
      assert.equal(e.stderr.trim().split('\n').length, 1, `one line: ${e.stderr}`);
      assert.equal(vduseDevExists(args[1]!), false);
    }
    const e = await first.stop();
    assert.equal(e.code, 0, e.stderr);
    assert.equal(fs.existsSync('/sys/class/net/vtsbusy'), true, 'a persistent tap stays');
  },
);

/** An ARP request from `mac`/`ip` for `target` (an Ethernet frame, padded to 60 bytes). */
function arpRequest(mac: Uint8Array, ip: number[], target: number[]): Uint8Array {
  const f = new Uint8Array(60);
  f.fill(0xff, 0, 6);
  f.set(mac, 6);
  f.set([0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1], 12);
  f.set(mac, 22);
  f.set(ip, 28);
  f.set(target, 38);
  return f;
}

test(
  '--driver vhost-vdpa: bound to vhost_vdpa, /dev/vhost-vdpa-N; an ARP request and its answer through the userspace driver',
  { timeout: TEST_TIMEOUT_MS },
  async (t) => {
    if (!requirePrereqs(t, { ...NET_PREREQS, modules: [...NET_PREREQS.modules, 'vhost_vdpa'] })) return;
    const cleanup = useCleanup(t);
    const name = 'e2e-net-vhost';
    const mac = Uint8Array.from([0x52, 0x54, 0x00, 0x77, 0x00, 0x03]);
    const d = VduseDaemon.spawn([
      'net',
      '--name',
      name,
      '--tap',
      'vtsvhost',
      '--driver',
      'vhost-vdpa',
      '--mac',
      '52:54:00:77:00:03',
      '--stats',
    ]);
    cleanup.add('stop', async () => {
      if (d.child.exitCode === null) await d.stop();
    });
    const node = await d.ready();
    assert.match(node, /^\/dev\/vhost-vdpa-\d+$/);
    assert.ok(fs.statSync(node).isCharacterDevice());
    assert.equal(vdpaDriver(name), 'vhost_vdpa');
    // the host end: the tap with an address, so that the kernel answers ARP for it
    await execOk('ip', ['addr', 'add', '10.80.0.2/24', 'dev', 'vtsvhost']);
    await execOk('ip', ['link', 'set', 'vtsvhost', 'up']);

    // the VMM: negotiate MAC + STATUS (plain 12-byte headers, one buffer per frame), two queues, DRIVER_OK
    const drv = VhostVdpaDriver.open(node);
    let open = true;
    cleanup.add('close the vhost-vdpa driver', () => {
      if (open) drv.close();
    });
    drv.negotiate(bit(VIRTIO_NET_F_MAC) | bit(VIRTIO_NET_F_STATUS));
    assert.equal(drv.deviceId, 1, 'virtio-net');
    assert.deepEqual([...drv.getConfig(0, 6)], [...mac], 'the MAC in the config space');
    assert.equal(drv.getConfig(6, 2)[0]! & 1, 1, 'link up');
    drv.allocMemory(4 << 20);
    const [rx, tx] = drv.setupQueues({ count: 2, size: 64 });
    drv.driverOk();
    for (let i = 0; i < 8; i++) rx!.driver.addChain({ writable: [2048] });
    rx!.forceKick();
    const frame = arpRequest(mac, [10, 80, 0, 1], [10, 80, 0, 2]);
    tx!.driver.addChain({ readable: [new Uint8Array(12), frame] });
    tx!.forceKick();
    await waitFor('the transmitted frame used', () => tx!.driver.usedEntries().length === 1, {
      timeoutMs: 10_000,
    });
    let answer: Uint8Array | null = null;
    await waitFor(
      'an ARP reply in a receive buffer',
      () => {
        for (const u of rx!.driver.usedEntries()) {
          const f = u.written.subarray(12);
          // ARP reply (op 2) from 10.80.0.2
          if (f[12] === 0x08 && f[13] === 0x06 && f[21] === 2 && f[28] === 10 && f[31] === 2) answer = f;
        }
        return answer !== null;
      },
      { timeoutMs: 10_000 },
    );
    assert.deepEqual([...answer!.subarray(0, 6)], [...mac], 'addressed to our MAC');
    assert.deepEqual([...answer!.subarray(32, 38)], [...mac], 'target hardware address: ours');
    open = false;
    drv.close();
    const e = await d.stop();
    assert.equal(e.code, 0, e.stderr);
    const s = lastStats(e.stderr);
    assert.ok(s.tx_packets! >= 1 && s.rx_packets! >= 1, JSON.stringify(s));
    assert.equal(vduseDevExists(name), false);
  },
);

test(
  'vduse serve: a type: net device from the config and one from vduse add; link down/up seen by the guest; stats and metrics',
  { timeout: TEST_TIMEOUT_MS },
  async (t) => {
    if (!requirePrereqs(t, NET_PREREQS)) return;
    const cleanup = useCleanup(t);
    const since = uptimeSeconds();
    const dir = tempDir(cleanup, 'net-serve');
    const socket = `${dir}/vduse.sock`;
    const config = `${dir}/vduse.yaml`;
    const name = 'e2e-net-srv';
    fs.writeFileSync(
      config,
      [
        'devices:',
        `  - type: net`,
        `    name: ${name}`,
        '    tap: vtssrv',
        '    mac: 52:54:00:77:00:02',
        '',
      ].join('\n'),
    );
    const port = 19471;
    const d = ServeDaemon.spawn(['--config', config, '--metrics', `127.0.0.1:${port}`], socket, cleanup);
    await d.waitLog(/management socket/);
    const [info] = JSON.parse(await d.cliOk(['ls', '--json'])) as {
      name: string;
      type: string;
      path: string;
      net: { link: string; mac: string };
    }[];
    assert.equal(info!.type, 'net');
    assert.equal(info!.net.mac, '52:54:00:77:00:02');
    assert.equal(info!.net.link, 'up');
    const nic = info!.path;
    const nsNic = await addNetns(cleanup, 'e2e-srv-nic');
    const nsTap = await addNetns(cleanup, 'e2e-srv-tap');
    await moveInterface(nic, nsNic, `${NIC_IP}/24`);
    await moveInterface('vtssrv', nsTap, `${TAP_IP}/24`);
    await waitForPing(nsNic, TAP_IP);
    assert.equal(await linkAttr(nsNic, nic, 'carrier'), '1');

    assert.equal(await d.cliOk(['link', name, 'down']), `${name}: link down\n`);
    // carrier at once; operstate follows through the kernel's link watch (up to a second later)
    const linkIs = async (carrier: string, operstate: string): Promise<boolean> =>
      (await linkAttr(nsNic, nic, 'carrier')) === carrier &&
      (await linkAttr(nsNic, nic, 'operstate')) === operstate;
    await waitFor('the guest sees no carrier', () => linkIs('0', 'down'), { timeoutMs: 10_000 });
    const dead = await tryInNetns(nsNic, 'ping', ['-c', '1', '-W', '1', TAP_IP]);
    assert.notEqual(dead.code, 0, 'no traffic while the link is down');
    assert.equal(await d.cliOk(['link', name, 'up']), `${name}: link up\n`);
    await waitFor('the guest sees carrier again', () => linkIs('1', 'up'), { timeoutMs: 10_000 });
    await waitForPing(nsNic, TAP_IP);
    await tcpTransfer(cleanup, nsNic, nsTap, TAP_IP, 8 * MiB, 5304);

    const bad = await d.cli(['link', name, 'sideways']);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /^vduse link: the state is up or down/);

    // a second net device at run time, then removed
    const added = (
      await d.cliOk(['add', 'e2e-net-srv2', '--type', 'net', '--tap', 'vtssrv2', '--mtu', '9000'])
    ).trim();
    assert.match(added, /^[a-z][a-z0-9]*$/);
    assert.equal(fs.readFileSync(`/sys/class/net/${added}/mtu`, 'utf8').trim(), '9000');
    await d.cliOk(['del', 'e2e-net-srv2']);
    assert.equal(vdpaDevExists('e2e-net-srv2'), false);

    const stats = await d.cliOk(['stats']);
    assert.match(stats, new RegExp(`\\n${name}\\s+up\\s+\\d+`));
    const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    const value = (re: RegExp): number => Number(re.exec(metrics)?.[1] ?? NaN);
    assert.ok(
      value(new RegExp(`vduse_net_bytes_total\\{device="${name}",direction="tx"\\} (\\d+)`)) >= 8 * MiB,
    );
    assert.ok(value(new RegExp(`vduse_net_packets_total\\{device="${name}",direction="rx"\\} (\\d+)`)) > 0);
    assert.equal(value(new RegExp(`vduse_net_link_up\\{device="${name}"\\} (\\d+)`)), 1);
    assert.ok(value(new RegExp(`vduse_device_config_interrupts_total\\{device="${name}"\\} (\\d+)`)) >= 2);

    const e = await d.stop('SIGTERM', 30_000);
    assert.equal(e.code, 0, d.stderr);
    assert.equal(vdpaDevExists(name), false);
    assert.equal(vduseDevExists(name), false);
    await assertNoKernelWarnings(since);
  },
);

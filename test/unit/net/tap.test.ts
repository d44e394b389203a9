/**
 * TapBackend: the pure parts (ifreq, offload flags, ioctl numbers) always; the real thing when this host lets
 * root create a network namespace and open /dev/net/tun: tap-child.js runs inside a namespace of its own
 * (never the host's interfaces), a virtio-net device on the mock driver talking to that namespace's kernel.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import {
  IFF_NO_PI,
  IFF_TAP,
  IFF_VNET_HDR,
  TUNSETIFF,
  TUNSETOFFLOAD,
  TUNSETVNETHDRSZ,
  TUN_F_CSUM,
  TUN_F_TSO4,
  TUN_F_TSO6,
  decodeIfreqName,
  encodeTunIfreq,
  tunOffloadFlags,
} from '../../../src/backends/packet/tap.js';

describe('TapBackend: encodings', () => {
  it('ioctl numbers and flags are linux/if_tun.h', () => {
    assert.equal(TUNSETIFF, 0x400454ca);
    assert.equal(TUNSETVNETHDRSZ, 0x400454d8);
    assert.equal(TUNSETOFFLOAD, 0x400454d0);
    assert.equal(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, 0x5002);
  });

  it('ifreq: the name NUL-terminated in 16 bytes, flags at 16; bad names refused', () => {
    const ifr = encodeTunIfreq('tap0', IFF_TAP | IFF_NO_PI);
    assert.equal(ifr.length, 40);
    assert.equal(decodeIfreqName(ifr), 'tap0');
    assert.equal(ifr[16]! | (ifr[17]! << 8), 0x1002);
    for (const bad of ['', 'a'.repeat(16), 'a/b', 'a b', 'a:1'])
      assert.throws(() => encodeTunIfreq(bad, IFF_TAP), { code: 'ERR_BACKEND_INVALID' });
  });

  it('offload flags: TSO only with CSUM', () => {
    assert.equal(tunOffloadFlags({ csum: false, tso4: true, tso6: true, ecn: false }), 0);
    assert.equal(tunOffloadFlags({ csum: true, tso4: false, tso6: false, ecn: false }), TUN_F_CSUM);
    assert.equal(
      tunOffloadFlags({ csum: true, tso4: true, tso6: true, ecn: false }),
      TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6,
    );
  });
});

function tapUnusable(): string | null {
  if (process.platform !== 'linux') return 'not Linux';
  if (process.getuid?.() !== 0) return 'needs root (a network namespace and a tap)';
  if (!existsSync('/dev/net/tun')) return 'no /dev/net/tun';
  const ip = spawnSync('ip', ['-V'], { stdio: 'ignore' });
  if (ip.status !== 0) return 'no ip command (iproute2)';
  return null;
}

describe('TapBackend: a real tap in a network namespace of its own', () => {
  const reason = tapUnusable();
  it(
    'frames written by the device appear on the tap and vice versa (ARP, ping, UDP with offloads)',
    { skip: reason ?? false, timeout: 60000 },
    (t) => {
      const ns = `vts-tap-test-${process.pid}`;
      try {
        execFileSync('ip', ['netns', 'add', ns], { stdio: 'pipe' });
      } catch (e) {
        t.skip(`cannot create a network namespace: ${(e as Error).message.split('\n')[0]}`);
        return;
      }
      try {
        const child = join(dirname(fileURLToPath(import.meta.url)), 'tap-child.js');
        const run = spawnSync('ip', ['netns', 'exec', ns, process.execPath, child], {
          env: { ...process.env, VTS_TAP_CHILD: '1' },
          encoding: 'utf8',
          timeout: 50000,
        });
        if (run.status !== 0 && /TUNSETIFF|cannot open \/dev\/net\/tun/.test(run.stderr)) {
          t.skip(`tap not usable here: ${run.stderr.trim().split('\n').pop()}`);
          return;
        }
        assert.equal(run.status, 0, run.stderr);
        const results = JSON.parse(run.stdout.trim().split('\n').pop()!) as Record<string, unknown>[];
        assert.equal(results.length, 2);
        for (const r of results) {
          assert.equal(r.arp, true, JSON.stringify(r));
          assert.equal(r.echoOk, true, JSON.stringify(r));
          assert.equal(r.udpToGuest, 'to the guest');
          assert.equal(r.udpToHost, 'to the host', JSON.stringify(r));
          assert.equal(r.resets, 0);
        }
        const [vnet, plain] = results;
        // Offloads: with IFF_VNET_HDR and GUEST_CSUM the host's UDP checksum is left to the guest.
        assert.equal(vnet!.udpToGuestNeedsCsum, true);
        assert.equal(vnet!.udpToGuestCsumStart, 34);
        assert.equal(plain!.udpToGuestNeedsCsum, false);
      } finally {
        spawnSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
      }
    },
  );
});

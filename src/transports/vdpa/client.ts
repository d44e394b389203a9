/**
 * vdpa netlink calls that never block the calling thread: each runs on a worker thread (./vdpa-worker.ts) that
 * loads the native binding itself and talks to the kernel over a blocking socket. Meanwhile the main thread keeps
 * answering /dev/vduse/NAME, which DEV_NEW (driver probe) and DEV_DEL (reset) need.
 */
import { Worker } from 'node:worker_threads';

import type { SysBinding } from '../../sys/binding.js';
import { VdpaError, type VdpaErrorCode } from './errors.js';
import { VdpaNetlink, type VdpaDeviceInfo, type VdpaMgmtdevInfo } from './netlink.js';

/** A call to the worker. */
export type VdpaCall =
  | { op: 'add'; name: string; mgmtdev?: string }
  | { op: 'delete'; name: string }
  | { op: 'list' }
  | { op: 'list-mgmtdev' };

/** The worker's answer, errors flattened to plain data. */
export type VdpaAnswer =
  | { id: number; ok: true; result: unknown }
  | {
      id: number;
      ok: false;
      error: { name: string; message: string; code?: string; errno?: number; syscall?: string };
    };

/** Runs one call on a synchronous client (what the worker does with each message). */
export function runVdpaCall(client: VdpaNetlink, call: VdpaCall): unknown {
  switch (call.op) {
    case 'add':
      client.addDevice(call.name, call.mgmtdev);
      return null;
    case 'delete':
      client.deleteDevice(call.name);
      return null;
    case 'list':
      return client.listDevices();
    case 'list-mgmtdev':
      return client.listMgmtDevices();
  }
}

export function flattenError(err: unknown): Extract<VdpaAnswer, { ok: false }>['error'] {
  const e = err as NodeJS.ErrnoException;
  const out: Extract<VdpaAnswer, { ok: false }>['error'] = {
    name: e?.name ?? 'Error',
    message: e?.message ?? String(err),
  };
  if (typeof e?.code === 'string') out.code = e.code;
  if (typeof e?.errno === 'number') out.errno = e.errno;
  if (typeof e?.syscall === 'string') out.syscall = e.syscall;
  return out;
}

function restoreError(flat: Extract<VdpaAnswer, { ok: false }>['error']): Error {
  if (flat.name === 'VdpaError' && flat.code) {
    return new VdpaError(flat.code as VdpaErrorCode, flat.message);
  }
  const err = new Error(flat.message) as NodeJS.ErrnoException;
  if (flat.code !== undefined) err.code = flat.code;
  if (flat.errno !== undefined) err.errno = flat.errno;
  if (flat.syscall !== undefined) err.syscall = flat.syscall;
  return err;
}

/** Something that carries calls to a VdpaNetlink somewhere else. */
export interface VdpaTransport {
  call(call: VdpaCall): Promise<unknown>;
  close(): Promise<void>;
}

/** The production transport: one worker thread, calls answered in order. */
export class WorkerTransport implements VdpaTransport {
  readonly #worker: Worker;
  #nextId = 1;
  readonly #pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  #failure: Error | null = null;

  constructor() {
    this.#worker = new Worker(new URL('./worker.js', import.meta.url));
    this.#worker.unref();
    this.#worker.on('message', (answer: VdpaAnswer) => {
      const p = this.#pending.get(answer.id);
      if (!p) return;
      this.#pending.delete(answer.id);
      if (this.#pending.size === 0) this.#worker.unref();
      if (answer.ok) p.resolve(answer.result);
      else p.reject(restoreError(answer.error));
    });
    const fail = (err: Error): void => {
      this.#failure = err;
      for (const p of this.#pending.values()) p.reject(err);
      this.#pending.clear();
    };
    this.#worker.on('error', (err) =>
      fail(new VdpaError('ERR_VDPA', `vdpa worker failed: ${err.message}`, { cause: err })),
    );
    this.#worker.on('exit', (code) => fail(new VdpaError('ERR_VDPA', `vdpa worker exited (code ${code})`)));
  }

  call(call: VdpaCall): Promise<unknown> {
    if (this.#failure) return Promise.reject(this.#failure);
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.#worker.ref();
      this.#worker.postMessage({ id, call });
    });
  }

  async close(): Promise<void> {
    this.#failure ??= new VdpaError('ERR_VDPA', 'the vdpa client is closed');
    await this.#worker.terminate();
  }
}

/** Runs calls on the calling thread: only for fakes (tests) that answer at once. */
export class InlineTransport implements VdpaTransport {
  #client: VdpaNetlink | null = null;
  constructor(readonly binding: SysBinding) {}
  call(call: VdpaCall): Promise<unknown> {
    try {
      this.#client ??= VdpaNetlink.open(this.binding);
      return Promise.resolve(runVdpaCall(this.#client, call));
    } catch (err) {
      return Promise.reject(err as Error);
    }
  }
  close(): Promise<void> {
    this.#client?.close();
    return Promise.resolve();
  }
}

export class VdpaClient {
  constructor(readonly transport: VdpaTransport = new WorkerTransport()) {}

  /** Attach VDUSE device `name` to the vdpa bus (the bus driver's probe has finished when this resolves). */
  async addDevice(name: string, mgmtdev = 'vduse'): Promise<void> {
    await this.transport.call({ op: 'add', name, mgmtdev });
  }

  /** Detach `name` from the vdpa bus (the driver was unbound and the device reset when this resolves). */
  async deleteDevice(name: string): Promise<void> {
    await this.transport.call({ op: 'delete', name });
  }

  async listDevices(): Promise<VdpaDeviceInfo[]> {
    return (await this.transport.call({ op: 'list' })) as VdpaDeviceInfo[];
  }

  async listMgmtDevices(): Promise<VdpaMgmtdevInfo[]> {
    return (await this.transport.call({ op: 'list-mgmtdev' })) as VdpaMgmtdevInfo[];
  }

  close(): Promise<void> {
    return this.transport.close();
  }
}

/**
 * A privileged child process that makes the vdpa netlink calls for a daemon that dropped root (--user): DEV_DEL
 * needs CAP_NET_ADMIN at each call, so detaching at shutdown must come from a process that kept it. It reads
 * { id, call } messages over the IPC channel and answers each; it exits when the parent goes away.
 *
 * HelperTransport (the parent's side) is a VdpaTransport, so a VdpaClient uses it like the worker thread.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

import { loadNativeBinding } from '../sys/native.js';
import {
  flattenError,
  runVdpaCall,
  type VdpaAnswer,
  type VdpaCall,
  type VdpaTransport,
} from '../transports/vdpa/client.js';
import { VdpaNetlink } from '../transports/vdpa/netlink.js';
import { VduseError, type VduseErrorCode } from '../transports/vduse/errors.js';
import { MgmtError } from './daemon/errors.js';

/** A VduseError from the helper is one again here (its code decides what happens); anything else keeps its errno. */
function restore(flat: Extract<VdpaAnswer, { ok: false }>['error']): Error {
  if (flat.name === 'VduseError' && flat.code !== undefined) {
    return new VduseError(flat.code as VduseErrorCode, flat.message);
  }
  const err = new Error(flat.message) as NodeJS.ErrnoException;
  if (flat.code !== undefined) err.code = flat.code;
  return err;
}

export class HelperTransport implements VdpaTransport {
  readonly #child: ChildProcess;
  #nextId = 1;
  readonly #pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  #failure: Error | null = null;

  constructor() {
    this.#child = fork(fileURLToPath(import.meta.url), ['--vdpa-helper'], {
      stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
    });
    this.#child.on('message', (answer: VdpaAnswer) => {
      const p = this.#pending.get(answer.id);
      if (!p) return;
      this.#pending.delete(answer.id);
      if (answer.ok) p.resolve(answer.result);
      else p.reject(restore(answer.error));
      if (this.#pending.size === 0) this.#child.channel?.unref();
    });
    this.#child.channel?.unref();
    this.#child.on('exit', (code) => {
      this.#failure ??= new MgmtError('ERR_MGMT_HELPER', `vdpa helper exited (code ${code})`);
      for (const p of this.#pending.values()) p.reject(this.#failure);
      this.#pending.clear();
    });
  }

  call(call: VdpaCall): Promise<unknown> {
    if (this.#failure) return Promise.reject(this.#failure);
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.#child.channel?.ref();
      this.#child.send({ id, call });
    });
  }

  close(): Promise<void> {
    this.#failure ??= new MgmtError('ERR_MGMT_HELPER', 'the vdpa helper is closed');
    if (this.#child.exitCode !== null || this.#child.signalCode !== null) return Promise.resolve();
    return new Promise((resolve) => {
      this.#child.once('exit', () => resolve());
      this.#child.disconnect();
    });
  }
}

function serveHelper(): void {
  let client: VdpaNetlink | null = null;
  process.on('message', (message: { id: number; call: VdpaCall }) => {
    let answer: VdpaAnswer;
    try {
      client ??= VdpaNetlink.open(loadNativeBinding());
      answer = { id: message.id, ok: true, result: runVdpaCall(client, message.call) };
    } catch (err) {
      answer = { id: message.id, ok: false, error: flattenError(err) };
    }
    process.send?.(answer);
  });
  process.on('disconnect', () => process.exit(0));
}

if (process.argv[2] === '--vdpa-helper' && process.send !== undefined) serveHelper();

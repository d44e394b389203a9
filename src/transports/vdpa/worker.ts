/**
 * The vdpa netlink worker thread (see ./vdpa-client.ts): loads the native binding on this thread, opens a blocking
 * netlink socket on first use, and answers { id, call } messages one at a time.
 */
import { parentPort } from 'node:worker_threads';

import { loadNativeBinding } from '../../sys/native.js';
import { flattenError, runVdpaCall, type VdpaAnswer, type VdpaCall } from './client.js';
import { VdpaNetlink } from './netlink.js';

let client: VdpaNetlink | null = null;

parentPort?.on('message', (message: { id: number; call: VdpaCall }) => {
  let answer: VdpaAnswer;
  try {
    client ??= VdpaNetlink.open(loadNativeBinding());
    answer = { id: message.id, ok: true, result: runVdpaCall(client, message.call) };
  } catch (err) {
    answer = { id: message.id, ok: false, error: flattenError(err) };
  }
  parentPort?.postMessage(answer);
});

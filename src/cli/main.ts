#!/usr/bin/env node
/**
 * The `vduse` command. Exit codes: 0 done, 1 runtime failure (missing kernel support, name taken, not permitted,
 * ...), 2 usage error. Every failure a user can cause is one line on stderr (./report.ts).
 */
// First: V8's tiering for a daemon, before any of its code runs (./tiering.ts).
import './tiering.js';

import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { backendHelp } from '../backends/spec.js';
import { findPackageRoot, loadNativeBinding } from '../sys/native.js';
import { createLogger } from '../common/logger.js';
import { BLK_USAGE, MAIN_USAGE, NET_USAGE, parseCommandLine } from './args.js';
import { runBlk, type BlkEnvironment } from './blk.js';
import { runNet } from './net.js';
import { CLIENT_COMMANDS } from './client.js';
import { listDevices } from './list.js';
import { reportError } from './report.js';

function version(): string {
  const pkg = JSON.parse(readFileSync(join(findPackageRoot(), 'package.json'), 'utf8')) as {
    version: string;
  };
  return pkg.version;
}

function stopSignal(): Promise<string> {
  return new Promise((resolve) => {
    const handler = (signal: string): void => {
      process.off('SIGINT', handler);
      process.off('SIGTERM', handler);
      // A second signal while tearing down: the default action (exit) is back.
      resolve(signal);
    };
    process.on('SIGINT', handler);
    process.on('SIGTERM', handler);
  });
}

/** Run a foreground device command with the process's logger, stdout, signals and binding; its exit code. */
async function foreground(verbose: boolean, run: (env: BlkEnvironment) => Promise<void>): Promise<number> {
  const logger = createLogger({ level: verbose ? 'debug' : 'info', prefix: 'vduse' });
  try {
    await run({
      binding: loadNativeBinding(),
      logger,
      print: (line) => void process.stdout.write(`${line}\n`),
      stopSignal: stopSignal(),
      onSignal: (signal, handler) => void process.on(signal, handler),
    });
    return 0;
  } catch (err) {
    return reportError(err, 'vduse', { verbose });
  }
}

export async function main(argv: readonly string[]): Promise<number> {
  // vduse serve and its client commands (add, del, ls, resize, stats): src/cli/serve.ts, loaded only for them
  // (it pulls in the management stack, which would slow every `vduse blk` start, and so a restart after a crash).
  const first = argv[0] ?? '';
  if (first === 'serve' || (CLIENT_COMMANDS as readonly string[]).includes(first)) {
    const { runOpsCommand } = await import('./serve.js');
    const ops = await runOpsCommand(argv, { version, binding: loadNativeBinding, stopSignal });
    if (ops !== null) return ops;
  }
  let command;
  try {
    command = parseCommandLine(argv);
  } catch (err) {
    return reportError(err);
  }
  switch (command.command) {
    case 'help':
      process.stdout.write(
        command.topic === 'blk'
          ? `${BLK_USAGE}${backendHelp()
              .map((l) => `  ${l}\n`)
              .join('')}`
          : command.topic === 'net'
            ? NET_USAGE
            : MAIN_USAGE,
      );
      return 0;
    case 'version':
      process.stdout.write(`${version()}\n`);
      return 0;
    case 'list': {
      try {
        for (const line of listDevices()) process.stdout.write(`${line}\n`);
      } catch (err) {
        return reportError(err);
      }
      return 0;
    }
    case 'blk':
      return foreground(command.verbose, (env) => runBlk(command, env));
    case 'net':
      return foreground(command.verbose, (env) => runNet(command, env));
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
    // The vdpa worker and watchers are closed by now; exit even if a stray handle lingers.
    setImmediate(() => process.exit(code));
  },
  (err: unknown) => {
    process.stderr.write(`vduse: internal error: ${(err as Error)?.stack ?? String(err)}\n`);
    process.exit(1);
  },
);

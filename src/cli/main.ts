#!/usr/bin/env node
/**
 * The `vduse` command. Exit codes: 0 done, 1 runtime failure (missing kernel support, name taken, not permitted,
 * ...), 2 usage error. Every failure is one line on stderr.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { UsageError } from '../common/errors.js';
import { backendHelp } from '../backends/spec.js';
import { findPackageRoot, loadNativeBinding } from '../sys/native.js';
import { listVduseDevices } from '../transports/vduse/control.js';
import { createLogger } from '../common/logger.js';
import { boundDriver, findBlockDevice, findVhostDevice } from '../transports/vdpa/sysfs.js';
import { BLK_USAGE, CliUsageError, MAIN_USAGE, parseCommandLine } from './args.js';
import { runBlk } from './blk.js';
import { CLIENT_COMMANDS } from './client.js';

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
    if (err instanceof CliUsageError) {
      process.stderr.write(`vduse: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
  switch (command.command) {
    case 'help':
      process.stdout.write(
        command.topic === 'blk'
          ? `${BLK_USAGE}${backendHelp()
              .map((l) => `  ${l}\n`)
              .join('')}`
          : MAIN_USAGE,
      );
      return 0;
    case 'version':
      process.stdout.write(`${version()}\n`);
      return 0;
    case 'list': {
      for (const name of listVduseDevices()) {
        const driver = boundDriver(name);
        const node = findBlockDevice(name) ?? findVhostDevice(name);
        process.stdout.write(`${name}${driver ? ` ${driver}` : ' detached'}${node ? ` /dev/${node}` : ''}\n`);
      }
      return 0;
    }
    case 'blk': {
      const logger = createLogger({ level: command.verbose ? 'debug' : 'info', prefix: 'vduse' });
      try {
        const binding = loadNativeBinding();
        await runBlk(command, {
          binding,
          logger,
          print: (line) => void process.stdout.write(`${line}\n`),
          stopSignal: stopSignal(),
          onSignal: (signal, handler) => void process.on(signal, handler),
        });
        return 0;
      } catch (err) {
        if (err instanceof UsageError) {
          process.stderr.write(`vduse: ${err.message}\n`);
          return 2;
        }
        process.stderr.write(`vduse: ${(err as Error).message}\n`);
        if (command.verbose && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
        return 1;
      }
    }
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

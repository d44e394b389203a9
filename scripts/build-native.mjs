#!/usr/bin/env node
// Builds the native addon (build/Release/vduse_native.node) with npm's own node-gyp.
// Run by `npm install` / `npm ci` (the package's "install" script) and by `npm run build:native`.
//
// node-gyp would otherwise try to download Node's headers (no network here, or a stale ~/.npmrc
// `nodedir`); Node installs from distro packages, official tarballs and nvm ship them next to the
// binary, so pass that directory as --nodedir when it holds headers for this very Node version.

import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, realpathSync } from 'node:fs';
import { delimiter, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = dirname(dirname(fileURLToPath(import.meta.url)));

function fail(message) {
  console.error(`vduse-ts: cannot build the native addon: ${message}`);
  process.exit(1);
}

/** The first `name` on PATH, or undefined. */
function which(name) {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir && existsSync(join(dir, name))) return join(dir, name);
  }
  return undefined;
}

/** The node-gyp that ships with npm: npm passes its path when running scripts; else look next to npm. */
function findNodeGyp() {
  const candidates = [process.env.npm_config_node_gyp];
  const npm = which('npm');
  if (npm) {
    // .../lib/node_modules/npm/bin/npm-cli.js -> .../lib/node_modules/npm
    const npmRoot = dirname(dirname(realpathSync(npm)));
    candidates.push(join(npmRoot, 'node_modules/node-gyp/bin/node-gyp.js'));
  }
  const prefix = dirname(dirname(process.execPath));
  candidates.push(join(prefix, 'lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js'));
  return candidates.find((file) => file && existsSync(file));
}

/** The Node install prefix if it holds the headers of the running Node, else undefined. */
function localNodeDir() {
  const prefix = dirname(dirname(process.execPath));
  const header = join(prefix, 'include/node/node_version.h');
  if (!existsSync(header)) return undefined;
  const text = readFileSync(header, 'utf8');
  const part = (name) => new RegExp(`#define\\s+NODE_${name}_VERSION\\s+(\\d+)`).exec(text)?.[1];
  const version = `v${part('MAJOR')}.${part('MINOR')}.${part('PATCH')}`;
  return version === process.version ? prefix : undefined;
}

const missing = [];
if (!which(process.env.CXX ?? 'g++')) missing.push(process.env.CXX ?? 'g++');
if (!which('make')) missing.push('make');
if (!process.env.PYTHON && !process.env.npm_config_python && !which('python3')) missing.push('python3');
const nodeGyp = findNodeGyp();
if (!nodeGyp) missing.push("node-gyp (npm's bundled copy)");
if (missing.length > 0) fail(`missing ${missing.join(', ')}`);

const args = [nodeGyp, 'rebuild', '--loglevel=warn'];
const nodeDir = localNodeDir();
if (nodeDir) args.push(`--nodedir=${nodeDir}`);
const result = spawnSync(process.execPath, args, { cwd: root, stdio: 'inherit' });
if (result.status !== 0) {
  fail(
    nodeDir
      ? `node-gyp failed (see the output above)`
      : `node headers for ${process.version} not found in ${dirname(dirname(process.execPath))}/include/node ` +
          `and node-gyp could not get them (see the output above)`,
  );
}

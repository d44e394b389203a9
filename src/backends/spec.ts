/**
 * Backend spec strings, as given on the command line: `KIND:ARGUMENT[,KEY=VALUE...]`.
 *
 *   null:SIZE[,readonly=on][,read-zeroes=off]
 *   memory:SIZE[,readonly=on][,chunk=SIZE]
 *   file:PATH[,direct=on][,readonly=on][,size=SIZE][,nowait=off]
 *
 * Sizes are bytes with an optional binary suffix (512, 4K, 1M, 1G, 1T, or 4KiB, 1MiB...), a multiple of 512.
 * Booleans are on/off (also yes/no, true/false, 1/0; a key alone means on). A comma inside the argument or a
 * value is written twice (`file:/images/a,,b.img`).
 *
 * Kinds live in a registry: registerBackend('nbd', { parse, open, help }) adds one.
 */
import type { SysBinding } from '../sys/binding.js';
import type { BlockBackend } from './backend.js';
import { UsageError } from '../common/errors.js';
import { FileBackend } from './file-backend.js';
import { MemoryBackend } from './memory-backend.js';
import { NullBackend } from './null-backend.js';
import { SECTOR_SIZE, parseSize } from './size.js';

/** A parsed spec. Each kind extends it with its own fields. */
export interface BackendSpec {
  readonly kind: string;
  /** The spec text it came from (for messages). */
  readonly source: string;
}

export interface NullBackendSpec extends BackendSpec {
  readonly kind: 'null';
  readonly size: number;
  readonly readOnly: boolean;
  readonly readZeroes: boolean;
}

export interface MemoryBackendSpec extends BackendSpec {
  readonly kind: 'memory';
  readonly size: number;
  readonly readOnly: boolean;
  readonly chunkSize: number | undefined;
}

export interface FileBackendSpec extends BackendSpec {
  readonly kind: 'file';
  readonly path: string;
  readonly direct: boolean;
  readonly readOnly: boolean;
  /** Try buffered I/O on the event-loop thread first (FileBackendOptions.nowait); `nowait=off` clears it. */
  readonly nowait: boolean;
  /** Create the file with this size when it does not exist. */
  readonly size: number | undefined;
}

/** What opening a backend may need from its caller. */
export interface BackendDeps {
  /** Syscalls for backends that need them (file); default: the native addon. */
  binding?: SysBinding;
  /** Notes from the backend (fallbacks taken and the like). */
  log?: (message: string) => void;
  /** Open read-only whatever the spec says (the device is read-only anyway). */
  readOnly?: boolean;
}

/** A spec split at its first ':' (`rest` is everything after it). */
export interface SpecText {
  readonly source: string;
  readonly kind: string;
  readonly rest: string;
}

export interface BackendKind<S extends BackendSpec = BackendSpec> {
  /** Check the spec and turn it into the kind's spec object; throw UsageError (see specError) when it is bad. */
  parse(text: SpecText): S;
  open(spec: S, deps: BackendDeps): Promise<BlockBackend>;
  /** Syntax and keys in one line, e.g. `memory:SIZE[,readonly=on][,chunk=SIZE]  RAM disk, sparse`. */
  help: string;
}

const registry = new Map<string, BackendKind>();

/** Add a backend kind (or replace one of the same name). */
export function registerBackend<S extends BackendSpec>(kind: string, definition: BackendKind<S>): void {
  if (!/^[a-z][a-z0-9+.-]*$/.test(kind)) throw new RangeError(`backend kind '${kind}' is not a valid name`);
  registry.set(kind, definition as unknown as BackendKind);
}

/** The kinds known, in registration order. */
export function backendKinds(): string[] {
  return [...registry.keys()];
}

/** One help line per kind. */
export function backendHelp(): string[] {
  return [...registry.values()].map((kind) => kind.help);
}

/** A UsageError (code ERR_BACKEND_SPEC) about spec `source`: "backend spec 'SOURCE': PROBLEM". */
export function specError(source: string, problem: string): UsageError {
  return new UsageError(`backend spec '${source}': ${problem}`, { code: 'ERR_BACKEND_SPEC' });
}

export function parseBackendSpec(spec: string): BackendSpec {
  const colon = spec.indexOf(':');
  const kinds = backendKinds().join(', ');
  if (colon <= 0) throw specError(spec, `expected KIND:ARGUMENT (kinds: ${kinds})`);
  const kind = spec.slice(0, colon);
  const definition = registry.get(kind);
  if (definition === undefined) throw specError(spec, `unknown kind '${kind}' (kinds: ${kinds})`);
  return definition.parse({ source: spec, kind, rest: spec.slice(colon + 1) });
}

/** Open the backend a spec (string or parsed) describes. */
export async function openBackend(spec: BackendSpec | string, deps: BackendDeps = {}): Promise<BlockBackend> {
  const parsed = typeof spec === 'string' ? parseBackendSpec(spec) : spec;
  const definition = registry.get(parsed.kind);
  if (definition === undefined) throw specError(parsed.source, `unknown kind '${parsed.kind}'`);
  return definition.open(parsed, deps);
}

/** `ARGUMENT,KEY=VALUE,...` split up, with `,,` read as a literal comma. */
export interface SpecOptions {
  readonly argument: string;
  readonly keys: ReadonlyMap<string, string>;
}

/**
 * Split `text.rest` into the argument and the keys. Throws on an empty argument, a key given twice or a key not
 * in `allowed`.
 */
export function splitSpecOptions(
  text: SpecText,
  allowed: readonly string[],
  argumentName: string,
): SpecOptions {
  const fields: string[] = [];
  let current = '';
  const rest = text.rest;
  for (let i = 0; i < rest.length; i++) {
    const c = rest[i]!;
    if (c !== ',') current += c;
    else if (rest[i + 1] === ',') {
      current += ',';
      i++;
    } else {
      fields.push(current);
      current = '';
    }
  }
  fields.push(current);
  const argument = fields[0]!;
  if (argument === '') throw specError(text.source, `missing ${argumentName} after '${text.kind}:'`);
  const keys = new Map<string, string>();
  for (const field of fields.slice(1)) {
    const eq = field.indexOf('=');
    const key = (eq < 0 ? field : field.slice(0, eq)).trim();
    const value = eq < 0 ? 'on' : field.slice(eq + 1).trim();
    if (key === '') throw specError(text.source, 'empty option (a stray comma?)');
    if (!allowed.includes(key)) {
      const known =
        allowed.length > 0 ? ` (options: ${allowed.join(', ')})` : ` (${text.kind} takes no options)`;
      throw specError(text.source, `unknown option '${key}'${known}`);
    }
    if (keys.has(key)) throw specError(text.source, `option '${key}' given twice`);
    keys.set(key, value);
  }
  return { argument, keys };
}

/** A size in bytes: binary suffixes, a multiple of 512, more than 0. */
export function specSize(source: string, text: string, what = 'size'): number {
  const size = parseSize(text);
  if (size === null) {
    throw specError(source, `bad ${what} '${text}' (use a number with an optional K, M, G or T suffix)`);
  }
  if (size === 0) throw specError(source, `${what} must be more than 0`);
  if (size % SECTOR_SIZE !== 0) throw specError(source, `${what} ${text} is not a multiple of 512 bytes`);
  return size;
}

const TRUE_WORDS = ['on', 'yes', 'true', '1'];
const FALSE_WORDS = ['off', 'no', 'false', '0'];

/** An on/off option; `fallback` when absent. */
export function specBoolean(
  source: string,
  keys: ReadonlyMap<string, string>,
  key: string,
  fallback: boolean,
): boolean {
  const value = keys.get(key);
  if (value === undefined) return fallback;
  const word = value.toLowerCase();
  if (TRUE_WORDS.includes(word)) return true;
  if (FALSE_WORDS.includes(word)) return false;
  throw specError(source, `option ${key}=${value} is not on or off`);
}

registerBackend<NullBackendSpec>('null', {
  help: 'null:SIZE[,readonly=on][,read-zeroes=off]  reads give zeroes, writes are dropped (benchmark baseline)',
  parse(text) {
    const { argument, keys } = splitSpecOptions(text, ['readonly', 'read-zeroes'], 'SIZE');
    return {
      kind: 'null',
      source: text.source,
      size: specSize(text.source, argument),
      readOnly: specBoolean(text.source, keys, 'readonly', false),
      readZeroes: specBoolean(text.source, keys, 'read-zeroes', true),
    };
  },
  open(spec, deps) {
    const readOnly = spec.readOnly || deps.readOnly === true;
    return Promise.resolve(new NullBackend({ size: spec.size, readOnly, readZeroes: spec.readZeroes }));
  },
});

registerBackend<MemoryBackendSpec>('memory', {
  help: 'memory:SIZE[,readonly=on][,chunk=SIZE]  RAM disk; memory is used only where data was written',
  parse(text) {
    const { argument, keys } = splitSpecOptions(text, ['readonly', 'chunk'], 'SIZE');
    const chunk = keys.get('chunk');
    let chunkSize: number | undefined;
    if (chunk !== undefined) {
      chunkSize = specSize(text.source, chunk, 'chunk size');
      if (chunkSize < 4096 || chunkSize > 2 ** 26 || (chunkSize & (chunkSize - 1)) !== 0) {
        throw specError(text.source, `chunk size ${chunk} is not a power of two from 4K to 64M`);
      }
    }
    return {
      kind: 'memory',
      source: text.source,
      size: specSize(text.source, argument),
      readOnly: specBoolean(text.source, keys, 'readonly', false),
      chunkSize,
    };
  },
  open(spec, deps) {
    return Promise.resolve(
      new MemoryBackend({
        size: spec.size,
        readOnly: spec.readOnly || deps.readOnly === true,
        ...(spec.chunkSize !== undefined ? { chunkSize: spec.chunkSize } : {}),
      }),
    );
  },
});

registerBackend<FileBackendSpec>('file', {
  help:
    'file:PATH[,direct=on][,readonly=on][,size=SIZE][,nowait=off]  raw image or block device; size= creates a ' +
    'missing file; nowait=off sends every read/write to the thread pool',
  parse(text) {
    const { argument, keys } = splitSpecOptions(text, ['direct', 'readonly', 'size', 'nowait'], 'PATH');
    const size = keys.get('size');
    const readOnly = specBoolean(text.source, keys, 'readonly', false);
    if (readOnly && size !== undefined)
      throw specError(text.source, 'size= creates a file: not with readonly=on');
    return {
      kind: 'file',
      source: text.source,
      path: argument,
      direct: specBoolean(text.source, keys, 'direct', false),
      readOnly,
      nowait: specBoolean(text.source, keys, 'nowait', true),
      size: size === undefined ? undefined : specSize(text.source, size),
    };
  },
  open(spec, deps) {
    return FileBackend.open({
      path: spec.path,
      direct: spec.direct,
      nowait: spec.nowait,
      readOnly: spec.readOnly || deps.readOnly === true,
      ...(spec.size !== undefined ? { size: spec.size } : {}),
      ...(deps.binding !== undefined ? { binding: deps.binding } : {}),
      ...(deps.log !== undefined ? { log: deps.log } : {}),
    });
  },
});

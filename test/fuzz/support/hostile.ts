/**
 * Input nobody should be able to hurt the service with: path traversal,
 * shell metacharacters, NUL and other control characters, Unicode that
 * normalises, reverses or is not valid UTF-16, huge values, values of every
 * JSON type, deep nesting, prototype keys. Every string meant to reach a
 * file system or a shell carries the run's canary, so a search for the
 * canary afterwards shows whether one ever did.
 */
import { createHash } from 'node:crypto';
import fc from 'fast-check';
import { FUZZ_SEED } from './settings.js';

/**
 * A name no file has unless the input made it: it is searched for on disk after the run. It follows from
 * the seed, so that a replayed run sends the very same bytes.
 */
export const CANARY = `vtpmfuzz${createHash('sha256').update(String(FUZZ_SEED)).digest('hex').slice(0, 10)}`;

const TRAVERSAL = [
  `../${CANARY}`,
  `../../../../../../../../tmp/${CANARY}`,
  `/tmp/${CANARY}`,
  `/tmp/${CANARY}/`,
  `..%2f..%2f..%2ftmp%2f${CANARY}`,
  `%2e%2e%2f%2e%2e%2f${CANARY}`,
  `%252e%252e%252f${CANARY}`,
  `....//....//${CANARY}`,
  `..\\..\\${CANARY}`,
  `~/${CANARY}`,
  `file:///tmp/${CANARY}`,
  `./${CANARY}`,
  '.',
  '..',
  '/',
  '/etc/passwd',
  '/proc/self/environ',
  '/dev/zero',
  '/dev/stdin',
];

const SHELL = [
  `$(touch /tmp/${CANARY})`,
  `\`touch /tmp/${CANARY}\``,
  `; touch /tmp/${CANARY}`,
  `| touch /tmp/${CANARY}`,
  `&& touch /tmp/${CANARY} &&`,
  `'; touch /tmp/${CANARY}; '`,
  `"; touch /tmp/${CANARY}; "`,
  `\ntouch /tmp/${CANARY}\n`,
  `> /tmp/${CANARY}`,
  // biome-ignore lint/suspicious/noTemplateCurlyInString: a shell expansion, sent as it is on purpose
  '${IFS}',
  '$HOME',
  '*',
  '-rf',
  '--help',
  '-',
  '--',
  '-h',
];

const TEXT = [
  '',
  ' ',
  '\t',
  '\u0000',
  `a\u0000/tmp/${CANARY}`,
  '\u0000\u0000\u0000',
  '\r\nX-Injected: 1',
  '\u0007\u001b[31m',
  '\uFEFF',
  '\u202E',
  '\u2028\u2029',
  '\u0085',
  'e\u0301',
  'İ',
  'ß',
  'Ａｄｍｉｎ',
  '\uD800',
  '\uDFFF',
  'a\uD83D',
  '🙂',
  '𝕍𝕋ℙ𝕄',
  '__proto__',
  'constructor',
  'prototype',
  'toString',
  'hasOwnProperty',
  'null',
  'undefined',
  'true',
  '0',
  '-1',
  '-0',
  '1e309',
  'NaN',
  'Infinity',
  '0x10',
  '1.5',
  '9007199254740993',
  '%00',
  '%ff%fe',
  '%',
  '%zz',
  '{"a":1}',
  '[]',
  "<tpm model='x'/>",
  ']]><!--',
  "' OR '1'='1' --",
  '%s%s%n',
  '\\',
  '"',
  '00000000-0000-0000-0000-000000000000',
  'FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF',
  ' 6f1c2a0e-9b7d-4c3e-8f21-0a1b2c3d4e5f',
  '6f1c2a0e-9b7d-4c3e-8f21-0a1b2c3d4e5f\n',
  '6f1c2a0e9b7d4c3e8f210a1b2c3d4e5f',
  '{6f1c2a0e-9b7d-4c3e-8f21-0a1b2c3d4e5f}',
];

/** Large enough to pass any sane field limit, small enough to fit the body limit. */
const HUGE = [
  'A'.repeat(70_000),
  '../'.repeat(20_000),
  'é'.repeat(40_000),
  '\u0000'.repeat(10_000),
  '🙂'.repeat(20_000),
];

/** Hostile strings, with `known` (real names and UUIDs of the service) now and then, alone or mixed in. */
export function hostileString(known: readonly string[] = []): fc.Arbitrary<string> {
  const fixed = [...TRAVERSAL, ...SHELL, ...TEXT];
  const knownValues = known.length > 0 ? [fc.constantFrom(...known)] : [];
  const piece = fc.oneof(fc.constantFrom(...fixed), ...knownValues, fc.string({ unit: 'binary', maxLength: 12 }));
  return fc.oneof(
    { arbitrary: fc.constantFrom(...fixed), weight: 6 },
    ...knownValues.map((arbitrary) => ({ arbitrary, weight: 2 })),
    { arbitrary: fc.string({ unit: 'binary', maxLength: 40 }), weight: 3 },
    { arbitrary: fc.string({ unit: 'grapheme', minLength: 1, maxLength: 40 }), weight: 1 },
    { arbitrary: fc.array(piece, { minLength: 2, maxLength: 4 }).map((parts) => parts.join('')), weight: 3 },
    { arbitrary: fc.constantFrom(...HUGE), weight: 1 },
  );
}

/** An array nested `depth` levels deep, built without recursion. */
export function nested(depth: number, leaf: unknown = 0): unknown {
  let value: unknown = leaf;
  for (let i = 0; i < depth; i += 1) value = i % 2 === 0 ? [value] : { a: value };
  return value;
}

/** A JSON value of any type, shape or size: what a field of the wrong type gets. */
export function hostileJson(known: readonly string[] = []): fc.Arbitrary<unknown> {
  const scalar = fc.oneof(
    fc.constantFrom(null, true, false, 0, -0, -1, 1.5, 2 ** 53 + 2, -(2 ** 63), 1e308, Number.MIN_VALUE),
    fc.integer(),
    fc.double({ noNaN: true, noDefaultInfinity: true }),
    hostileString(known),
  );
  const polluted = fc.constantFrom(
    JSON.parse('{"__proto__":{"admin":true,"roles":["admin"]}}') as unknown,
    JSON.parse('{"constructor":{"prototype":{"admin":true}}}') as unknown,
  );
  return fc.oneof(
    { arbitrary: scalar, weight: 6 },
    { arbitrary: fc.array(scalar, { maxLength: 5 }), weight: 2 },
    { arbitrary: fc.dictionary(hostileString(known), scalar, { maxKeys: 4 }), weight: 2 },
    { arbitrary: polluted, weight: 1 },
    { arbitrary: fc.integer({ min: 50, max: 400 }).map((depth) => nested(depth)), weight: 1 },
    { arbitrary: fc.constant(Array.from({ length: 20_000 }, (_, i) => i)), weight: 1 },
  );
}

type Path = Array<string | number>;

function pathsOf(value: unknown, depth: number, at: Path = []): Path[] {
  if (depth === 0 || value === null || typeof value !== 'object') return [at];
  const children = Array.isArray(value) ? value.map((_, i) => i) : Object.keys(value);
  return [at, ...children.flatMap((key) => pathsOf((value as Record<string, unknown>)[key], depth - 1, [...at, key]))];
}

function edited(
  value: unknown,
  path: Path,
  edit: (parent: Record<string | number, unknown>, key: string | number) => void,
) {
  const copy = structuredClone(value) as Record<string | number, unknown>;
  let parent = copy;
  for (const key of path.slice(0, -1)) parent = parent[key] as Record<string | number, unknown>;
  edit(parent, path.at(-1)!);
  return copy;
}

/** `value` with one place in its tree replaced by a hostile value, removed, or given a sibling nobody expects. */
export function mutatedJson(value: unknown, known: readonly string[] = []): fc.Arbitrary<unknown> {
  const inner = pathsOf(value, 4).filter((path) => path.length > 0);
  if (inner.length === 0) return hostileJson(known);
  const path = fc.constantFrom(...inner);
  return fc.oneof(
    fc.tuple(path, hostileJson(known)).map(([p, bad]) => edited(value, p, (parent, key) => (parent[key] = bad))),
    path.map((p) =>
      edited(value, p, (parent, key) =>
        Array.isArray(parent) ? parent.splice(Number(key), 1) : delete parent[key as string],
      ),
    ),
    fc
      .tuple(path, hostileString(known), hostileJson(known))
      .map(([p, name, extra]) => edited(value, p.slice(0, -1).concat(name), (parent, key) => (parent[key] = extra))),
  );
}

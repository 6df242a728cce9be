/**
 * Damage to a file or a blob, byte by byte: bits flipped, bytes set,
 * inserted, removed, the end cut off or extended, at positions fast-check
 * chooses (often near the start, where headers are, and near the end).
 */
import fc from 'fast-check';

export type ByteEdit =
  | { kind: 'flip'; at: number; mask: number }
  | { kind: 'set'; at: number; value: number }
  | { kind: 'insert'; at: number; bytes: Uint8Array }
  | { kind: 'remove'; at: number; count: number }
  | { kind: 'truncate'; at: number }
  | { kind: 'append'; bytes: Uint8Array };

/** Positions are read modulo the length at the time of the edit: several edits compose on any input. */
function position(length: number): fc.Arbitrary<number> {
  return fc.oneof(
    fc.nat({ max: Math.min(63, length) }),
    fc.nat({ max: length }),
    fc.nat({ max: Math.min(31, length) }).map((back) => length - back),
  );
}

function byteEdits(length: number): fc.Arbitrary<ByteEdit[]> {
  const at = position(length);
  const bytes = fc.uint8Array({ minLength: 1, maxLength: 64 });
  const edit: fc.Arbitrary<ByteEdit> = fc.oneof(
    {
      arbitrary: fc.record({ kind: fc.constant('flip' as const), at, mask: fc.integer({ min: 1, max: 255 }) }),
      weight: 5,
    },
    {
      arbitrary: fc.record({ kind: fc.constant('set' as const), at, value: fc.integer({ min: 0, max: 255 }) }),
      weight: 2,
    },
    { arbitrary: fc.record({ kind: fc.constant('insert' as const), at, bytes }), weight: 1 },
    {
      arbitrary: fc.record({ kind: fc.constant('remove' as const), at, count: fc.integer({ min: 1, max: 64 }) }),
      weight: 1,
    },
    { arbitrary: fc.record({ kind: fc.constant('truncate' as const), at }), weight: 2 },
    { arbitrary: fc.record({ kind: fc.constant('append' as const), bytes }), weight: 1 },
  );
  return fc.array(edit, { minLength: 1, maxLength: 3 });
}

function applyEdits(original: Buffer, edits: ByteEdit[]): Buffer {
  let bytes = Buffer.from(original);
  for (const edit of edits) {
    const at = edit.kind === 'append' ? bytes.length : bytes.length === 0 ? 0 : edit.at % bytes.length;
    switch (edit.kind) {
      case 'flip':
        if (bytes.length > 0) bytes[at] = bytes[at]! ^ edit.mask;
        break;
      case 'set':
        if (bytes.length > 0) bytes[at] = edit.value;
        break;
      case 'insert':
        bytes = Buffer.concat([bytes.subarray(0, at), edit.bytes, bytes.subarray(at)]);
        break;
      case 'remove':
        bytes = Buffer.concat([bytes.subarray(0, at), bytes.subarray(at + edit.count)]);
        break;
      case 'truncate':
        bytes = bytes.subarray(0, at);
        break;
      case 'append':
        bytes = Buffer.concat([bytes, edit.bytes]);
        break;
    }
  }
  return bytes;
}

/** Edits that change something: a `set` to the value already there, alone, damages nothing. */
export function damaging(original: Buffer): fc.Arbitrary<{ edits: ByteEdit[]; damaged: Buffer }> {
  return byteEdits(original.length)
    .map((edits) => ({ edits, damaged: applyEdits(original, edits) }))
    .filter(({ damaged }) => !damaged.equals(original));
}

/**
 * The commits in an SQLite database's write-ahead log since its last reset: with `synchronous = FULL`
 * each is one fsync, so tests count what a piece of work made durable by the difference. A frame is a
 * commit when its header gives the database's size after it; frames left over from before a reset carry
 * other salts and do not count.
 */
import { readFile } from 'node:fs/promises';

const WAL_HEADER = 32;
const FRAME_HEADER = 24;

export async function walCommits(databasePath: string): Promise<number> {
  const wal = await readFile(`${databasePath}-wal`);
  const pageSize = wal.readUInt32BE(8);
  const salts = wal.subarray(16, 24);
  let commits = 0;
  for (let at = WAL_HEADER; at + FRAME_HEADER + pageSize <= wal.length; at += FRAME_HEADER + pageSize) {
    if (!wal.subarray(at + 8, at + 16).equals(salts)) break;
    if (wal.readUInt32BE(at + 4) !== 0) commits += 1;
  }
  return commits;
}

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { generationsToPrune } from './retention.js';

const now = new Date('2026-12-10T12:00:00.000Z');
/** Generation n made at the given time. */
const made = (entries: Array<[number, string]>) =>
  entries.map(([generation, created_at]) => ({ generation, created_at }));

describe('retention', () => {
  it('keeps the newest N whatever their day, and nothing else without days', () => {
    const generations = made([
      [1, '2026-12-01T10:00:00.000Z'],
      [2, '2026-12-05T10:00:00.000Z'],
      [3, '2026-12-10T10:00:00.000Z'],
      [4, '2026-12-10T11:00:00.000Z'],
    ]);
    assert.deepEqual(generationsToPrune(generations, { newest: 2, days: 0 }, now).sort(), [1, 2]);
    assert.deepEqual(generationsToPrune(generations, { newest: 10, days: 0 }, now), []);
  });

  it("beyond the newest N keeps each day's last generation for D days, and prunes older days", () => {
    const generations = made([
      [1, '2026-11-20T09:00:00.000Z'], // older than 7 days
      [2, '2026-12-08T09:00:00.000Z'],
      [3, '2026-12-08T18:00:00.000Z'], // Dec 8's last
      [4, '2026-12-09T07:00:00.000Z'],
      [5, '2026-12-09T23:59:59.000Z'], // Dec 9's last
      [6, '2026-12-10T08:00:00.000Z'], // today's last outside the newest 2
      [7, '2026-12-10T09:00:00.000Z'],
      [8, '2026-12-10T10:00:00.000Z'],
    ]);
    const pruned = generationsToPrune(generations, { newest: 2, days: 7 }, now).sort((a, b) => a - b);
    assert.deepEqual(pruned, [1, 2, 4]);
  });

  it('a generation of the oldest kept day is kept; one of the day before is not', () => {
    const generations = made([
      [1, '2026-12-03T23:00:00.000Z'],
      [2, '2026-12-04T00:30:00.000Z'],
      [3, '2026-12-10T11:00:00.000Z'],
    ]);
    assert.deepEqual(generationsToPrune(generations, { newest: 1, days: 7 }, now), [1]);
  });
});

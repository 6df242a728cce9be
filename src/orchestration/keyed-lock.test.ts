import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import { KeyedLock } from './keyed-lock.js';

describe('KeyedLock', () => {
  it('runs operations on one key one after the other, in order', async () => {
    const lock = new KeyedLock();
    const events: string[] = [];
    const op = (name: string, ms: number) =>
      lock.run('vm', async () => {
        events.push(`${name}+`);
        await delay(ms);
        events.push(`${name}-`);
      });
    await Promise.all([op('a', 20), op('b', 1), op('c', 1)]);
    assert.deepEqual(events, ['a+', 'a-', 'b+', 'b-', 'c+', 'c-']);
  });
  it('lets different keys overlap', async () => {
    const lock = new KeyedLock();
    const events: string[] = [];
    await Promise.all([
      lock.run('x', async () => {
        events.push('x+');
        await delay(20);
        events.push('x-');
      }),
      lock.run('y', async () => {
        events.push('y+');
        await delay(1);
        events.push('y-');
      }),
    ]);
    assert.deepEqual(events, ['x+', 'y+', 'y-', 'x-']);
  });
  it('releases the key when an operation fails', async () => {
    const lock = new KeyedLock();
    await assert.rejects(
      lock.run('vm', async () => {
        throw new Error('boom');
      }),
      /boom/,
    );
    assert.equal(await lock.run('vm', async () => 'next'), 'next');
  });
});

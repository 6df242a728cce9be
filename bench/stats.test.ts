import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { p99OrMax, summarize } from './stats.js';

const oneTo = (n: number) => Array.from({ length: n }, (_, i) => n - i);

describe('benchmark summaries', () => {
  it('name no p99 below 100 samples, and call the largest the maximum', () => {
    const few = summarize(oneTo(20));
    assert.equal(few.p99, undefined);
    assert.equal(few.max, 20);
    assert.equal(p99OrMax(few, 0), 'max 20 (n=20)');
  });

  it('take percentiles by nearest rank', () => {
    const hundred = summarize(oneTo(100));
    assert.equal(hundred.p99, 99, 'the 99th of 100, not the maximum');
    assert.equal(hundred.p50, 50);
    assert.equal(p99OrMax(hundred, 0), '99');
    assert.equal(summarize([1, 2]).p50, 1);
    assert.equal(summarize(oneTo(1000)).p99, 990);
  });
});

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { TooManyRequestsError } from '../../errors.js';
import { AuthThrottle } from './auth-throttle.js';

describe('AuthThrottle', () => {
  it('refuses an address after too many failures in a window, and lets it try again after', () => {
    let now = 0;
    const throttle = new AuthThrottle(() => now, 3);
    for (let i = 0; i < 3; i += 1) {
      throttle.check('192.0.2.1');
      throttle.failed('192.0.2.1');
    }
    assert.throws(() => throttle.check('192.0.2.1'), TooManyRequestsError);
    throttle.check('192.0.2.2');
    now = 10_000;
    throttle.check('192.0.2.1');
  });
});

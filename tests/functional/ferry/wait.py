"""The functional tests' one way to wait for something, and their one
retry policy for measurements on a noisy shared host."""

import time
import warnings

# Rate measurements on the shared, noisy PVM host get up to this many
# tries.  Host slow phases last minutes, long enough for two tries in a
# row to fail together and the next to pass, so two are not enough.
ATTEMPTS = 3


def until(predicate, timeout, message, interval=0.1):
    """Call PREDICATE every INTERVAL seconds until it returns a true
    value, and return that value.  After TIMEOUT seconds raise an
    AssertionError saying MESSAGE (a string, or a callable returning one
    so that it can describe the state at the time).  PREDICATE may raise
    itself to give up early (e.g. when the process it waits for died)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError('%s (waited %gs)' % (text, timeout))
        time.sleep(interval)


def retry_on_noise(check, *args, prepare_retry=None, attempts=ATTEMPTS):
    """CHECK(*ARGS), up to ATTEMPTS times, each retry after PREPARE_RETRY
    (e.g. booting a fresh guest) if given: a real regression fails every
    try, a slow phase of the host only some.  Each failed try is a
    warning, so that pytest's summary shows it."""
    for attempt in range(1, attempts + 1):
        try:
            return check(*args)
        except AssertionError as failure:
            if attempt == attempts:
                raise
            warnings.warn('ATTEMPT %d FAILED, retrying: %s' % (attempt, failure))
            if prepare_retry:
                prepare_retry()

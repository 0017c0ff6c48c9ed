"""The memory pattern of the x86-dirty guest (tests/guests/x86-dirty.S).

Each pass increments the first byte of every page of the dirty range in
ascending order, so a consistent snapshot of those bytes reads "v+1 for
a prefix, v for the rest" modulo 256, with at most one step.  Anything
else means a page write was lost, duplicated or misplaced.
"""

PAGE = 4096
DIRTY_START = 0x100000
PASS_COUNTER = 0x7e00


def page_bytes(dump, start=DIRTY_START, end=None, base=0):
    """First byte of every page in [START, END) of DUMP (which holds guest
    physical memory from address BASE)."""
    end = end if end is not None else base + len(dump)
    return dump[start - base:end - base:PAGE]


def check_dirty_pattern(values):
    """Return None if VALUES (page bytes in address order) fit the pattern,
    or a message naming the first page that does not."""
    if not values:
        return 'no pages to check'
    steps = 0
    for i in range(1, len(values)):
        prev, cur = values[i - 1], values[i]
        if cur == prev:
            continue
        if cur == (prev - 1) & 0xff and steps == 0:
            steps = 1
            continue
        return ('page %d (0x%x) holds 0x%02x after 0x%02x: a lost or '
                'misplaced write' % (i, DIRTY_START + i * PAGE, cur, prev))
    return None


def pattern_passes(values):
    """Value v of the pattern (the byte of the pages not yet written in
    the current pass); with PASS_COUNTER mod 256 it tells how far the
    guest got."""
    return values[-1]


def pages_written(values, passes):
    """Total page writes the guest has made: PASSES complete passes over
    all pages, plus the prefix of the current pass already written (pages
    whose byte is one ahead of the pass count)."""
    ahead = (passes + 1) & 0xff
    prefix = 0
    while prefix < len(values) and values[prefix] == ahead:
        prefix += 1
    return passes * len(values) + prefix

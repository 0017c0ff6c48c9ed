"""Test results for tests/run: TAP parsing, exceptions, the summary."""

import collections
import re

Exception_ = collections.namedtuple('BaseException', 'target binary path reason')

TAP_LINE = re.compile(r'^(ok|not ok) \d+ (\S+)(?:\s+#\s*(SKIP|TODO)\b\s*(.*))?$')


PLAN_SKIP = re.compile(r'^1\.\.0(?:\s+#\s*SKIP\s*(.*))?$')
SKIP_COMMENT = re.compile(r'^#\s*Skipping test:\s*(.*)$')


def parse_tap(text):
    """[(path, 'pass'|'fail'|'skip', reason)] from GLib's --tap output.

    A binary that skips as a whole (plan "1..0") yields one entry with
    the path '*' and the reason it gave."""
    cases = []
    why = ''
    for line in text.splitlines():
        m = SKIP_COMMENT.match(line.strip())
        if m:
            why = m.group(1)
        m = PLAN_SKIP.match(line.strip())
        if m:
            cases.append(('*', 'skip', m.group(1) or why or 'skipped as a whole'))
            continue
        m = TAP_LINE.match(line.strip())
        if not m:
            continue
        ok, path, directive, reason = m.groups()
        if directive == 'SKIP':
            cases.append((path, 'skip', reason or ''))
        elif ok == 'ok' or directive == 'TODO':
            cases.append((path, 'pass', ''))
        else:
            cases.append((path, 'fail', reason or ''))
    return cases


def read_exceptions(path):
    """Entries of tests/base-exceptions.txt: "target binary path reason"."""
    entries = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith('#'):
                continue
            fields = line.split(None, 3)
            if len(fields) < 4:
                raise ValueError('%s:%d: want "target binary path reason"' % (path, n))
            entries.append(Exception_(*fields))
    return entries


class Results:
    def __init__(self, out):
        self.out = out
        self.rows = []

    def add(self, layer, name, status, reason=''):
        self.rows.append((layer, name, status, reason))
        tag = {'pass': 'PASS', 'fail': 'FAIL', 'skip': 'SKIP'}[status]
        line = '%s %s: %s' % (tag, layer, name)
        if reason:
            line += ' (%s)' % reason
        print(line, file=self.out, flush=True)

    def count(self, status):
        return sum(1 for r in self.rows if r[2] == status)

    def summary(self):
        """Print the skip list and the summary line; return the exit code."""
        skips = [r for r in self.rows if r[2] == 'skip']
        fails = [r for r in self.rows if r[2] == 'fail']
        if skips:
            print('\nSkipped:', file=self.out)
            for layer, name, _, reason in skips:
                print('  %s: %s: %s' % (layer, name, reason), file=self.out)
        if fails:
            print('\nFailed:', file=self.out)
            for layer, name, _, reason in fails:
                print('  %s: %s: %s' % (layer, name, reason), file=self.out)
        passed = self.count('pass')
        failed, skipped = len(fails), len(skips)
        print('\n%d passed, %d failed, %d skipped' % (passed, failed, skipped),
              file=self.out, flush=True)
        return 1 if failed or not passed else 0

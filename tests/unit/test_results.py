"""tests/run's TAP parsing and exception list (ferry.results)."""

import io

import pytest

from ferry.results import Results, parse_tap, read_exceptions

GLIB_TAP = """\
TAP version 13
# random seed: R02S
1..4
# Start of x86_64 tests
ok 1 /x86_64/migration/bad_dest
ok 2 /x86_64/migration/dirty_ring # SKIP no dirty ring
not ok 3 /x86_64/migration/precopy/unix/plain
# some log line: ok 9 /not/a/result
ok 4 /x86_64/migration/vcpu_dirty_limit # SKIP by request
"""


def test_parse_tap_statuses():
    assert parse_tap(GLIB_TAP) == [
        ('/x86_64/migration/bad_dest', 'pass', ''),
        ('/x86_64/migration/dirty_ring', 'skip', 'no dirty ring'),
        ('/x86_64/migration/precopy/unix/plain', 'fail', ''),
        ('/x86_64/migration/vcpu_dirty_limit', 'skip', 'by request'),
    ]


def test_parse_tap_whole_binary_skip():
    text = '# random seed: R02S\n# Skipping test: kvm_hv not available\n1..0\n'
    assert parse_tap(text) == [('*', 'skip', 'kvm_hv not available')]
    assert parse_tap('1..0 # SKIP no dirty ring\n') == [('*', 'skip', 'no dirty ring')]


def test_parse_tap_ignores_noise():
    assert parse_tap('random text\nok\nnot ok\n# ok 1 /x\n') == []


def test_read_exceptions(tmp_path):
    f = tmp_path / 'exc.txt'
    f.write_text('# comment\n\nx86_64 migration-test /x86_64/migration/a '
                 'the host cannot do a\n')
    (e,) = read_exceptions(str(f))
    assert (e.target, e.binary, e.path) == ('x86_64', 'migration-test',
                                           '/x86_64/migration/a')
    assert e.reason == 'the host cannot do a'


def test_read_exceptions_wants_a_reason(tmp_path):
    f = tmp_path / 'exc.txt'
    f.write_text('x86_64 migration-test /x86_64/migration/a\n')
    with pytest.raises(ValueError, match='reason'):
        read_exceptions(str(f))


def test_summary_line_and_exit_code():
    out = io.StringIO()
    r = Results(out)
    r.add('unit', 'a', 'pass')
    r.add('unit', 'b', 'skip', 'why')
    assert r.summary() == 0
    assert out.getvalue().rstrip().endswith('1 passed, 0 failed, 1 skipped')
    r.add('unit', 'c', 'fail', 'boom')
    assert r.summary() == 1


def test_nothing_run_is_a_failure():
    assert Results(io.StringIO()).summary() == 1

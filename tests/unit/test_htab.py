"""The parser and comparison of x-spapr-htab-dump's files (ferry.htab)."""

import struct

import pytest

from ferry.htab import MAGIC, compare, parse_dump


def hpte(v, r=0):
    return struct.pack('>QQ', v, r)


def dump(shift, records):
    return MAGIC + struct.pack('>I', shift) + b''.join(
        struct.pack('>I', i) + e for i, e in records)


def test_records_become_entries_by_index():
    table = parse_dump(dump(18, [(3, hpte(0x4001, 7)), (9, hpte(0x1))]))
    assert table.shift == 18
    assert table.entries == {3: hpte(0x4001, 7), 9: hpte(0x1)}


def test_radix_dump_has_no_entries():
    table = parse_dump(dump(0, []))
    assert (table.shift, table.entries) == (0, {})


@pytest.mark.parametrize('data, message', [
    (b'FERRYHPX' + bytes(4), 'not an HTAB dump'),
    (dump(18, [])[:-1], 'not an HTAB dump'),
    (dump(18, [(1, hpte(1))])[:-3], 'not a multiple'),
    (dump(18, [(5, hpte(1)), (5, hpte(1))]), 'not in index order'),
    (dump(18, [(1 << 14, hpte(1))]), 'beyond the table'),
    (dump(18, [(2, hpte(0x40))]), 'is not valid'),
    (dump(18, [(2, hpte(0x41))]), 'dirty bit'),
    (dump(0, [(2, hpte(1))]), 'without an HPT'),
    (dump(5, []), 'out of range'),
])
def test_malformed_dumps_are_refused(data, message):
    with pytest.raises(ValueError, match=message):
        parse_dump(data)


def test_compare_names_differing_missing_and_extra_entries():
    a = parse_dump(dump(18, [(1, hpte(1, 1)), (2, hpte(1, 2)), (4, hpte(1))]))
    b = parse_dump(dump(18, [(1, hpte(1, 1)), (2, hpte(1, 3)), (5, hpte(1))]))
    assert compare(a, a) is None
    text = compare(a, b)
    assert text.startswith('3 of 3/3 valid entries differ')
    assert '0x2: v=0000000000000001 r=0000000000000002 / ' \
           'v=0000000000000001 r=0000000000000003' in text
    assert '0x4: v=0000000000000001 r=0000000000000000 / -' in text
    assert '0x5: - / v=' in text
    assert '0x1:' not in text


def test_compare_reports_different_sizes():
    assert 'htab_shift 18 on the source, 19' in compare(
        parse_dump(dump(18, [])), parse_dump(dump(19, [])))

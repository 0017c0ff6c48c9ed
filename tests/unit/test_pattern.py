"""The x86-dirty guest's memory-pattern checker (ferry.pattern)."""

from ferry.pattern import PAGE, check_dirty_pattern, page_bytes


def test_uniform_pages_fit():
    assert check_dirty_pattern(bytes([7] * 100)) is None


def test_one_step_down_fits():
    assert check_dirty_pattern(bytes([8] * 40 + [7] * 60)) is None


def test_step_wraps_modulo_256():
    assert check_dirty_pattern(bytes([0] * 10 + [255] * 5)) is None


def test_lost_write_in_the_middle_is_caught():
    values = bytearray([8] * 40 + [7] * 60)
    values[20] = 7
    msg = check_dirty_pattern(bytes(values))
    assert msg is not None and 'page 21' in msg


def test_two_steps_are_caught():
    assert check_dirty_pattern(bytes([9] * 10 + [8] * 10 + [7] * 10))


def test_step_up_is_caught():
    assert check_dirty_pattern(bytes([7] * 10 + [8] * 10))


def test_empty_is_an_error():
    assert check_dirty_pattern(b'')


def test_page_bytes_picks_first_byte_of_each_page():
    dump = bytearray(4 * PAGE)
    for i in range(4):
        dump[i * PAGE] = i + 1
        dump[i * PAGE + 1] = 0xee
    assert page_bytes(bytes(dump), start=0x100000, base=0x100000) == b'\1\2\3\4'


def test_pages_written_counts_passes_and_prefix():
    from ferry.pattern import pages_written
    assert pages_written(bytes([5] * 10), 5) == 50
    assert pages_written(bytes([6] * 3 + [5] * 7), 5) == 53
    assert pages_written(bytes([0] * 4 + [255] * 6), 255) == 255 * 10 + 4

"""Precopy live migration of a busy guest between Ferry processes.

Every test checks data, not only the status: the destination's RAM must
equal the source's final RAM, and after a failed or cancelled migration
the source guest must keep running with its memory intact.
"""

import socket
import time
import unittest

from ferry.machine import wait_migration
from ferry.migrate import (FAST_LINK, MigrationPairs, check_destination,
                           check_source_alive, kill_destination_midway,
                           migrate, set_params, start_destination)


class Precopy(MigrationPairs, unittest.TestCase):
    def test_busy_guest_arrives_intact(self):
        src, dst = self.pair()
        info = migrate(src, dst, max_bandwidth=FAST_LINK, downtime_limit=2000)
        self.assertEqual(info['status'], 'completed', info)
        self.assertGreater(info['ram']['transferred'], 100 << 20)
        check_destination(self, src, dst)

    def test_cancel_leaves_source_running_and_retry_succeeds(self):
        src, dst = self.pair()
        set_params(src, max_bandwidth=8 << 20)
        src.command('migrate', uri=dst.uri)
        time.sleep(1)
        self.assertEqual(src.command('query-migrate')['status'], 'active')
        src.command('migrate_cancel')
        self.assertEqual(wait_migration(src)['status'], 'cancelled')
        check_source_alive(self, src)
        dst.wait(timeout=30)     # the destination gives up on its stream
        dst2 = start_destination(src)
        self.vms.append(dst2)
        info = migrate(src, dst2, max_bandwidth=FAST_LINK, downtime_limit=2000)
        self.assertEqual(info['status'], 'completed', info)
        check_destination(self, src, dst2)

    def test_destination_killed_leaves_source_running(self):
        src, dst = self.pair()
        info = kill_destination_midway(src, dst, 8 << 20, after=1)
        self.assertEqual(info['status'], 'failed', info)
        check_source_alive(self, src)

    def test_garbage_stream_fails_cleanly_on_destination(self):
        src, dst = self.pair()
        port = int(dst.uri.rsplit(':', 1)[1])
        with socket.create_connection(('127.0.0.1', port)) as s:
            s.sendall(b'QEVM\x00\x00\x00\x03' + bytes(range(256)) * 64)
        dst.wait(timeout=30)
        self.assertEqual(dst.exitcode(), 1, dst.get_log())
        self.assertIn('load of migration failed', dst.get_log())
        check_source_alive(self, src)


if __name__ == '__main__':
    unittest.main()

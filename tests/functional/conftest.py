import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ferry.env  # noqa: E402,F401  (puts the base's python/qemu on sys.path)

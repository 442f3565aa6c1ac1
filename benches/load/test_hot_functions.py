"""Unit tests of how hot_functions.py picks the link order, and of the order it wrote."""

import sys
import unittest
from collections import Counter
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
import hot_functions  # noqa: E402

LISTING = """\
--------------------------------------------------------------------------------
Ir
--------------------------------------------------------------------------------
35,536,501 (100.0%)  PROGRAM TOTALS

--------------------------------------------------------------------------------
Ir                   file:function
--------------------------------------------------------------------------------
3,367,141 ( 9.63%)  crates/session/src/proxy.rs:_ZN7session3run17h1111111111111111E [/usr/bin/pgstepup]
1,854,342 ( 5.30%)  crates/protocol/src/connection.rs:_ZN4conn9poll_fill17h2222222222222222E [/usr/bin/pgstepup]
  553,824 ( 1.56%)  /cargo/atomic-waker-1.1.2/src/lib.rs:_ZN4conn9poll_fill17h2222222222222222E
  353,331 ( 0.99%)  ./misc/../sysdeps/unix/sysv/linux/x86_64/syscall.S:syscall [/usr/lib/x86_64-linux-gnu/libc.so.6]
    9,000 ( 0.03%)  crates/auth/src/server.rs:_ZN4auth5scram17h3333333333333333E [/usr/bin/pgstepup]
"""


class Selection(unittest.TestCase):
    def test_inlined_lines_count_for_the_function_they_were_inlined_into(self):
        costs, total = hot_functions.parse_annotated(LISTING)
        self.assertEqual(costs["_ZN4conn9poll_fill17h2222222222222222E"], 1_854_342 + 553_824)
        self.assertEqual(costs["syscall"], 353_331)
        self.assertEqual(total, 35_536_501)

    def test_the_binarys_own_hot_functions_come_most_expensive_first(self):
        costs, total = hot_functions.parse_annotated(LISTING)
        defined = {"_ZN7session3run17h1111111111111111E",
                   "_ZN4conn9poll_fill17h2222222222222222E",
                   "_ZN4auth5scram17h3333333333333333E"}
        order = hot_functions.hot_order(costs, total, defined, min_share=0.001)
        # libc's syscall is not the binary's to order; the rare login code is under the share.
        self.assertEqual(order, ["_ZN7session3run17h1111111111111111E",
                                 "_ZN4conn9poll_fill17h2222222222222222E"])

    def test_equal_costs_keep_a_stable_order(self):
        costs = Counter({"b": 10, "a": 10, "c": 20})
        self.assertEqual(hot_functions.hot_order(costs, 40, {"a", "b", "c"}, 0.0), ["c", "a", "b"])


class Span(unittest.TestCase):
    def test_pages_are_counted_once_and_missing_names_are_not_found(self):
        extents = {"a": (0x1000, 0x10), "b": (0x1ff0, 0x20), "c": (0x9000, 0x3000)}
        # a and b share page 1; b reaches into page 2; c covers pages 9, 10 and 11.
        self.assertEqual(hot_functions.code_span(extents, ["a", "b", "c", "gone"]), (3, 5))


class CommittedOrder(unittest.TestCase):
    def test_the_order_starts_with_the_relays_own_loop_and_framing(self):
        lines = [line for line in hot_functions.ORDER_FILE.read_text().splitlines()
                 if line and not line.startswith("#")]
        self.assertEqual(len(lines), len(set(lines)), "a symbol listed twice")
        self.assertTrue(all(" " not in line for line in lines), "one symbol per line")
        first = "\n".join(lines[:5])
        for relay in ("Connection9poll_fill", "Session3run", "relay_buffered_server_frames"):
            self.assertIn(relay, first)


if __name__ == "__main__":
    unittest.main()

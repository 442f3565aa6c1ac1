"""Unit tests of how instructions.py reads callgrind's totals and sizes its cache."""

import argparse
import sys
import unittest
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
import instructions  # noqa: E402


class CallgrindTotals(unittest.TestCase):
    def test_totals_are_read_by_event_name(self):
        text = ("version: 1\ncmd: pgstepup\nevents: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw\n"
                "fn=main\n1 2 3\ntotals: 4282 900 500 380 105 54 3 2 1\n")
        totals = instructions.parse_totals(text)
        self.assertEqual(totals["Ir"], 4282)
        self.assertEqual((totals["D1mr"], totals["D1mw"], totals["I1mr"]), (105, 54, 380))

    def test_instructions_alone_without_a_cache(self):
        self.assertEqual(instructions.parse_totals("events: Ir\ntotals: 77\n"), {"Ir": 77})
        self.assertEqual(instructions.cache_args(0), ())

    def test_the_cache_is_twelve_way_when_its_size_allows(self):
        self.assertIn("--D1=49152,12,64", instructions.cache_args(48))
        self.assertIn("--I1=4096,8,64", instructions.cache_args(4))

    def test_sizes_callgrind_cannot_simulate_are_refused(self):
        self.assertEqual(instructions.cache_size("48"), 48)
        self.assertEqual(instructions.cache_size("0"), 0)
        for bad in ("40", "-4", "5"):
            with self.assertRaises(argparse.ArgumentTypeError):
                instructions.cache_size(bad)


if __name__ == "__main__":
    unittest.main()

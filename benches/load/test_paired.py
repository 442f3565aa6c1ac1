"""Unit tests of the within-round pairing (run.paired_ratios) and its pooling (paired.py)."""

import json
import sys
import tempfile
import unittest
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
import paired  # noqa: E402
import run  # noqa: E402


def record(target, rnd, tps, mode="simple", clients=8, ok=True):
    return {"target": target, "round": rnd, "tps": tps, "mode": mode, "clients": clients,
            "ok": ok}


class PairedRatios(unittest.TestCase):
    def test_each_round_is_compared_with_its_own_pgbouncer(self):
        runs = [record("direct", 1, 300.0), record("pgbouncer", 1, 100.0),
                record("pgstepup", 1, 110.0), record("pgstepup", 2, 180.0),
                record("pgbouncer", 2, 200.0)]
        self.assertEqual(run.paired_ratios(runs), {("simple", 8): [1.1, 0.9]})

    def test_cells_stay_apart_and_failed_runs_pair_with_nothing(self):
        runs = [record("pgbouncer", 1, 100.0), record("pgstepup", 1, 50.0, clients=32),
                record("pgbouncer", 1, 100.0, clients=32), record("pgstepup", 1, 0.0, ok=False)]
        self.assertEqual(run.paired_ratios(runs), {("simple", 32): [0.5]})

    def test_the_table_counts_rounds_at_or_above_one(self):
        runs = [record("pgbouncer", r, 100.0) for r in (1, 2, 3)] + [
            record("pgstepup", 1, 100.0), record("pgstepup", 2, 90.0),
            record("pgstepup", 3, 120.0)]
        row = run.paired_table(runs, markdown=True).splitlines()[-1]
        cells = [c.strip() for c in row.strip("|").split("|")]
        self.assertEqual(cells[:4] + cells[6:], ["simple", "8", "3", "1.000", "0.900–1.200", "2/3"])
        self.assertEqual(cells[4], f"{(0.9 * 1.2) ** (1 / 3):.3f}")

    def test_the_interval_is_students_t_on_the_logarithms_of_the_rounds(self):
        # ln ratios -0.1 and +0.1: mean 0, standard deviation 0.1414, t(1 df) = 12.706.
        import math
        mean, (low, high) = run.ratio_interval([math.exp(-0.1), math.exp(0.1)])
        self.assertAlmostEqual(mean, 1.0)
        self.assertAlmostEqual(math.log(high), 12.706 * 0.1414214 / math.sqrt(2), places=4)
        self.assertAlmostEqual(math.log(low), -math.log(high))
        # Identical rounds: no spread, the interval is the point.
        self.assertEqual(run.ratio_interval([1.05] * 5)[1], (1.05, 1.05))
        self.assertIsNone(run.ratio_interval([0.97])[1], "one round has no interval")

    def test_past_the_table_t_approaches_the_normal_quantile(self):
        self.assertEqual(run.t_975(30), 2.042)
        self.assertAlmostEqual(run.t_975(40), 2.021, places=3)
        self.assertAlmostEqual(run.t_975(120), 1.980, places=3)


class Pooling(unittest.TestCase):
    def test_rounds_of_different_runs_do_not_pair_across_runs(self):
        with tempfile.TemporaryDirectory() as tmp:
            first, second = Path(tmp, "a.json"), Path(tmp, "b.json")
            first.write_text(json.dumps({"runs": [record("pgbouncer", 1, 100.0),
                                                  record("pgstepup", 1, 120.0)]}))
            second.write_text(json.dumps({"runs": [record("pgbouncer", 1, 200.0),
                                                   record("pgstepup", 1, 100.0)]}))
            pooled = paired.pooled_runs([first, second])
        self.assertEqual(run.paired_ratios(pooled), {("simple", 8): [1.2, 0.5]})

    def test_a_file_that_is_not_a_runs_results_is_refused_by_name(self):
        with tempfile.TemporaryDirectory() as tmp:
            stranger = Path(tmp, "other.json")
            stranger.write_text(json.dumps({"runs": [{"round": 1}]}))
            with self.assertRaisesRegex(ValueError, "other.json: a run record without target"):
                paired.pooled_runs([stranger])
            self.assertEqual(paired.main([str(stranger)]), 2)


if __name__ == "__main__":
    unittest.main()

"""examples/finetune.py against a live server: runs, prints a loss per step, loss goes down."""
import os
import re
import subprocess
import sys
import unittest

import live

try:
    import torch  # noqa: F401
except ImportError:  # pragma: no cover
    torch = None

EXAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples",
                       "finetune.py")


@unittest.skipIf(torch is None, "torch is not importable")
class FinetuneExampleTest(live.LiveTestCase):
    def test_loss_goes_down(self):
        steps = 40
        out = subprocess.run([sys.executable, EXAMPLE, "--url", self.client.url, "--steps",
                              str(steps)], capture_output=True, text=True, timeout=300)
        self.assertEqual(out.returncode, 0, out.stdout[-2000:] + out.stderr[-2000:])
        losses = [float(m) for m in re.findall(r"^step +\d+ +loss ([0-9.]+)", out.stdout,
                                               re.M)]
        self.assertEqual(len(losses), steps)
        self.assertLess(sum(losses[-5:]), sum(losses[:5]))
        self.assertIn("decreasing", out.stdout)

    def test_unreachable_server(self):
        out = subprocess.run([sys.executable, EXAMPLE, "--url",
                              "http://127.0.0.1:%d" % live.free_port(), "--steps", "2"],
                             capture_output=True, text=True, timeout=300)
        self.assertEqual(out.returncode, 3)
        self.assertIn("connect_failed", out.stderr)


if __name__ == "__main__":
    unittest.main()

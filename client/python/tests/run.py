"""Runs the package's tests (every tests/test_*.py) and lists each skipped test loudly at the
end: the skipped ones wait for a server feature (docs/python.md, "Tests")."""
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    sys.path.insert(0, HERE)
    suite = unittest.defaultTestLoader.discover(HERE, pattern="test_*.py", top_level_dir=HERE)
    verbosity = 2 if "-v" in sys.argv[1:] else 1
    result = unittest.TextTestRunner(verbosity=verbosity).run(suite)
    import altgrad
    print("altgrad %s from %s" % (altgrad.__version__, os.path.dirname(altgrad.__file__)))
    if result.skipped:
        bar = "!" * 78
        print(bar)
        print("!! %d test(s) SKIPPED:" % len(result.skipped))
        for test, reason in result.skipped:
            print("!!   %s: %s" % (test.id(), reason))
        print(bar)
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())

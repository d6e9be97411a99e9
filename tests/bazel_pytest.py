"""Runs one test file under pytest: the `main` of every Bazel `py_test`.

    bazel test //:test_solvers      # runs tests/bazel_pytest.py tests/test_solvers.py

Bazel runs a `py_test`'s `main` as a script and passes when it exits 0, so
a test file run directly would pass without running a test. This runner
hands the file to pytest, exits with pytest's status (1 on a failed test,
5 when no test was collected: both fail the target), and writes pytest's
JUnit XML where Bazel reads a test's results (`$XML_OUTPUT_FILE`), so
`bazel-testlogs/<target>/test.xml` counts the tests that ran.
"""

import os
import sys

import pytest


def main(argv):
  if len(argv) != 2:
    print("usage: bazel_pytest.py tests/test_<name>.py", file=sys.stderr)
    return 2
  args = [argv[1], "-q", "-p", "no:cacheprovider"]
  xml = os.environ.get("XML_OUTPUT_FILE")
  if xml:
    args.append(f"--junitxml={xml}")
  return int(pytest.main(args))


if __name__ == "__main__":
  sys.exit(main(sys.argv))

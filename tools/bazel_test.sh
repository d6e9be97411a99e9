#!/usr/bin/env bash
# Builds every Bazel target and tests the ones named, offline.
#
#   tools/bazel_test.sh                    # bazel build //... ; test the fast targets
#   tools/bazel_test.sh //...              # every test target (as long as pytest tests)
#   tools/bazel_test.sh //:test_solvers    # one
#
# Run it in the venv of `pip install -e ".[test,bench]"` (its python runs
# the tests). It gets Bazel 2.1.0 from the npm registry's
# @bazel/bazel-linux_x64 (the last one published there), unpacks the two
# rule repositories Bazel fetches for any test target from
# ../shared/bazel/, makes a local stand-in for remote_coverage_tools, and
# passes all three with --override_repository: nothing else is fetched
# (../shared/bazel/README.md). Bazel and its repositories are kept in
# $GRADMIX_BAZEL_DIR (default ~/.cache/gradmix_tf/bazel).
#
# At the end it counts the tests pytest ran inside the targets (from each
# target's test.xml) and checks that pytest alone collects as many from the
# same files: a target that ran no test cannot pass unseen. It exits with
# bazel's status, or 1 when the counts differ.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
tools=${GRADMIX_BAZEL_DIR:-$HOME/.cache/gradmix_tf/bazel}
shared=$(cd "$repo/../shared/bazel" && pwd)
python=$(python3 -c 'import sys; print(sys.executable)')
site=$("$python" -c 'import site; print(":".join(site.getsitepackages()))')
data_dir=$(cd "$repo/../shared/data" 2>/dev/null && pwd || true)
mkdir -p "$tools"

bazel="$tools/bazel-2.1.0-linux-x86_64"
if [ ! -x "$bazel" ]; then
  echo "getting Bazel 2.1.0 from the npm registry (@bazel/bazel-linux_x64)"
  scratch=$(mktemp -d)
  (cd "$scratch" && npm pack --silent @bazel/bazel-linux_x64@2.1.0 >/dev/null \
     && tar xzf bazel-bazel-linux_x64-2.1.0.tgz)
  mv "$scratch/package/bazel-2.1.0-linux-x86_64" "$bazel.partial"
  chmod +x "$bazel.partial"
  mv "$bazel.partial" "$bazel"
  rm -rf "$scratch"
fi

unpack() {   # unpack NAME ARCHIVE: the archive's one top folder as $tools/NAME
  if [ ! -f "$tools/$1/WORKSPACE" ]; then
    rm -rf "$tools/$1" "$tools/$1.partial"
    mkdir -p "$tools/$1.partial"
    tar xzf "$2" -C "$tools/$1.partial" --strip-components=1
    mv "$tools/$1.partial" "$tools/$1"
  fi
}
unpack rules_cc "$shared"/rules_cc-*.tar.gz
unpack rules_java "$shared"/rules_java-*.tar.gz

# The test rule's implicit coverage dependency (used by `bazel coverage`
# only): a repository with an executable coverage_report_generator.
coverage="$tools/remote_coverage_tools"
if [ ! -f "$coverage/BUILD" ]; then
  mkdir -p "$coverage"
  touch "$coverage/WORKSPACE"
  printf '#!/bin/sh\necho "coverage reports are not built offline" >&2\nexit 1\n' \
    > "$coverage/coverage_report_generator.sh"
  chmod +x "$coverage/coverage_report_generator.sh"
  cat > "$coverage/BUILD" <<'BUILD'
package(default_visibility = ["//visibility:public"])
sh_binary(name = "coverage_report_generator", srcs = ["coverage_report_generator.sh"])
BUILD
fi

targets=("$@")
test_args=()
if [ ${#targets[@]} -eq 0 ]; then
  targets=(//...)
  test_args=(--test_tag_filters=fast)
fi

flags=(
  --override_repository=rules_cc="$tools/rules_cc"
  --override_repository=rules_java="$tools/rules_java"
  --override_repository=remote_coverage_tools="$coverage"
  --python_path="$python"
  --spawn_strategy=standalone
  --test_env=PYTHONPATH="$site"
  --test_env=HOME
  --test_env=GRADMIX_CACHE_DIR
  --test_env=TF_CPP_MIN_LOG_LEVEL=2
  --test_output=errors
  --nocache_test_results
  --color=no
  --curses=no
)
[ -n "$data_dir" ] && flags+=(--test_env=GRADMIX_DATA_DIR="$data_dir")
startup=(--output_user_root="$tools/output_user_root" --batch)

"$bazel" "${startup[@]}" build "${flags[@]}" //...
testlogs=$("$bazel" "${startup[@]}" info "${flags[@]}" bazel-testlogs 2>/dev/null)
rm -rf "$testlogs"/*       # count only this invocation's tests
status=0
"$bazel" "${startup[@]}" test "${flags[@]}" "${test_args[@]}" "${targets[@]}" \
  || status=$?
query="tests(set(${targets[*]}))"
[ ${#test_args[@]} -gt 0 ] && query="attr(tags, fast, $query)"
files=$("$bazel" "${startup[@]}" query "$query" 2>/dev/null \
        | sed -n 's|^//:\(test_.*\)$|tests/\1.py|p')
"$python" - "$testlogs" $files <<'PY' || status=$((status ? status : 1))
import glob, os, subprocess, sys
import xml.etree.ElementTree as ET
ran = failed = skipped = 0
for path in glob.glob(os.path.join(sys.argv[1], "**", "test.xml"),
                      recursive=True):
  for suite in ET.parse(path).getroot().iter("testsuite"):
    ran += int(suite.get("tests", 0))
    failed += int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    skipped += int(suite.get("skipped", 0))
collected = subprocess.run(
    [sys.executable, "-m", "pytest", "--collect-only", "-q", "-n", "0",
     "-p", "no:cacheprovider", *sys.argv[2:]],
    capture_output=True, text=True).stdout.strip().splitlines()[-1]
expected = int(collected.split()[0])
print(f"bazel: pytest ran {ran} tests in {len(sys.argv) - 2} targets "
      f"({failed} failed, {skipped} skipped); pytest collects {expected} "
      "from the same files")
sys.exit(0 if ran == expected else 1)
PY
exit $status

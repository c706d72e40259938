#!/usr/bin/env bash
# The whole suite as two pytest processes at once (`make test`):
#   - the second lane: the Kubernetes tier (marker k8s: real pods on the one-node cluster and
#     per-test control planes, whose time is mostly spent waiting on the kubelet, the scheduler
#     and the API server), the nemesis campaigns (marker nemesis: timed fault plans) and the
#     acceptance-scale transition test (marker slow), and the long cluster test files that
#     tests/conftest.py lists in SECOND_LANE_FILES (marker second_lane);
#   - everything else, in this terminal.
# On two cores the second lane fills the time the first spends waiting, so the suite takes
# about as long as its longer lane instead of their sum; the split keeps the two lanes about
# equally long (from the --durations of an idle run). The second
# lane's output goes to .cache/test-lanes/second.log and is printed when both lanes have
# finished; the exit code is non-zero when either lane failed (pytest's 5, "no tests
# collected", included).
# With arguments (`make test PYTEST_ARGS=...`) one pytest runs them, as before.
set -uo pipefail
cd "$(dirname "$0")/.."
python=.venv/bin/python

if (($# > 0)); then
    exec "$python" -m pytest "$@"
fi

logs=.cache/test-lanes
mkdir -p "$logs"
second_log="$logs/second.log"
SECOND="k8s or nemesis or slow or second_lane"

"$python" -m pytest -m "$SECOND" >"$second_log" 2>&1 &
second_pid=$!
trap 'kill "$second_pid" 2>/dev/null' INT TERM

"$python" -m pytest -m "not ($SECOND)"
main_rc=$?

echo
echo "==== waiting for the second lane (pid $second_pid, log $second_log) ===="
wait "$second_pid"
second_rc=$?
echo "==== the second lane (pytest -m \"$SECOND\"), exit code $second_rc ===="
cat "$second_log"
echo "==== lanes: the first lane exited $main_rc; the second lane ($SECOND) exited $second_rc ===="
((main_rc == 0 && second_rc == 0))

#!/usr/bin/env bash
# The whole suite as two pytest processes at once (`make test`):
#   - the waiting lane: the Kubernetes tier (marker k8s: real pods on the one-node cluster and
#     per-test control planes, whose time is mostly spent waiting on the kubelet, the scheduler
#     and the API server), the skewed-clock tests (marker faketime: they wait out TTLs and
#     clock measurements) and the nemesis campaigns (marker nemesis: timed fault plans);
#   - everything else, in this terminal.
# On two cores the first lane fills the time the second spends waiting, so the suite takes
# about as long as its longer lane instead of their sum. The waiting lane's output goes to
# .cache/test-lanes/waiting.log and is printed when both lanes have finished; the exit code is
# non-zero when either lane failed (pytest's 5, "no tests collected", included).
# With arguments (`make test PYTEST_ARGS=...`) one pytest runs them, as before.
set -uo pipefail
cd "$(dirname "$0")/.."
python=.venv/bin/python

if (($# > 0)); then
    exec "$python" -m pytest "$@"
fi

logs=.cache/test-lanes
mkdir -p "$logs"
waiting_log="$logs/waiting.log"

"$python" -m pytest -m "k8s or faketime or nemesis" >"$waiting_log" 2>&1 &
waiting_pid=$!
trap 'kill "$waiting_pid" 2>/dev/null' INT TERM

"$python" -m pytest -m "not (k8s or faketime or nemesis)"
main_rc=$?

echo
echo "==== waiting for the waiting lane (pid $waiting_pid, log $waiting_log) ===="
wait "$waiting_pid"
waiting_rc=$?
echo "==== the waiting lane (pytest -m \"k8s or faketime or nemesis\"), exit code $waiting_rc ===="
cat "$waiting_log"
echo "==== lanes: the main lane exited $main_rc; the waiting lane (k8s, faketime, nemesis) exited $waiting_rc ===="
((main_rc == 0 && waiting_rc == 0))

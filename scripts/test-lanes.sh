#!/usr/bin/env bash
# The whole suite as two pytest processes at once (`make test`):
#   - the Kubernetes tier (marker k8s): real pods on the one-node cluster and per-test control
#     planes, whose time is mostly spent waiting on the kubelet, the scheduler and the API
#     server;
#   - everything else, in this terminal.
# On two cores the first lane fills the time the second spends waiting, so the suite takes
# about as long as its longer lane instead of their sum. The Kubernetes lane's output goes to
# .cache/test-lanes/k8s.log and is printed when both lanes have finished; the exit code is
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
k8s_log="$logs/k8s.log"

"$python" -m pytest -m k8s >"$k8s_log" 2>&1 &
k8s_pid=$!
trap 'kill "$k8s_pid" 2>/dev/null' INT TERM

"$python" -m pytest -m "not k8s"
main_rc=$?

echo
echo "==== waiting for the Kubernetes lane (pid $k8s_pid, log $k8s_log) ===="
wait "$k8s_pid"
k8s_rc=$?
echo "==== the Kubernetes lane (pytest -m k8s), exit code $k8s_rc ===="
cat "$k8s_log"
echo "==== lanes: everything but k8s exited $main_rc; k8s exited $k8s_rc ===="
((main_rc == 0 && k8s_rc == 0))

#!/usr/bin/env bash
# Read-only check of a real NVIDIA GPU for voltana: energy-counter and power refresh periods, the cost of each
# NVML read voltana makes, and `voltana doctor` (read-only: no --try-lock). It NEVER locks a clock or changes
# a setting. Prints Markdown tables (paste into the README). Options go to gpu_readonly_check.py
# (--device N, --seconds S, --repeats N, --json). PYTHON selects the interpreter (default: python3).
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"

echo "## NVML reads (read-only)"
"$python" "$here/gpu_readonly_check.py" "$@"
measure_rc=$?
echo
echo "## voltana doctor (read-only)"
COLUMNS="${COLUMNS:-160}" "$python" -m voltana.cli doctor
doctor_rc=$?
echo
echo "| step | exit status |"
echo "|---|---|"
echo "| NVML reads | $measure_rc |"
echo "| voltana doctor | $doctor_rc (1 = a check is a problem; see its fix column) |"
[ "$measure_rc" -eq 0 ] && [ "$doctor_rc" -eq 0 ]

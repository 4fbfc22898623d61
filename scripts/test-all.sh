#!/usr/bin/env bash
# Install everything the tests need (Python deps incl. MPI, a real single-node Slurm)
# and run the whole suite. Works on a fresh Debian 12 machine as root; the
# README's test command and .ci/run both call this.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${RXTE_HPC_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e '.[test,mpi,s3]'   # s3: the S3 archive tests (moto is in test)
export PATH="$PWD/$VENV/bin:$PATH"   # mpiexec from the mpich wheel, rxte-hpc, pytest

# heasoftpy, the user's HEASoft interface, is on no registry: the test setup installs HEASARC's v1.5 source from
# the shared folder beside the checkout, ../shared/vendor (licence and provenance in its README; RXTE_HPC_SHARED
# points elsewhere). It builds its task wrappers from
# $HEADAS, so HEADAS is the stand-in HEASoft tree. If it cannot be checked or built, set -e fails
# the run here; the heasoft tests import it unguarded, so they fail rather than skip without it.
SHARED=${RXTE_HPC_SHARED:-../shared}
(cd "$SHARED" && sha256sum --check --quiet vendor/SHA256SUMS)
HEADAS="$PWD/tests/heasoft_standin" "$VENV/bin/python" -m pip install -q --no-deps --force-reinstall \
  "$SHARED/vendor/heasoftpy-1.5.tar.gz"
"$VENV/bin/python" -c "import heasoftpy; print('test-all: heasoftpy', heasoftpy.__version__)"

# HEASARC's fitsverify checks every FITS file a run writes (tests/system/test_fitsverify.py); Debian package.
if ! command -v fitsverify >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends fitsverify
  else
    echo "test-all: fitsverify is missing and cannot be installed here (not root or no apt-get)" >&2
  fi
fi

# A real Slurm for the slurm-marked tests (installs Debian packages when missing).
if [ "$(id -u)" = 0 ]; then
  bash scripts/start-slurm.sh
else
  echo "test-all: not root, Slurm cannot be started here; slurm tests will skip" >&2
fi

set +e
# Static checks with the project's settings in pyproject.toml: a type or lint error fails CI,
# after the tests have still run and reported.
python -m mypy rxte_hpc
mypy_rc=$?
python -m ruff check rxte_hpc tests benchmarks
ruff_rc=$?
# The layer contracts of pyproject.toml [tool.importlinter] (layers, no import cycle), lazy imports included.
lint-imports
imports_rc=$?
python -m pytest "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "test-all: pytest collected no tests: that is a failure of the suite" >&2
  exit 1
fi
if [ "$mypy_rc" != 0 ] || [ "$ruff_rc" != 0 ] || [ "$imports_rc" != 0 ]; then
  echo "test-all: static checks failed (mypy exit $mypy_rc, ruff exit $ruff_rc, lint-imports exit $imports_rc)" >&2
  [ "$rc" = 0 ] && rc=1
fi
exit "$rc"

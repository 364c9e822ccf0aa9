#!/bin/sh
# deploy/build.sh: the image's build steps, as a script the Dockerfile runs
# and CI runs as is (no container engine needed): install the Debian build
# packages (when root and something is missing), build Release, run the unit
# tests, and install the binaries into PREFIX (default /opt/quern).
#   deploy/build.sh [PREFIX]
set -eu
SRC=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=${1:-/opt/quern}
BUILD=${QN_BUILD_DIR:-$SRC/build-deploy}
if [ "$(id -u)" = 0 ]; then
  make -C "$SRC" deps
fi
cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DQN_WERROR=ON
cmake --build "$BUILD" -j "$(nproc)"
ctest --test-dir "$BUILD" -L unit --output-on-failure
mkdir -p "$PREFIX/bin"
install -m 0755 "$BUILD/quern-worker" "$BUILD/quern" "$PREFIX/bin/"
[ -x "$BUILD/quern-broker" ] && install -m 0755 "$BUILD/quern-broker" "$PREFIX/bin/" || true
echo "installed into $PREFIX/bin"

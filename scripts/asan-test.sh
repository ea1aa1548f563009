#!/bin/sh
# The test files named (substrings, as for run-tests.mjs) against the addon
# built with AddressSanitizer and UndefinedBehaviorSanitizer, in a copy of
# the built tree under /tmp (removed afterwards).  Node itself is not
# instrumented: libasan is preloaded so the addon's memory accesses and
# Node's malloc/free are checked; leak detection is off (Node does not free
# everything at exit), and SIGBUS is left to kill (a test shows it does).
# Any report makes the run fail.
# Usage: npm run build && sh scripts/asan-test.sh transport irq native-hardening
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
out=$(mktemp -d /tmp/vfu-asan-XXXXXX)
trap 'rm -rf "$out"' EXIT
cp -r "$root/binding.gyp" "$root/native" "$root/dist" "$root/package.json" "$out/"
cp -r "$root/scripts" "$out/"
ln -s "$root/node_modules" "$out/node_modules"
[ -d "$root/test/vectors" ] && mkdir -p "$out/test" && ln -s "$root/test/vectors" "$out/test/vectors"
cd "$out"
san="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined -g"
CFLAGS="$san" CXXFLAGS="$san" LDFLAGS="-fsanitize=address,undefined" VFU_REQUIRE_NATIVE=1 node scripts/build-native.mjs
nm -D build/Release/vfu_native.node | grep -q __asan_report || { echo "asan-test: the addon was not instrumented" >&2; exit 1; }
LD_PRELOAD=$(gcc -print-file-name=libasan.so) \
ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1:handle_sigbus=0 \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  node scripts/run-tests.mjs "$@"

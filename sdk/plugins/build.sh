#!/usr/bin/env bash
# Compile FluxIoT plugins written in C to WebAssembly (wasm32, no libc, no WASI) with clang and lld.
#
#   sdk/plugins/build.sh [-o OUT_DIR] [SOURCE.c ...]
#
# Without sources it builds the examples (sdk/plugins/examples/*.c). Each SOURCE.c becomes
# OUT_DIR/SOURCE.wasm (default OUT_DIR: sdk/plugins/build, which git ignores). Needs clang and
# wasm-ld (Debian: apt-get install clang lld); CLANG=... picks another clang.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
out="$here/build"
while getopts "o:h" opt; do
  case "$opt" in
    o) out="$OPTARG" ;;
    h) sed -n '2,9p' "$0"; exit 0 ;;
    *) exit 2 ;;
  esac
done
shift $((OPTIND - 1))
if [ "$#" -eq 0 ]; then
  set -- "$here"/examples/*.c
fi

clang="${CLANG:-clang}"
if ! command -v "$clang" >/dev/null 2>&1; then
  echo "build.sh: $clang not found (apt-get install clang lld)" >&2
  exit 127
fi
if ! command -v wasm-ld >/dev/null 2>&1; then
  echo "build.sh: wasm-ld not found (apt-get install lld)" >&2
  exit 127
fi

mkdir -p "$out"
for source in "$@"; do
  name="$(basename "$source" .c)"
  # -nostdlib/-ffreestanding: no libc; --no-entry: a library, not a program (no _start). The SDK
  # header marks alloc/dealloc/process with export_name and env.log with import_module/import_name,
  # so no --export or --allow-undefined flags are needed. -mbulk-memory turns memcpy/memset into
  # memory.copy/memory.fill.
  "$clang" --target=wasm32 -O2 -std=c11 -ffreestanding -nostdlib -mbulk-memory \
    -Wall -Wextra -Werror -I "$here" \
    -Wl,--no-entry -Wl,--strip-debug -Wl,-z,stack-size=65536 \
    -o "$out/$name.wasm" "$source"
  echo "$out/$name.wasm"
done

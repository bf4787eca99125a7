#!/usr/bin/env bash
# On the GPU host (copied into .gpu/ by `make gpu-stage`): keeps each uploaded piece under /tmp/gpu-pack and
# unpacks every archive whose pieces have all arrived into /tmp/site. Safe to run on every call.
set -eu
src=$(cd "$(dirname "$0")" && pwd)
store=${GPU_PACK_STORE:-/tmp/gpu-pack}; site=${GPU_SITE:-/tmp/site}; mkdir -p "$store" "$site"
cp "$src"/*.part* "$store/" 2>/dev/null || true
while read -r name count sha; do
  [ -f "$site/.unpacked-$name" ] && continue
  have=$(ls "$store" | grep -c "^$name\.part" || true)
  if [ "$have" -lt "$count" ]; then echo "unpack: $name has $have of $count pieces (the rest comes with the next run)"; continue; fi
  cat "$store/$name".part* > "$store/$name"
  echo "$sha  $store/$name" | sha256sum -c --quiet - || { echo "unpack: $name is corrupt"; exit 1; }
  tar -xJf "$store/$name" -C "$site" 2>/dev/null ||  # no xz on the host: Python's lzma unpacks it
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$store/$name" "$site"
  rm -f "$store/$name" && touch "$site/.unpacked-$name"
  echo "unpack: $name unpacked into $site"
done < "$src/MANIFEST"

#!/usr/bin/env bash
# On the GPU host (copied into .gpu/ by `make gpu-stage`): keeps each uploaded piece under /tmp/gpu-pack and
# unpacks every archive whose pieces have all arrived into /tmp/site. Safe to run on every call.
set -eu
src=$(cd "$(dirname "$0")" && pwd)
store=/tmp/gpu-pack; mkdir -p "$store" /tmp/site
cp "$src"/*.part* "$store/" 2>/dev/null || true
while read -r name count sha; do
  [ -f "/tmp/site/.unpacked-$name" ] && continue
  have=$(ls "$store" | grep -c "^$name\.part" || true)
  if [ "$have" -lt "$count" ]; then echo "unpack: $name has $have of $count pieces (the rest comes with the next run)"; continue; fi
  cat "$store/$name".part* > "$store/$name"
  echo "$sha  $store/$name" | sha256sum -c --quiet - || { echo "unpack: $name is corrupt"; exit 1; }
  tar -xJf "$store/$name" -C /tmp/site && rm -f "$store/$name" && touch "/tmp/site/.unpacked-$name"
  echo "unpack: $name unpacked into /tmp/site"
done < "$src/MANIFEST"

#!/bin/sh
# tree-copy.sh DIR: the source tree's files (tracked, and untracked ones git
# does not ignore; not those deleted since) copied into DIR, refreshed when
# changed, for a second build beside the one in the tree (sanitizers,
# fuzzers): a configured source tree cannot also host a VPATH build.
# ../shared is reached through SEP_SHARED.
set -eu
cd "$(dirname "$0")/.."
dir=$1
mkdir -p "$dir"
git ls-files -z -co --exclude-standard | grep -zv "^$dir/" |
    xargs -0 sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done; exit 0' sh |
    xargs -0 cp --parents -u -t "$dir"

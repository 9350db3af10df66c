#!/bin/sh
# quickstart.sh: install, build, and run the main job on the embedded
# default: sepd with the bundled books-llama-16m model on the CPU, a
# session under the SepLLM cache, and the bundled book (Jane Austen's
# Persuasion, held out from the model's training) fed through sepctl with
# a progress line. The daemon runs on a private socket and stops at the
# end; its log is printed if anything fails.
set -eu
cd "$(dirname "$0")/.."
scripts/deps.sh
scripts/build.sh
run=$(mktemp -d)
export SEPD_SOCKET="ipc://$run/sepd.sock"
daemon/sepd --foreground --store "$run/store" 2>"$run/sepd.log" &
sepd_pid=$!
trap 'kill $sepd_pid 2>/dev/null; wait $sepd_pid 2>/dev/null; rm -rf "$run"' EXIT
trap 'exit 1' INT TERM
i=0
until ctl/sepctl ls >/dev/null 2>&1; do
    i=$((i + 1))
    if [ $i -gt 600 ] || ! kill -0 $sepd_pid 2>/dev/null; then
        cat "$run/sepd.log" >&2
        exit 1
    fi
    sleep 0.1
done
ctl/sepctl open persuasion
ctl/sepctl feed persuasion <books/persuasion.txt
ctl/sepctl close persuasion

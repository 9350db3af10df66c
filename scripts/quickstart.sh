#!/bin/sh
# quickstart.sh: install, build, and run the main job on the embedded
# default: the bundled books-llama-16m model on the CPU scoring the
# bundled book (Jane Austen's Persuasion, held out from its training).
set -eu
cd "$(dirname "$0")/.."
scripts/deps.sh
scripts/build.sh
ctl/sepctl eval --max-tokens 4000 <books/persuasion.txt

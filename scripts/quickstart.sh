#!/bin/sh
# quickstart.sh: install, build, and run the main job on the embedded
# default: the bundled books-llama-16m model on the CPU streaming the
# bundled book (Jane Austen's Persuasion, held out from its training)
# through the SepLLM cache.
set -eu
cd "$(dirname "$0")/.."
scripts/deps.sh
scripts/build.sh
ctl/sepctl eval <books/persuasion.txt

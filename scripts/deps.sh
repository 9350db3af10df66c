#!/bin/sh
# deps.sh: install the Debian 12 packages sepd builds and runs with.
# Runs apt-get directly as root, through sudo otherwise.
set -eu
pkgs="build-essential autoconf automake pkg-config gawk
  libopenblas-dev libpcre2-dev libjansson-dev libzmq3-dev liblmdb-dev libsodium-dev
  libopenmpi-dev openmpi-bin libcmocka-dev libunistring-dev
  clang-14 libclang-rt-14-dev llvm-14"
sudo=
[ "$(id -u)" -eq 0 ] || sudo=sudo
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
# shellcheck disable=SC2086 # the list is meant to split into words
$sudo apt-get install -y -q --no-install-recommends $pkgs

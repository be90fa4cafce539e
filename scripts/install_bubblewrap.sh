#!/usr/bin/env bash
# task=code runs programs under bubblewrap (bwrap): docs/robustness.md "The code sandbox". This installs it where the
# machine allows (root with apt-get; apt-get update first when the plain install fails) and checks that it can make a
# sandbox here (user namespaces allowed); otherwise it says how. Under CI=true a machine that cannot fails here: the
# sandbox tests would otherwise be skipped and prove nothing. `make install` and .ci/run call it.
set -uo pipefail

works() { command -v bwrap >/dev/null 2>&1 && bwrap --unshare-all --unshare-user --ro-bind / / true >/dev/null 2>&1; }

if ! command -v bwrap >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q bubblewrap >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q bubblewrap >/dev/null 2>&1; }
    command -v bwrap >/dev/null 2>&1 && echo "installed $(bwrap --version)"
fi
works && exit 0

if command -v bwrap >/dev/null 2>&1; then
    why="bubblewrap is installed but cannot create a sandbox here (are unprivileged user namespaces disabled? see docs/robustness.md)"
else
    why="bubblewrap (bwrap) is not installed; as root: apt-get install bubblewrap (Fedora/RHEL: dnf install bubblewrap, Arch: pacman -S bubblewrap)"
fi
if [ "${CI:-}" = true ]; then
    echo "error: $why: task=code's sandbox and its tests need it" >&2
    exit 1
fi
echo "warning: $why; task=code refuses to start without it unless task.isolation=none" >&2
exit 0

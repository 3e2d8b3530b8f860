#!/usr/bin/env bash
# Sets up everything namespacefs needs on a fresh Debian machine (idempotent), then runs:
#   bash bootstrap.sh run [NSFS ARGS...]   discover and show this host's namespaces (default: nsfs ls)
#   bash bootstrap.sh test [PYTEST ARGS...]   the test suite
# Must run as root: namespaces, FUSE, bind mounts and containers need it.
set -euo pipefail
cd "$(dirname "$0")"

APT_PACKAGES=(
  python3-venv python3-dev gcc pkg-config      # the venv, building pyfuse3 and our /proc walk (_walk.c)
  valgrind strace                              # the walk's memory check in the tests; the bench's read audit
  fuse3 libfuse3-dev                           # the FUSE filesystem
  util-linux iproute2 procps psmisc acl attr   # lsns/unshare/nsenter to compare and test with, ip netns
  runc bubblewrap systemd-container busybox-static criu  # real containers in the tests
  chromium                                     # the web page test (headless)
  docker.io containerd lxc                     # the engines users run, started by the tests themselves
  podman crun uidmap slirp4netns catatonit fuse-overlayfs conmon golang-github-containers-common  # podman, rootless too
)

if [ "$(id -u)" -ne 0 ]; then
  echo "bootstrap.sh: run as root (namespaces, FUSE and containers need it)" >&2
  exit 1
fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap.sh: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# Debian's own Python: the one python3-venv and python3-dev above belong to, built with PGO and LTO
# (`nsfs ls` runs ~8% faster on it than on a self-built 3.11 that may come first on PATH).
PY=$(readlink -f "${PYTHON:-/usr/bin/python3}")
# (an edit of the C extension's source installs again, which rebuilds it)
stamp=.venv/.installed-$(cat pyproject.toml src/namespacefs/_walk.c | sha256sum | cut -c1-16)
if [ -e .venv ] && [ "$(cat .venv/.python 2>/dev/null)" != "$PY" ]; then
  echo "bootstrap.sh: making .venv again with $PY" >&2
  rm -rf .venv
fi
if [ ! -e "$stamp" ]; then
  [ -x .venv/bin/python ] || { "$PY" -m venv .venv && echo "$PY" > .venv/.python; }
  .venv/bin/pip install -q --upgrade pip >&2
  if ! .venv/bin/pip install -q -e '.[test]' >&2; then
    echo "bootstrap.sh: installing namespacefs failed (see above; its C extension needs gcc and python3-dev)" >&2
    exit 1
  fi
  if ! .venv/bin/python -c "import namespacefs._walk" 2>/dev/null; then
    echo "bootstrap.sh: namespacefs._walk (src/namespacefs/_walk.c) was not built: see the compiler's messages above" >&2
    exit 1
  fi
  rm -f .venv/.installed-*
  touch "$stamp"
fi
# Bytecode for our own modules (an editable install has none, and with PYTHONDONTWRITEBYTECODE set
# Python would compile every module at every start: ~20 ms of each command). Only changed files.
.venv/bin/python -m compileall -q src >/dev/null

cmd=${1:-run}
shift || true
case "$cmd" in
  run) exec .venv/bin/nsfs "${@:-ls}" ;;
  test) exec .venv/bin/python -m pytest "$@" ;;
  *) echo "usage: bash bootstrap.sh run|test [ARGS...]" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Sets up everything namespacefs needs on a fresh Debian machine (idempotent), then runs:
#   bash bootstrap.sh run [NSFS ARGS...]   discover and show this host's namespaces (default: nsfs ls)
#   bash bootstrap.sh test [PYTEST ARGS...]   the test suite
#   bash bootstrap.sh install-system          install for the whole system (docs/service.md):
#       a venv in /opt/namespacefs (NSFS_PREFIX), /usr/local/bin/nsfs (NSFS_BINDIR), man pages and
#       bash completion under /usr/local/share (NSFS_SHARE), /etc/systemd/system/namespacefs.service
#       (NSFS_UNITDIR); enables nothing. Run it again to upgrade.
# Must run as root: namespaces, FUSE, bind mounts and containers need it.
# The dev venv gets the man pages in .venv/share/man (MANPATH=$PWD/.venv/share/man: man nsfs-ls) and
# bash completion in .venv/share/bash-completion/completions/nsfs (source it).
set -euo pipefail
cd "$(dirname "$0")"

APT_PACKAGES=(
  python3-venv python3-dev gcc                 # the venv, building our C (_walk.c, _tree.c, _digest.c)
  valgrind strace                              # the walk's memory check in the tests; the bench's read audit
  fuse3                                        # the FUSE filesystem (fusermount3 clears a stale mount)
  util-linux iproute2 procps psmisc acl attr   # lsns/unshare/nsenter to compare and test with, ip netns
  runc bubblewrap systemd-container busybox-static criu  # real containers in the tests
  chromium                                     # the web page test (headless)
  docker.io containerd lxc                     # the engines users run, started by the tests themselves
  podman crun uidmap slirp4netns catatonit fuse-overlayfs conmon golang-github-containers-common  # podman, rootless too
  systemd man-db                               # systemd-analyze verify of the unit (it runs man for Documentation=)
)
# What a system install needs (no test tools, no browser): the venv and building our C.
SYSTEM_APT_PACKAGES=(python3-venv python3-dev gcc fuse3 util-linux)
cmd=${1:-run}
shift || true

if [ "$(id -u)" -ne 0 ]; then
  echo "bootstrap.sh: run as root (namespaces, FUSE and containers need it)" >&2
  exit 1
fi

ensure_apt() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "bootstrap.sh: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  fi
}

# Debian's own Python: the one python3-venv and python3-dev above belong to, built with PGO and LTO
# (`nsfs ls` runs ~8% faster on it than on a self-built 3.11 that may come first on PATH).
PY=$(readlink -f "${PYTHON:-/usr/bin/python3}")

# man pages and bash completion from the installed package's own parsers (rewritten only when changed)
install_docs() {  # PYTHON SHARE_DIR
  "$1" -m namespacefs.cli.manual --man-dir "$2/man/man1" --bash-completion "$2/bash-completion/completions/nsfs"
}

install_system() {
  local prefix=${NSFS_PREFIX:-/opt/namespacefs} bindir=${NSFS_BINDIR:-/usr/local/bin}
  local share=${NSFS_SHARE:-/usr/local/share} unitdir=${NSFS_UNITDIR:-/etc/systemd/system}
  ensure_apt "${SYSTEM_APT_PACKAGES[@]}"
  [ -x "$prefix/bin/python" ] || "$PY" -m venv "$prefix"
  "$prefix/bin/pip" install -q --upgrade pip >&2
  # a copy of this tree (not editable: the source may go away), with its pinned dependencies
  "$prefix/bin/pip" install -q --upgrade ".[docs]" >&2
  install_docs "$prefix/bin/python" "$share"
  mkdir -p "$bindir" "$unitdir"
  ln -sfn "$prefix/bin/nsfs" "$bindir/nsfs"
  # the unit as the installed package ships it, pointed at this prefix
  "$prefix/bin/python" -c 'from importlib.resources import files
print(files("namespacefs").joinpath("contrib/namespacefs.service").read_text(), end="")' \
    | sed "s#/opt/namespacefs/#$prefix/#g" > "$unitdir/.namespacefs.service.new"
  chmod 0644 "$unitdir/.namespacefs.service.new"
  mv "$unitdir/.namespacefs.service.new" "$unitdir/namespacefs.service"
  if [ -d /run/systemd/system ] && [ "$unitdir" = /etc/systemd/system ]; then
    systemctl daemon-reload
  fi
  echo "bootstrap.sh: installed $("$prefix/bin/nsfs" --version) in $prefix;" \
       "unit $unitdir/namespacefs.service (start it: systemctl enable --now namespacefs)" >&2
}

if [ "$cmd" = install-system ]; then
  install_system
  exit 0
fi
ensure_apt "${APT_PACKAGES[@]}"

# (an edit of the C extension's source installs again, which rebuilds it)
stamp=.venv/.installed-$(cat pyproject.toml src/namespacefs/*.c | sha256sum | cut -c1-16)
if [ -e .venv ] && [ "$(cat .venv/.python 2>/dev/null)" != "$PY" ]; then
  echo "bootstrap.sh: making .venv again with $PY" >&2
  rm -rf .venv
fi
if [ ! -e "$stamp" ]; then
  [ -x .venv/bin/python ] || { "$PY" -m venv .venv && echo "$PY" > .venv/.python; }
  .venv/bin/pip install -q --upgrade pip >&2
  if ! .venv/bin/pip install -q -e '.[test,docs]' >&2; then
    echo "bootstrap.sh: installing namespacefs failed (see above; its C extension needs gcc and python3-dev)" >&2
    exit 1
  fi
  for ext in _walk _tree _digest; do
    if ! .venv/bin/python -c "import namespacefs.$ext" 2>/dev/null; then
      echo "bootstrap.sh: namespacefs.$ext (src/namespacefs/$ext.c) was not built: see the compiler's messages above" >&2
      exit 1
    fi
  done
  rm -f .venv/.installed-*
  touch "$stamp"
fi

# promtool checks the Prometheus alert rules in the tests. It comes in Debian's prometheus package,
# unpacked here rather than installed: installing it would start a Prometheus server.
if [ ! -x .venv/bin/promtool ]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && { apt-get download -qq prometheus 2>/dev/null || { apt-get update -qq && apt-get download -qq prometheus; }; } \
     && dpkg-deb --fsys-tarfile prometheus_*.deb | tar -x ./usr/bin/promtool) >&2
  install -m 0755 "$tmp/usr/bin/promtool" .venv/bin/promtool
  rm -rf "$tmp"
fi

# Bytecode for our own modules (an editable install has none, and with PYTHONDONTWRITEBYTECODE set
# Python would compile every module at every start: ~20 ms of each command). Only changed files.
.venv/bin/python -m compileall -q src >/dev/null
install_docs .venv/bin/python .venv/share

case "$cmd" in
  run) exec .venv/bin/nsfs "${@:-ls}" ;;
  test) exec .venv/bin/python -m pytest "$@" ;;
  *) echo "usage: bash bootstrap.sh run|test [ARGS...] | install-system" >&2; exit 2 ;;
esac

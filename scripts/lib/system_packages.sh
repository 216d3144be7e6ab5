# Installing the system packages the scripts need (sourced, not run).
# As root with apt-get: install them. Otherwise: one line naming the packages, exit 1.

# need_packages REASON PACKAGE...
need_packages() {
  local reason=$1
  shift
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "sip-router: $reason: installing $* with apt-get" >&2
    if [ -z "${_apt_updated:-}" ]; then
      apt-get update -qq >/dev/null
      _apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  else
    echo "sip-router: $reason: install it first: sudo apt-get install -y $*" >&2
    exit 1
  fi
}

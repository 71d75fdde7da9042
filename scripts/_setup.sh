# Shared set-up for scripts/demo and scripts/test (sourced, not run).
# Creates .venv, installs the project, and makes sure the Debian tools the scripts need exist.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"

say() { printf '%s\n' "$*" >&2; }

pick_python() {
    for candidate in python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    say "error: store-gateway needs Python >= 3.11 (with venv); on Debian: sudo apt-get install -y python3 python3-venv"
    return 1
}

# setup_venv EXTRAS: create .venv if needed and install the project (with EXTRAS, e.g. "dev").
setup_venv() {
    local extras="${1:-}" spec="."
    [ -n "$extras" ] && spec=".[$extras]"
    if [ ! -x "$VENV/bin/python" ]; then
        say "setup: creating $VENV"
        "$(pick_python)" -m venv "$VENV"
    fi
    # Re-install only when pyproject.toml or the wanted extras changed.
    local stamp="$VENV/.installed-$(echo "$extras" | tr -c 'a-z0-9' '_')"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        say "setup: installing store-gateway$([ -n "$extras" ] && echo " [$extras]") into .venv"
        "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
        "$VENV/bin/python" -m pip install --quiet -e "$spec" >&2
        touch "$stamp"
    fi
}

APT_UPDATED=""
# need_debian_package PACKAGE BINARY: install Debian's PACKAGE when BINARY is missing (as root),
# otherwise print the exact command to run and fail.
need_debian_package() {
    local package="$1" binary="$2"
    if command -v "$binary" >/dev/null 2>&1 || [ -x "/usr/sbin/$binary" ] || [ -x "/usr/bin/$binary" ]; then
        return 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        say "error: '$binary' is missing; install it with: sudo apt-get install -y $package"
        return 1
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        say "error: '$binary' is missing and this is not a Debian-like system; install the '$package' package"
        return 1
    fi
    say "setup: installing Debian package $package (for $binary)"
    if [ -z "$APT_UPDATED" ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$package" >&2
}

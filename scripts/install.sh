#!/usr/bin/env bash
# Install (or upgrade) store-gateway on a Debian store box, next to a local Mosquitto broker.
# Safe to run again: it keeps the configuration, passwords and certificates it finds.
# See docs/install.md for what it puts where and how to add devices.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: sudo scripts/install.sh [--prefix DIR] [--no-start] [--help]

Installs store-gateway from this checkout as a systemd service next to Mosquitto:
  - Debian packages: mosquitto, mosquitto-clients, python3-venv, openssl
  - a virtualenv in PREFIX/venv with the project, linked as /usr/local/bin/store-gateway
  - the system user store-gateway (sysusers.d, member of dialout for serial printers)
  - /etc/systemd/system/store-gateway.service (hardened, Type=notify, watchdog)
  - /etc/store-gateway/config.toml from examples/store.toml (only if absent)
  - the MQTT user store-gateway, its password in /etc/store-gateway/mqtt.password
  - Mosquitto: /etc/mosquitto/conf.d/store-gateway.conf, store-gateway.acl, store-gateway.passwd,
    and a self-signed store CA + broker certificate in /etc/mosquitto/certs (only if absent)
then checks the configuration and enables and (re)starts mosquitto and store-gateway.

Options:
  --prefix DIR   where the virtualenv and docs go (default: /opt/store-gateway)
  --no-start     install and enable, but do not start or restart any service
  -h, --help     show this help
EOF
}

say() { printf 'install: %s\n' "$*" >&2; }
die() {
    printf 'install: error: %s\n' "$*" >&2
    exit 1
}

PREFIX=/opt/store-gateway
START=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --no-start) START=0 ;;
        --prefix)
            [[ $# -ge 2 ]] || die "--prefix needs a directory"
            PREFIX="$2"
            shift
            ;;
        --prefix=*) PREFIX="${1#--prefix=}" ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            usage >&2
            die "unknown argument: $1"
            ;;
    esac
    shift
done
[[ "$PREFIX" == /* ]] || die "--prefix must be an absolute path, found: $PREFIX"
PREFIX="${PREFIX%/}"

[[ "$(id -u)" -eq 0 ]] || die "run as root (sudo $0)"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[[ -f "$REPO/pyproject.toml" && -f "$REPO/systemd/store-gateway.service" ]] ||
    die "$REPO does not look like a store-gateway checkout"

SERVICE_USER=store-gateway
CONFIG_DIR=/etc/store-gateway
CONFIG="$CONFIG_DIR/config.toml"
MOSQ_DIR=/etc/mosquitto
MOSQ_PASSWD="$MOSQ_DIR/store-gateway.passwd"
MOSQ_ACL="$MOSQ_DIR/store-gateway.acl"
MOSQ_CONF="$MOSQ_DIR/conf.d/store-gateway.conf"
CERTS="$MOSQ_DIR/certs"
VENV="$PREFIX/venv"
BIN="$VENV/bin/store-gateway"
UNIT=/etc/systemd/system/store-gateway.service
SYSUSERS=/etc/sysusers.d/store-gateway.conf

# What changed in Mosquitto's files decides between nothing, reload and restart.
MOSQUITTO=none
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# install_file SRC DEST MODE OWNER:GROUP: copy when the content differs; return 0 if it changed.
install_file() {
    local src="$1" dest="$2" mode="$3" owner="$4"
    if [[ -f "$dest" ]] && cmp -s "$src" "$dest"; then
        chmod "$mode" "$dest"
        chown "$owner" "$dest"
        return 1
    fi
    install -D -m "$mode" -o "${owner%%:*}" -g "${owner##*:}" "$src" "$dest"
    say "wrote $dest"
    return 0
}

# --- 1. Debian packages ------------------------------------------------------------------------
missing=()
for package in mosquitto mosquitto-clients python3-venv openssl; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$package")
    fi
done
if [[ ${#missing[@]} -gt 0 ]]; then
    say "installing Debian packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "store-gateway needs Python >= 3.11 (Debian 12 or later)"
command -v systemd-sysusers >/dev/null || die "systemd-sysusers not found (is this a systemd system?)"

# --- 2. The service user's declaration (applied by setup-host) ---------------------------------
install_file "$REPO/systemd/store-gateway.sysusers" "$SYSUSERS" 0644 root:root || true

# --- 3. The program: a virtualenv in PREFIX ----------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
    say "creating $VENV"
    python3 -m venv "$VENV"
fi
say "installing store-gateway from $REPO into $VENV"
# A local path is always rebuilt and reinstalled, so this is also the upgrade.
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-cache-dir "$REPO"
[[ -x "$BIN" ]] || die "$BIN is missing after pip install"
ln -sfn "$BIN" /usr/local/bin/store-gateway
install -d -m 0755 "$PREFIX/docs"
for doc in "$REPO"/docs/*.md; do
    if [[ -f "$doc" ]]; then
        install -m 0644 "$doc" "$PREFIX/docs/"
    fi
done

# --- 4. Configuration (setup-host gives it to the service user's group) -----------------------
install -d -m 0755 -o root -g root "$CONFIG_DIR"
if [[ ! -e "$CONFIG" ]]; then
    "$REPO/scripts/setup-host" example-config "$REPO/examples/store.toml" >"$WORK/config.toml"
    install -m 0640 -o root -g root "$WORK/config.toml" "$CONFIG"
    say "wrote $CONFIG from examples/store.toml: review it (store id, kiosks, screens)"
else
    say "keeping $CONFIG"
fi

# --- 5. Mosquitto: snippet and ACL ---------------------------------------------------------------
# Local edits to the snippet (e.g. require_certificate) are replaced: keep a copy to re-apply.
if [[ -f "$MOSQ_CONF" ]] && ! cmp -s "$REPO/systemd/mosquitto/store-gateway.conf" "$MOSQ_CONF"; then
    backup="$MOSQ_CONF.bak-$(date +%Y%m%d-%H%M%S)"
    cp -p "$MOSQ_CONF" "$backup"
    say "warning: $MOSQ_CONF differed from this version; the old one is in $backup"
fi
if install_file "$REPO/systemd/mosquitto/store-gateway.conf" "$MOSQ_CONF" 0644 root:root; then
    MOSQUITTO=restart
fi
# The shipped ACL, then the site's own lines (never overwritten by this script).
acl_tmp="$WORK/store-gateway.acl"
cat "$REPO/systemd/mosquitto/store-gateway.acl" >"$acl_tmp"
if [[ -f "$MOSQ_ACL.local" ]]; then
    printf '\n# --- from %s ---\n' "$MOSQ_ACL.local" >>"$acl_tmp"
    cat "$MOSQ_ACL.local" >>"$acl_tmp"
fi
if install_file "$acl_tmp" "$MOSQ_ACL" 0640 root:mosquitto && [[ "$MOSQUITTO" == none ]]; then
    MOSQUITTO=reload
fi

# --- 6. The systemd unit -----------------------------------------------------------------------
unit_tmp="$WORK/store-gateway.service"
sed -e "s#/opt/store-gateway/#$PREFIX/#g" "$REPO/systemd/store-gateway.service" >"$unit_tmp"
install_file "$unit_tmp" "$UNIT" 0644 root:root || true

# --- 7. The host: user, passwords, certificates, model, check, enable and start ----------------
# The same steps as the Debian package's postinst (scripts/setup-host).
configure=(configure --bin "$BIN" --sysusers "$SYSUSERS" --mosquitto "$MOSQUITTO")
if [[ -f "$REPO/models/nba.onnx" ]]; then
    configure+=(--model "$REPO/models/nba.onnx")
fi
if [[ "$START" -eq 0 ]]; then
    configure+=(--no-start)
fi
"$REPO/scripts/setup-host" "${configure[@]}"

cat <<EOF

store-gateway is installed.
  program:   $VENV (store-gateway $("$BIN" version 2>/dev/null | awk '{print $2}'))
  config:    $CONFIG   (check: store-gateway check-config $CONFIG)
  state:     /var/lib/store-gateway
  health:    curl -s http://127.0.0.1:9810/healthz
  broker:    127.0.0.1:1883 (gateway), port 8883 TLS for store devices, CA: $CERTS/store-ca.crt

Add a device (one MQTT user each; username = client id = the id in config.toml):
  sudo mosquitto_passwd $MOSQ_PASSWD kiosk-1        # also screen-<n>, tablet-<n>, pos-<n>,
  sudo systemctl reload mosquitto                    #   espresense-<room>
The ACL ($MOSQ_ACL) already lets kiosk-1 use store/+/v1/kiosk/kiosk-1/#; see docs/install.md.
EOF

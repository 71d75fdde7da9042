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
GATEWAY_PASSWORD="$CONFIG_DIR/mqtt.password"
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
MOSQ_RESTART=0
MOSQ_RELOAD=0
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

# --- 2. The service user -----------------------------------------------------------------------
install_file "$REPO/systemd/store-gateway.sysusers" "$SYSUSERS" 0644 root:root || true
systemd-sysusers "$SYSUSERS"

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

# The shipped next-best-action model, where the daemon looks for it and model bundles replace it.
# Only if absent: a model the cloud has installed since is newer than the one in this checkout.
STATE_DIR=/var/lib/store-gateway
if [[ -f "$REPO/models/nba.onnx" && ! -f "$STATE_DIR/models/nba.onnx" ]]; then
    install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$STATE_DIR" "$STATE_DIR/models"
    install -m 0640 -o "$SERVICE_USER" -g "$SERVICE_USER" "$REPO/models/nba.onnx" \
        "$STATE_DIR/models/nba.onnx"
    say "installed the shipped model to $STATE_DIR/models/nba.onnx"
fi

# --- 4. Configuration --------------------------------------------------------------------------
# Mode 0755 is ConfigurationDirectory='s default; secrets inside are 0640 root:store-gateway.
install -d -m 0755 -o root -g root "$CONFIG_DIR"
if [[ ! -e "$CONFIG" ]]; then
    [[ -f "$REPO/examples/store.toml" ]] || die "$REPO/examples/store.toml is missing"
    # The example carries the gateway's MQTT user and password file commented out: turn them on.
    sed -E \
        -e 's|^#[[:space:]]*(username[[:space:]]*=[[:space:]]*"store-gateway")|\1|' \
        -e "s|^#[[:space:]]*(password_file[[:space:]]*=[[:space:]]*\"$GATEWAY_PASSWORD\")|\\1|" \
        "$REPO/examples/store.toml" >"$WORK/config.toml"
    install -m 0640 -o root -g "$SERVICE_USER" "$WORK/config.toml" "$CONFIG"
    say "wrote $CONFIG from examples/store.toml: review it (store id, kiosks, screens)"
else
    say "keeping $CONFIG"
fi

# --- 5. MQTT users and passwords ---------------------------------------------------------------
if [[ ! -f "$MOSQ_PASSWD" ]]; then
    install -m 0640 -o root -g mosquitto /dev/null "$MOSQ_PASSWD"
fi
if [[ ! -s "$GATEWAY_PASSWORD" ]]; then
    (
        umask 077
        python3 -c 'import secrets; print(secrets.token_urlsafe(32), end="")' >"$GATEWAY_PASSWORD"
    )
    say "generated the MQTT password of user store-gateway in $GATEWAY_PASSWORD"
    # The broker's copy must change with it; devices' users are left alone.
    mosquitto_passwd -b "$MOSQ_PASSWD" store-gateway "$(cat "$GATEWAY_PASSWORD")"
    MOSQ_RELOAD=1
elif ! grep -q '^store-gateway:' "$MOSQ_PASSWD"; then
    mosquitto_passwd -b "$MOSQ_PASSWD" store-gateway "$(cat "$GATEWAY_PASSWORD")"
    MOSQ_RELOAD=1
fi
chown root:"$SERVICE_USER" "$GATEWAY_PASSWORD"
chmod 0640 "$GATEWAY_PASSWORD"
# mosquitto_passwd rewrites the file; the broker re-reads it as user mosquitto on reload.
chown root:mosquitto "$MOSQ_PASSWD"
chmod 0640 "$MOSQ_PASSWD"

# --- 6. Mosquitto: snippet, ACL, TLS for the LAN listener --------------------------------------
# Local edits to the snippet (e.g. require_certificate) are replaced: keep a copy to re-apply.
if [[ -f "$MOSQ_CONF" ]] && ! cmp -s "$REPO/systemd/mosquitto/store-gateway.conf" "$MOSQ_CONF"; then
    backup="$MOSQ_CONF.bak-$(date +%Y%m%d-%H%M%S)"
    cp -p "$MOSQ_CONF" "$backup"
    say "warning: $MOSQ_CONF differed from this version; the old one is in $backup"
fi
if install_file "$REPO/systemd/mosquitto/store-gateway.conf" "$MOSQ_CONF" 0644 root:root; then
    MOSQ_RESTART=1
fi
# The shipped ACL, then the site's own lines (never overwritten by this script).
acl_tmp="$WORK/store-gateway.acl"
cat "$REPO/systemd/mosquitto/store-gateway.acl" >"$acl_tmp"
if [[ -f "$MOSQ_ACL.local" ]]; then
    printf '\n# --- from %s ---\n' "$MOSQ_ACL.local" >>"$acl_tmp"
    cat "$MOSQ_ACL.local" >>"$acl_tmp"
fi
if install_file "$acl_tmp" "$MOSQ_ACL" 0640 root:mosquitto; then
    MOSQ_RELOAD=1
fi

install -d -m 0755 "$CERTS"
if [[ ! -f "$CERTS/store-broker.crt" || ! -f "$CERTS/store-broker.key" ]]; then
    host="$(hostname)"
    if [[ ! -f "$CERTS/store-ca.crt" ]]; then
        say "creating a self-signed store CA in $CERTS (docs/install.md, TLS)"
        (umask 077 && openssl req -x509 -newkey rsa:3072 -nodes -sha256 -days 3650 \
            -subj "/CN=store-gateway CA $host" -keyout "$CERTS/store-ca.key" \
            -out "$CERTS/store-ca.crt" 2>/dev/null)
    fi
    [[ -f "$CERTS/store-ca.key" ]] ||
        die "$CERTS/store-ca.crt has no key here: install store-broker.crt and .key from your CA"
    san="DNS:$host,DNS:$host.local,DNS:localhost,IP:127.0.0.1"
    fqdn="$(hostname -f 2>/dev/null || true)"
    if [[ -n "$fqdn" && "$fqdn" != "$host" ]]; then
        san="$san,DNS:$fqdn"
    fi
    for address in $(hostname -I 2>/dev/null || true); do
        if [[ "$address" != 127.* && "$address" != ::1 ]]; then
            san="$san,IP:$address"
        fi
    done
    say "creating the broker certificate for $san"
    printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' \
        "$san" >"$WORK/broker.ext"
    (umask 077 && openssl req -new -newkey rsa:3072 -nodes -sha256 -subj "/CN=$host" \
        -keyout "$CERTS/store-broker.key" -out "$WORK/broker.csr" 2>/dev/null)
    openssl x509 -req -in "$WORK/broker.csr" -CA "$CERTS/store-ca.crt" \
        -CAkey "$CERTS/store-ca.key" -CAcreateserial -days 825 -sha256 \
        -extfile "$WORK/broker.ext" -out "$CERTS/store-broker.crt" 2>/dev/null
    MOSQ_RESTART=1
fi
chmod 0600 "$CERTS/store-ca.key" 2>/dev/null || true
chmod 0644 "$CERTS/store-ca.crt" "$CERTS/store-broker.crt"
chown root:mosquitto "$CERTS/store-broker.key"
chmod 0640 "$CERTS/store-broker.key"

# --- 7. The systemd unit -----------------------------------------------------------------------
unit_tmp="$WORK/store-gateway.service"
sed -e "s#/opt/store-gateway/#$PREFIX/#g" "$REPO/systemd/store-gateway.service" >"$unit_tmp"
install_file "$unit_tmp" "$UNIT" 0644 root:root || true

# --- 8. Check the configuration as the service will read it -----------------------------------
say "checking $CONFIG"
if ! runuser -u "$SERVICE_USER" -- "$BIN" check-config "$CONFIG"; then
    die "fix $CONFIG (see above), then run this script again"
fi
mqtt_keys="$(awk '/^[[:space:]]*\[/{in_mqtt = ($0 ~ /^[[:space:]]*\[mqtt\]/)} in_mqtt' "$CONFIG")"
if ! grep -Eq '^[[:space:]]*password_file[[:space:]]*=' <<<"$mqtt_keys"; then
    say "warning: $CONFIG has no mqtt.password_file; the broker refuses anonymous clients."
    say "         Add to its [mqtt] table:"
    say "           username = \"store-gateway\""
    say "           password_file = \"$GATEWAY_PASSWORD\""
fi

# --- 9. Enable and start -----------------------------------------------------------------------
if [[ -d /run/systemd/system ]]; then
    systemctl daemon-reload
fi
systemctl enable mosquitto.service store-gateway.service
if [[ "$START" -eq 1 ]]; then
    if systemctl is-active --quiet mosquitto.service && [[ "$MOSQ_RESTART" -eq 1 ]]; then
        say "restarting mosquitto (listeners or certificates changed)"
        systemctl restart mosquitto.service
    elif systemctl is-active --quiet mosquitto.service && [[ "$MOSQ_RELOAD" -eq 1 ]]; then
        systemctl reload mosquitto.service
    else
        systemctl start mosquitto.service
    fi
    # restart = start, or pick up the newly installed code on an upgrade.
    systemctl restart store-gateway.service
    say "started; status: systemctl status store-gateway, logs: journalctl -u store-gateway -f"
else
    say "--no-start: services enabled, not started (systemctl start mosquitto store-gateway)"
fi

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

#!/usr/bin/env bash
# Install streetgate as a systemd service (what `make install` runs). Safe to run again: it
# upgrades the program, keeps an existing config and restarts the service only if it runs.
#
#   sudo bash systemd/install.sh [--prefix DIR] [--destdir DIR] [--no-venv] [--no-enable]
#
#   --prefix DIR   program location (default /opt/streetgate; the unit's ExecStart follows it)
#   --destdir DIR  stage every file under DIR (packaging, tests): no user, no chown, no systemctl
#                  (a virtualenv is not relocatable: stage with --no-venv and create it on the target)
#   --no-venv      do not create or update PREFIX/.venv (files and unit only)
#   --no-enable    do not enable the unit
# Environment: PYTHON (default python3), PIP_ARGS (extra pip arguments, e.g. a wheel directory:
# "--no-index --find-links /media/usb/wheels"), DESTDIR (same as --destdir).
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=/opt/streetgate
DESTDIR=${DESTDIR:-}
VENV=1
ENABLE=1
PYTHON=${PYTHON:-python3}
USER_NAME=streetgate
DEFAULT_PREFIX=/opt/streetgate

usage() { sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX=${2:?--prefix needs a directory}; shift 2 ;;
    --destdir) DESTDIR=${2:?--destdir needs a directory}; shift 2 ;;
    --no-venv) VENV=0; shift ;;
    --no-enable) ENABLE=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done

case "$PREFIX" in
  /*) ;;
  *) echo "install.sh: --prefix must be an absolute path; got $PREFIX" >&2; exit 2 ;;
esac

STAGED=0
if [ -n "$DESTDIR" ]; then
  STAGED=1
  mkdir -p "$DESTDIR"
  DESTDIR=$(cd "$DESTDIR" && pwd)
elif [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (sudo make install), or stage with --destdir DIR" >&2
  exit 1
fi

say() { echo "streetgate install: $*"; }
root() { printf '%s%s' "$DESTDIR" "$1"; }

# Files owned root:streetgate when installing for real; staged files keep the caller's owner.
own() {
  [ "$STAGED" -eq 1 ] || chown "$1" "$2"
}

create_user() {
  if [ "$STAGED" -eq 1 ]; then
    say "staged: not creating user $USER_NAME"
    return
  fi
  if ! getent passwd "$USER_NAME" >/dev/null; then
    useradd --system --user-group --home-dir /var/lib/streetgate --no-create-home \
      --shell /usr/sbin/nologin --comment "streetgate gateway" "$USER_NAME"
    say "created system user $USER_NAME"
  fi
  # Serial ports are root:dialout 0660 (Debian, Raspberry Pi OS).
  if getent group dialout >/dev/null; then
    usermod --append --groups dialout "$USER_NAME"
  fi
}

install_program() {
  local venv
  venv=$(root "$PREFIX")/.venv
  install -d -m 0755 "$(root "$PREFIX")" "$(root "$PREFIX")/systemd"
  install -m 0644 "$SRC/systemd/README.md" "$(root "$PREFIX")/systemd/README.md"
  if [ "$VENV" -eq 0 ]; then
    say "skipping the virtualenv (--no-venv)"
    return
  fi
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "install.sh: streetgate needs Python >= 3.11 (apt-get install python3 python3-venv)" >&2
    exit 1
  }
  [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
  # shellcheck disable=SC2086 - PIP_ARGS is a list of words on purpose
  "$venv/bin/python" -m pip install --quiet --upgrade ${PIP_ARGS:-} "$SRC"
  say "installed $("$venv/bin/streetgate" --version) into $PREFIX/.venv"
  if [ "$STAGED" -eq 0 ]; then
    ln -sfn "$PREFIX/.venv/bin/streetgate" /usr/local/bin/streetgate
  fi
}

install_config() {
  local dir conf
  dir=$(root /etc/streetgate)
  conf=$dir/gateway.toml
  install -d -m 0750 "$dir"
  own root:"$USER_NAME" "$dir"
  if [ -e "$conf" ]; then
    say "keeping the existing $conf"
  else
    # May hold the broker password: readable by the service group only.
    install -m 0640 "$SRC/gateway/example.toml" "$conf"
    own root:"$USER_NAME" "$conf"
    say "wrote $conf from gateway/example.toml: set [gateway] id and [uplink] host"
  fi
  install -d -m 0700 "$(root /var/lib/streetgate)"
  own "$USER_NAME:$USER_NAME" "$(root /var/lib/streetgate)"
}

install_unit() {
  local unit
  unit=$(root /etc/systemd/system/streetgate.service)
  install -d -m 0755 "$(dirname "$unit")" "$(root /etc/modules-load.d)"
  sed "s#$DEFAULT_PREFIX#$PREFIX#g" "$SRC/systemd/streetgate.service" > "$unit.tmp"
  chmod 0644 "$unit.tmp"
  mv -f "$unit.tmp" "$unit"
  # DeviceAllow=char-ttyUSB / char-ttyACM resolve through /proc/devices when the service
  # starts: load the USB serial drivers at boot so a port plugged in later is allowed too.
  printf '# streetgate: USB serial adapters (see systemd/README.md)\nusbserial\ncdc_acm\n' \
    > "$(root /etc/modules-load.d/streetgate.conf)"
  chmod 0644 "$(root /etc/modules-load.d/streetgate.conf)"
  say "installed $unit"
}

enable_unit() {
  if [ "$STAGED" -eq 1 ]; then
    say "staged: enable with 'systemctl enable streetgate' on the target"
    return
  fi
  if [ ! -d /run/systemd/system ]; then
    say "systemd is not running here: enable later with 'systemctl enable --now streetgate'"
    return
  fi
  systemctl daemon-reload
  if [ "$ENABLE" -eq 1 ]; then
    systemctl enable streetgate.service
  fi
  # An upgrade: restart only if it is running; a first install waits for the config.
  systemctl try-restart streetgate.service
  if ! systemctl is-active --quiet streetgate.service; then
    say "next: edit /etc/streetgate/gateway.toml, then 'systemctl start streetgate'"
  fi
}

create_user
install_program
install_config
install_unit
enable_unit
say "done; check health with 'streetgate status' and logs with 'journalctl -u streetgate'"

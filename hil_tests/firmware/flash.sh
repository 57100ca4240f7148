#!/usr/bin/env bash
# Copy the rig firmware to a Raspberry Pi Pico running MicroPython (`make flash-rig`).
#
# Environment (all optional):
#   RIG_DEVICE   mpremote device, e.g. /dev/ttyACM0 or "id:e6614c311b2d5a2f" (default: auto)
#   RIG_UNITS    Modbus units it plays, "UNIT:PROFILE ..." (default: "7:io-module")
#   RIG_BAUD     RS-485 baud rate (default 9600); RIG_PARITY N, E or O (default E)
#   RIG_SERIAL   serial sensor profile: nmea-weather, pm-sensor, ascii-counter, or "none"
#                (default pm-sensor); RIG_SERIAL_BAUD (default 9600); RIG_RATE frames/s (1)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
DEVICE="${RIG_DEVICE:-auto}"

if ! "$PY" -m mpremote --help >/dev/null 2>&1; then
    echo "flash-rig: mpremote is missing: .venv/bin/pip install -e '.[firmware]'" >&2
    exit 1
fi
if ! "$PY" -m mpremote connect "$DEVICE" exec "import sys; print(sys.implementation.name)" \
        >/dev/null 2>&1; then
    echo "flash-rig: no MicroPython board found at '$DEVICE'." >&2
    echo "  Plug in the Pico (holding BOOTSEL the first time, then copy the MicroPython" >&2
    echo "  RP2 .uf2 onto the RPI-RP2 drive), check 'mpremote devs', or set RIG_DEVICE." >&2
    exit 1
fi

UNITS=()
for unit in ${RIG_UNITS:-7:io-module}; do UNITS+=(--unit "$unit"); done
SERIAL=()
if [ "${RIG_SERIAL:-pm-sensor}" != "none" ]; then
    SERIAL=(--serial "${RIG_SERIAL:-pm-sensor}" --serial-baud "${RIG_SERIAL_BAUD:-9600}"
            --rate "${RIG_RATE:-1}")
fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
(cd "$ROOT" && PYTHONPATH="$ROOT" "$PY" "$HERE/mkconfig.py" "${UNITS[@]}" "${SERIAL[@]}" \
    --baud "${RIG_BAUD:-9600}" --parity "${RIG_PARITY:-E}" -o "$WORK/rig.json")

echo "flash-rig: copying to the board at $DEVICE"
"$PY" -m mpremote connect "$DEVICE" \
    exec "import os
try:
    os.mkdir('core')
except OSError:
    pass" \
    + cp "$HERE"/core/*.py :core/ \
    + cp "$HERE/main.py" :main.py \
    + cp "$WORK/rig.json" :rig.json \
    + reset
echo "flash-rig: done; the board restarts and prints its banner on its USB console:"
echo "  $PY -m mpremote connect $DEVICE   (then type: status)"

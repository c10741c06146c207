#!/usr/bin/env bash
# Idempotent set-up for `make run` (arg: run) and `make test` (arg: test).
# Installs what is missing and nothing else, so a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
purpose="${1:-run}"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

apt_updated=0
apt_install() {
    if [ "$apt_updated" -eq 0 ]; then
        echo "setup: apt-get update"
        $SUDO apt-get update -qq
        apt_updated=1
    fi
    echo "setup: apt-get install $*"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# System libraries. libopus for the codec everywhere; Chromium and Firefox ESR
# only for the browser end-to-end tests (Firefox is driven over Marionette by
# the marionette-driver package of the dev extras; tests/kit/firefox.py); ffmpeg as an independent Opus/RTP peer in tests;
# Node.js for the PWA's unit tests and the Node SDK's tests (sdk/js); espeak-ng
# speaks the labelled corpus of the speech detection tests and benchmark;
# coturn and redis-server are started by the test fixtures.
missing=()
ldconfig -p 2>/dev/null | grep -q 'libopus\.so\.0' || missing+=(libopus0)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
# A C compiler and Python's headers build the relay's optional compiled fast
# path (botcall/relay/_fastpath.c, setup.py); without them pip goes on without it.
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
python3 -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null || missing+=(python3-dev)
if [ "$purpose" = "test" ]; then
    [ -x /usr/bin/chromium ] || missing+=(chromium)
    command -v firefox-esr >/dev/null 2>&1 || missing+=(firefox-esr)
    # A real-time audio clock for headless Firefox in bench.mouth_to_ear --firefox-audio pulse
    # (tests.kit.firefox.pulse_null_sink: a private daemon with a null sink; its mock back-end runs slow).
    command -v pulseaudio >/dev/null 2>&1 || missing+=(pulseaudio)
    # pactl, parec and pacat: Chromium's sound devices in tests.kit.pulse (bench.mouth_to_ear
    # --audio-device pulse, tests/e2e/test_pulse_devices.py) read and feed the daemon's null sinks.
    command -v parec >/dev/null 2>&1 && command -v pacat >/dev/null 2>&1 && command -v pactl >/dev/null 2>&1 || missing+=(pulseaudio-utils)
    command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
    command -v node >/dev/null 2>&1 || missing+=(nodejs)
    # Debian packages npm apart from Node.js; the werift peer and the Node SDK need it.
    command -v npm >/dev/null 2>&1 || missing+=(npm)
    command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
    # The README's HTTP walkthrough is curl, run as written by sdk/python/tests/test_doc_blocks.py.
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    # Real services the tests start themselves: coturn (TURN for browsers
    # without UDP) and Redis (the clustered mode). Neither is left running.
    command -v turnserver >/dev/null 2>&1 || missing+=(coturn)
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
fi
if [ "${#missing[@]}" -gt 0 ]; then apt_install "${missing[@]}"; fi

# Virtualenv and the package (editable), reinstalled only when pyproject, setup.py
# or the compiled fast path's source changes (an editable install builds it in place).
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    python3 -m venv .venv
fi
# The bot SDK (sdk/python, its own MIT distribution botcall-sdk) goes in first:
# the server package depends on it, and it is not taken from PyPI.
stamp=".venv/.botcall-installed-$purpose"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ sdk/python/pyproject.toml -nt "$stamp" ] \
    || [ setup.py -nt "$stamp" ] || [ botcall/relay/_fastpath.c -nt "$stamp" ]; then
    extras=""
    if [ "$purpose" = "test" ]; then extras="[dev]"; fi
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    echo "setup: pip install -e sdk/python"
    .venv/bin/python -m pip install -q -e sdk/python
    echo "setup: pip install -e .$extras"
    .venv/bin/python -m pip install -q -e ".$extras"
    touch "$stamp"
fi

# Silero VAD's ONNX model ships inside the silero-vad wheel, whose declared
# dependencies (torch, torchaudio: gigabytes) BotCall does not use: onnxruntime
# runs the model (botcall/audio/vad.py). Hence --no-deps, outside pyproject.
if ! .venv/bin/python -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("silero_vad") is None)' 2>/dev/null; then
    echo "setup: pip install --no-deps silero-vad"
    .venv/bin/python -m pip install -q --no-deps "silero-vad==6.2.3"
fi

# Independent WebRTC humans for the interoperability tests
# (tests/e2e/test_external_humans.py): aiortc in a virtualenv of its own, never
# a BotCall dependency, and werift from npm in its own folder.
if [ "$purpose" = "test" ]; then
    peers_stamp=".venv-peers/.installed-aiortc-1.16.0"
    if [ ! -f "$peers_stamp" ]; then
        echo "setup: creating .venv-peers (aiortc)"
        python3 -m venv .venv-peers
        .venv-peers/bin/python -m pip install -q "aiortc==1.16.0" "websockets>=13,<16" "numpy>=1.26"
        touch "$peers_stamp"
    fi
    werift_dir="tests/kit/peers/werift"
    if [ ! -d "$werift_dir/node_modules/werift" ] || [ "$werift_dir/package-lock.json" -nt "$werift_dir/node_modules/.package-lock.json" ]; then
        echo "setup: npm ci in $werift_dir (werift)"
        (cd "$werift_dir" && npm ci --silent --no-audit --no-fund)
    fi
fi

# The Node SDK's dependencies (ws, opusscript: pure JS and wasm, no native
# build; typescript to check its shipped types), for its tests (node --test
# sdk/js/test/). npm ci only when the lock
# file is newer than the installed tree, so a second run is instant.
if [ "$purpose" = "test" ]; then
    if [ ! -d sdk/js/node_modules ] || [ sdk/js/package-lock.json -nt sdk/js/node_modules/.package-lock.json ]; then
        echo "setup: npm ci in sdk/js"
        (cd sdk/js && npm ci --no-audit --no-fund --loglevel=error)
    fi
fi

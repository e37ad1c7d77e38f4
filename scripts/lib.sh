# Shared by scripts/run and scripts/test: find Python 3.11+, make .venv, run apt-get as root.
# shellcheck shell=bash

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO/.venv}"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "need root for: $* (no sudo found)" >&2
        return 1
    fi
}

apt_install() {
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
}

find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3.11 python3.12 python3.13 python3; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    echo "stunner-dp needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2
    return 1
}

ensure_venv() {
    if [ -x "$VENV/bin/python" ]; then
        return 0
    fi
    local python
    python="$(find_python)"
    echo ">> creating $VENV with $python"
    if ! "$python" -m venv "$VENV" 2>/dev/null; then
        # Debian ships venv (ensurepip) separately
        rm -rf "$VENV"
        local version
        version="$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
        apt_install "python${version}-venv" || apt_install python3-venv
        "$python" -m venv "$VENV"
    fi
}

pip_install() {
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$@"
}

# Install "$@" (editable) unless the same request was installed from the same pyproject.toml
# before: the code itself is an editable install, so only a new pyproject (dependencies,
# entry points) or another extra needs pip again. A stamp in the venv remembers the last one.
pip_install_once() {
    local stamp want
    stamp="$VENV/.stunner-dp-installed-$(printf '%s' "$*" | sha256sum | cut -c1-12)"
    want="$(sha256sum <"$REPO/pyproject.toml" | cut -d' ' -f1)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        echo ">> stunner-dp is installed in $VENV (pyproject.toml unchanged)"
        return 0
    fi
    echo ">> installing stunner-dp into $VENV"
    pip_install "$@"
    echo "$want" >"$stamp"
}

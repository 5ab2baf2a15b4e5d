#!/usr/bin/env bash
# First step of `make book` and `make test`, before anything else: refuse an
# unsupported Python at once, and install the system packages the two commands
# need (with apt, as root or with passwordless sudo), or stop with one line
# that says exactly what to install.
#
#   tools/preflight.sh PYTHON book   # Python 3.11-3.13 with venv, npm (MathJax)
#   tools/preflight.sh PYTHON test   # the same, and Chromium with its driver (browser test)
#
# On apt systems `book` installs the browser too when it can, so that `make test`
# needs nothing more. Nothing is installed when everything is already there.
set -euo pipefail
# (Written for bash 3.2 too, macOS's /bin/bash: empty arrays are expanded with ${a[@]+...}.)

python=${1:?usage: preflight.sh PYTHON book|test}
goal=${2:?usage: preflight.sh PYTHON book|test}
venv=${VENV:-.venv}
supported="3.11, 3.12 or 3.13"

# 1. The interpreter. An existing .venv has already been checked when it was made.
if [ ! -x "$venv/bin/python" ]; then
  if ! command -v "$python" >/dev/null 2>&1; then
    echo "error: PYTHON=$python not found; the book needs Python $supported (make book PYTHON=python3.12, say)" >&2
    exit 1
  fi
  version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo unknown)
  case "$version" in
    3.11|3.12|3.13) ;;
    *)
      others=""
      for candidate in python3.13 python3.12 python3.11; do
        command -v "$candidate" >/dev/null 2>&1 && others="$others $candidate"
      done
      first=${others# }; first=${first%% *}
      hint=${others:+ (found:$others; e.g. make $goal PYTHON=$first)}
      echo "error: $python is Python $version; the book needs Python $supported$hint" >&2
      exit 1
      ;;
  esac
fi

# 2. What is missing, as Debian/Ubuntu package names.
missing=()
if [ ! -x "$venv/bin/python" ] && ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  # Debian splits venv/ensurepip out of python3. python3-venv is the default
  # Python's; another version's is python3.X-venv.
  default=$(/usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)
  if [ "$version" = "$default" ]; then missing+=(python3-venv); else missing+=("python$version-venv"); fi
fi
if [ ! -f "$venv/mathjax_static/_static/mathjax/tex-mml-svg.js" ] && ! command -v npm >/dev/null 2>&1; then
  missing+=(npm)
fi
need_browser=0
[ "$goal" = test ] && need_browser=1
browser_missing=()
if ! { [ -n "${CHROME_BIN:-}" ] || command -v chromium || command -v google-chrome; } >/dev/null 2>&1; then
  browser_missing+=(chromium)
fi
# GitHub's runners have chromedriver in $CHROMEWEBDRIVER.
if ! { [ -n "${CHROMEDRIVER:-}" ] || [ -n "${CHROMEWEBDRIVER:-}" ] || command -v chromedriver; } >/dev/null 2>&1; then
  browser_missing+=(chromium-driver)
fi

# 3. Install them where we may; otherwise stop, saying what to install.
can_apt=0
if command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then sudo=""; can_apt=1
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo"; can_apt=1
  fi
fi
if [ "$can_apt" -eq 1 ]; then
  install=(${missing[@]+"${missing[@]}"} ${browser_missing[@]+"${browser_missing[@]}"})
  if [ "${#install[@]}" -gt 0 ] 2>/dev/null; then
    echo "installing system packages: ${install[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${install[@]}" >/dev/null
  fi
  exit 0
fi
if [ "$need_browser" -eq 1 ]; then missing+=(${browser_missing[@]+"${browser_missing[@]}"}); fi
if [ "${#missing[@]}" -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "error: missing system packages; install them and run make $goal again: sudo apt-get install ${missing[*]}" >&2
  else
    echo "error: missing: ${missing[*]} (Debian names); install them (npm from Node.js; Chrome or Chromium and its chromedriver) and run make $goal again" >&2
  fi
  exit 1
fi

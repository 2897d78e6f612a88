#!/usr/bin/env bash
# Install what tests/test_slurm.py needs on Debian/Ubuntu: SLURM's controller, node daemon and
# client commands, and munge. Run as root; does nothing (quickly) when they are installed.
set -euo pipefail
packages=(slurmctld slurmd slurm-client munge)
missing=()
for package in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "install_slurm: ${packages[*]} already installed"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install_slurm: installing ${missing[*]} needs root" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q "${missing[@]}"
echo "install_slurm: installed ${missing[*]}"

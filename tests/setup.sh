#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine, and nothing when it
# is already there: the README's test command (tests/run.sh) runs it first,
# and so does CI (.ci/run, through tests/run.sh). Needs root for apt-get;
# without root it says what is missing and stops.
#
#   python3-venv   the end-to-end, deploy and demo suites' virtualenvs
#   e2fsprogs      the spool's filesystem-fault tests make an ext4 image
#                  (they also mount tmpfs and loop devices, so they run as root)
#   chromium       the status page is tested in a real headless browser
#   postgresql     the shared spool's tests start throwaway clusters
#   prometheus     promtool checks the alert rules (deploy/observability)
#   cargo-fuzz     the fuzz targets' bounded CI run (fuzz/run.sh)
#
# Node.js and npm (the TypeScript SDK's end-to-end tests) and kubectl with
# kustomize v5 (the Kubernetes manifests) must already be on the machine:
# Debian's packages are too old for both.
set -euo pipefail

need=()
python3 -m venv --help >/dev/null 2>&1 || need+=(python3-venv)
command -v mkfs.ext4 >/dev/null 2>&1 || need+=(e2fsprogs)
command -v chromium >/dev/null 2>&1 || need+=(chromium fonts-dejavu-core)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
bare=()
command -v promtool >/dev/null 2>&1 || bare+=(prometheus)

if [ ${#need[@]} -gt 0 ] || [ ${#bare[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "tests/setup.sh: missing ${need[*]} ${bare[*]}; run as root (apt-get) or install them" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    if [ ${#need[@]} -gt 0 ]; then
        # Only the tests' own throwaway clusters: no system cluster on 5432.
        mkdir -p /etc/postgresql-common
        grep -q '^create_main_cluster' /etc/postgresql-common/createcluster.conf 2>/dev/null ||
            echo 'create_main_cluster = false' >> /etc/postgresql-common/createcluster.conf
        apt-get install -y -qq "${need[@]}"
    fi
    if [ ${#bare[@]} -gt 0 ]; then
        # The prometheus package without its recommended exporters.
        apt-get install -y -qq --no-install-recommends "${bare[@]}"
    fi
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "tests/setup.sh: installing cargo-fuzz" >&2
    cargo install --locked --quiet cargo-fuzz@0.13.2
fi

missing=()
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || missing+=("Node.js 20+ with npm")
kubectl version --client 2>/dev/null | grep -qi kustomize || missing+=("kubectl with kustomize v5")
if [ ${#missing[@]} -gt 0 ]; then
    printf 'tests/setup.sh: needed and not installable from Debian here: %s\n' "${missing[@]}" >&2
    exit 1
fi

#!/usr/bin/env bash
# CI: Debian's slurm (slurmctld, slurmd, the client commands) and munge, for the tests that submit
# the launch scripts to a real one-node cluster (tests/integration/slurm_cluster.py starts and
# stops the daemons itself; nothing is started here). Idempotent: does nothing when installed.
set -euo pipefail
needed=(slurmctld slurmd sbatch squeue scontrol scancel sinfo munged mungekey)
missing=()
for binary in "${needed[@]}"; do
    command -v "$binary" >/dev/null || [[ -x /usr/sbin/$binary ]] || missing+=("$binary")
done
(( ${#missing[@]} == 0 )) && exit 0

# Root, or sudo without a password prompt.
as_root=()
(( EUID == 0 )) || as_root=(sudo -n)
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { "${as_root[@]}" apt-get update -q && \
       "${as_root[@]}" apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge; } \
       >"$log" 2>&1; then
    cat "$log" >&2
    echo "error: .ci/install_slurm.sh: apt-get could not install slurm and munge (missing: ${missing[*]})" >&2
    exit 1
fi
for binary in "${needed[@]}"; do
    command -v "$binary" >/dev/null || [[ -x /usr/sbin/$binary ]] \
        || { echo "error: .ci/install_slurm.sh: $binary is still missing after apt-get install" >&2; exit 1; }
done

#!/usr/bin/env bash
# Run a command as if this CPU had no bf16 (and no AVX-512): a stand-in for the laptops and
# the EPYC without bf16 that cnnlab runs on, measured on a host that has them.
#
#     sudo benchmarks/without_bf16.sh make test
#     sudo benchmarks/without_bf16.sh env PYTHONPATH=. .venv/bin/python benchmarks/peak.py
#
# - /proc/cpuinfo loses its avx512* and amx* flags (a copy bind-mounted over it, in a mount
#   namespace of the command's own: nothing outside it changes), so `train.precision: auto`
#   takes fp32 untimed, as it does on such a CPU;
# - torch's and oneDNN's kernels are held to AVX2 (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA);
# - inductor compiles into a cache of its own: its cache keys do not include
#   ATEN_CPU_CAPABILITY, and kernels compiled for AVX-512 loaded under avx2 gave wrong values.
#
# It is faster than a real CPU without bf16 (EPYC-A as C: the demo's epochs 1.47x quicker than
# EPYC-C's), so its times are lower bounds. Needs root (unshare, mount).
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 COMMAND [ARGS...]" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sed -E 's/ (avx512|amx)[a-z0-9_]*//g' /proc/cpuinfo > "$work/cpuinfo"
export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$work/inductor}"
unshare -m bash -c 'mount --bind "$0" /proc/cpuinfo && exec "$@"' "$work/cpuinfo" "$@"

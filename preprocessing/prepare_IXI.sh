#!/usr/bin/env bash
# IXI T2 (healthy, training) -> <DATA_ROOT>/Train/ixi/{t2,mask} + split CSVs.
# Usage: preprocessing/prepare_IXI.sh RAW_DIR DATA_ROOT [extra `pddpm preprocess` options, e.g. --workers 4 --device cuda]
#   RAW_DIR holds IXI*-T2.nii.gz (IXI-T2.tar unpacked) and, optionally, IXI.xls (ages for stratified splits).
# The atlas comes from $PDDPM_ATLAS or --atlas PATH (get it once: pddpm fetch-atlas --out ~/sri24).
# Resumable: re-running skips finished subjects. Many machines: add --shard i/n on each.
set -euo pipefail
RAW_DIR=${1:?usage: $0 RAW_DIR DATA_ROOT [options]}
DATA_ROOT=${2:?usage: $0 RAW_DIR DATA_ROOT [options]}
shift 2
pddpm preprocess ixi --input "$RAW_DIR" --data-root "$DATA_ROOT" "$@"
pddpm splits --data-root "$DATA_ROOT" --seed "${PDDPM_SPLIT_SEED:-0}"

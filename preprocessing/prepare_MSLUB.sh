#!/usr/bin/env bash
# MSLUB (MS lesions, evaluation) -> <DATA_ROOT>/Test/MSLUB/{t2,mask,seg} + split CSVs.
# Usage: preprocessing/prepare_MSLUB.sh RAW_DIR DATA_ROOT [extra `pddpm preprocess` options]
#   RAW_DIR holds patient01/{T2W,consensus_gt}.nii.gz ... (T2.nii.gz also accepted), 30 patients.
# MSLUB is skull-stripped but not in SRI24 space: it is registered (the lesion mask follows).
set -euo pipefail
RAW_DIR=${1:?usage: $0 RAW_DIR DATA_ROOT [options]}
DATA_ROOT=${2:?usage: $0 RAW_DIR DATA_ROOT [options]}
shift 2
pddpm preprocess mslub --input "$RAW_DIR" --data-root "$DATA_ROOT" "$@"
pddpm splits --data-root "$DATA_ROOT" --seed "${PDDPM_SPLIT_SEED:-0}"

#!/usr/bin/env bash
# BraTS 2021 (tumours, evaluation) -> <DATA_ROOT>/Test/Brats21/{t2,mask,seg} + split CSVs.
# Usage: preprocessing/prepare_Brats21.sh RAW_DIR DATA_ROOT [extra `pddpm preprocess` options]
#   RAW_DIR holds BraTS2021_00000/BraTS2021_00000_{t2,seg}.nii.gz, ... (the training set, 1251 cases).
# BraTS is already skull-stripped (no HD-BET); it is registered affinely to the atlas (as the
# authors' script and `pddpm detect` do), cropped and N4-corrected.
set -euo pipefail
RAW_DIR=${1:?usage: $0 RAW_DIR DATA_ROOT [options]}
DATA_ROOT=${2:?usage: $0 RAW_DIR DATA_ROOT [options]}
shift 2
pddpm preprocess brats21 --input "$RAW_DIR" --data-root "$DATA_ROOT" "$@"
pddpm splits --data-root "$DATA_ROOT" --seed "${PDDPM_SPLIT_SEED:-0}"

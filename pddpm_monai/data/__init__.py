"""Dataset adapters (IXI, BraTS21, MSLUB), the data root, split CSVs and the synthetic cohort."""

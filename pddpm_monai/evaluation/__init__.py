"""Post-processing, threshold search, metrics, permutation tests, tables and figures."""

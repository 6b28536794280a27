#!/usr/bin/env bash
# Run by snakemake after creating the conda env of splitmix.yaml (--sdm conda).
set -euo pipefail
pip install --no-deps torchattacks==3.5.1

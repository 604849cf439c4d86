#!/bin/bash
# run from the repository root: bash docs/results/proxy-vs-finetune/run.sh 0.3 (then 0.5)
# one budget's proxy variants, one after the other (resumable: each writes its cells as it goes)
b=$1; ft=docs/results/finetune-cells-$b; o=docs/results/proxy-vs-finetune
py=.venv/bin/python
$py scripts/proxy_vs_finetune.py $ft $o/$b-steps30.json
$py scripts/proxy_vs_finetune.py $ft $o/$b-steps120.json -- recover_steps=120
$py scripts/proxy_vs_finetune.py $ft $o/$b-steps120-bn16.json -- recover_steps=120 bn_batches=16
$py scripts/proxy_vs_finetune.py $ft $o/$b-steps30-lr03.json -- recover_lr=0.03

#!/bin/bash
export ALIGNBENCH_DATA=/work/shared/datasets ALIGNBENCH_CACHE=/work/main/.cache/features HF_HUB_OFFLINE=1
cd /work/main
while kill -0 $(cat results/realcheck/logs/effnet_cheap.pid) 2>/dev/null; do sleep 5; done
nice -n 5 .venv/bin/alignbench -vv run --methods structure --budget 1k,10k --tasks retrieval --pair effnet-lite0+minilm-l6 --seeds 0 --results /work/main/results/realcheck --no-progress > results/realcheck/logs/effnet_structure.log 2>&1
nice -n 5 .venv/bin/alignbench -vv run --methods fusemix:n_blocks=1:max_epochs=50 --budget 1k,10k --tasks retrieval --pair effnet-lite0+minilm-l6 --seeds 0 --results /work/main/results/realcheck --no-progress > results/realcheck/logs/effnet_fusemix.log 2>&1

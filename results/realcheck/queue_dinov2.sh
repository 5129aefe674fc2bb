#!/bin/bash
export ALIGNBENCH_DATA=/work/shared/datasets ALIGNBENCH_CACHE=/work/main/.cache/features HF_HUB_OFFLINE=1
cd /work/main
while ! ls -d .cache/features/dinov2-s14/flickr8k-test-* >/dev/null 2>&1; do sleep 10; done
while pgrep -f "encode --pair dinov2-s14" >/dev/null; do sleep 5; done
nice -n 5 .venv/bin/alignbench -v run --methods asif,cca,csa,random,linear --budget 1k,10k --tasks retrieval --pair dinov2-s14+minilm-l6 --seeds 0 --results /work/main/results/realcheck --no-progress > results/realcheck/logs/dinov2_cheap.log 2>&1

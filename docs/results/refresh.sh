#!/bin/bash
# Copy the study, ablation and screening stores (runs/study, runs/ablation-*, runs/screen) into docs/results
# and regenerate the reports, including one report over every study store (overall/). Adapters and teacher-target
# caches stay out of the repository. Run from anywhere: bash docs/results/refresh.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
IA2=${IA2:-.venv/bin/ia2}
export IA2_DATA_DIR=${IA2_DATA_DIR:-../shared/data}
R=docs/results
copy_store() {  # copy_store RUNS_DIR DEST: the store without adapters and target caches
  "$IA2" analyze "$1"
  rm -rf "$2" && mkdir -p "$2"
  cp -r "$1"/{records,analysis,store.json,results.jsonl,units.log} "$2"/
}
copy_store runs/study $R/study/store
"$IA2" report $R/study/store --out $R/study/report
"$IA2" report $R/study/store --select-on eval --out $R/study/report-eval
if [ -d runs/ablation-epochs/records ]; then
  copy_store runs/ablation-epochs $R/ablations/ia2-epochs/store
  "$IA2" report $R/ablations/ia2-epochs/store --out $R/ablations/ia2-epochs/report
  # the study's 50-epoch units with the same model, task, N and lr, for comparison
  "$IA2" report $R/study/store --only model=gemma3-270m --only n=4 --only label_format=words --only lr=1e-3 \
      --out $R/ablations/ia2-epochs/baseline-report
fi
if [ -d runs/ablation-devsplit/records ]; then
  # same model, task, N and lr as ia2-epochs/baseline-report (the reference split), with a stratified dev split
  copy_store runs/ablation-devsplit $R/ablations/dev-split/store
  "$IA2" report $R/ablations/dev-split/store --out $R/ablations/dev-split/report
fi
# Every store of the study as one report (the per model and N summary of docs/REPRODUCTION.md).
"$IA2" report $R/sst2-n4/store $R/agnews-words-n4/store $R/study/store --out $R/overall
rm -rf $R/screen-store && mkdir -p $R/screen-store
cp -r runs/screen/{records,store.json,results.jsonl,units.log} $R/screen-store/
cp runs/screen/screening.md runs/screen/screening.csv $R/

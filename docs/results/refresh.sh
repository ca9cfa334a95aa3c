#!/bin/bash
# Copy the study and screening stores (runs/study, runs/screen) into docs/results and regenerate the reports.
# Adapters and teacher-target caches stay out of the repository. Run from anywhere: bash docs/results/refresh.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
IA2=${IA2:-.venv/bin/ia2}
export IA2_DATA_DIR=${IA2_DATA_DIR:-../shared/data}
"$IA2" analyze runs/study
rm -rf docs/results/study/store && mkdir -p docs/results/study/store
cp -r runs/study/{records,analysis,store.json,results.jsonl,units.log} docs/results/study/store/
"$IA2" report docs/results/study/store --out docs/results/study/report
"$IA2" report docs/results/study/store --select-on eval --out docs/results/study/report-eval
rm -rf docs/results/screen-store && mkdir -p docs/results/screen-store
cp -r runs/screen/{records,store.json,results.jsonl,units.log} docs/results/screen-store/
cp runs/screen/screening.md runs/screen/screening.csv docs/results/

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
report() {  # report OUT STORE... [FLAGS]: a fresh folder, so no file of an older layout (e.g. a renamed table) stays
  local out=$1; shift
  rm -rf "$out"
  "$IA2" report "$@" --out "$out"
}
copy_store runs/study $R/study/store
report $R/study/report $R/study/store
report $R/study/report-eval $R/study/store --select-on eval
report $R/study/report-devacc $R/study/store --select-on dev-acc  # the third rule (ties: the lower dev loss)
if [ -d runs/ablation-epochs/records ]; then
  copy_store runs/ablation-epochs $R/ablations/ia2-epochs/store
  report $R/ablations/ia2-epochs/report $R/ablations/ia2-epochs/store
  # the study's 50-epoch units with the same model, task, N, lr and runs (0-2, the ablation's), for comparison
  report $R/ablations/ia2-epochs/baseline-report $R/study/store --only model=gemma3-270m --only task=sst2 --only n=4 \
      --only label_format=words --only lr=1e-3 --only run=0,1,2
fi
if [ -d runs/ablation-devsplit/records ]; then
  # same model, task, N and lr as ia2-epochs/baseline-report (the reference split), with a stratified dev split
  copy_store runs/ablation-devsplit $R/ablations/dev-split/store
  report $R/ablations/dev-split/report $R/ablations/dev-split/store --only lr=1e-3 --only run=0,1,2
  # 4n: Gemma-3 sst2 words N = 4 over the lr grid with the stratified split, under each selection rule (runs 0-4;
  # the reference split's side is per-task/gemma3-words-n4-sst2-RULE below)
  for rule in dev-loss dev-acc eval; do
    report $R/ablations/dev-split/grid-stratified-$rule $R/ablations/dev-split/store --only model=gemma3-270m \
        --select-on $rule --no-plots
  done
fi
# three cells' filters, for 4z, 4aa and 4ac here and 4q's, 4u's and 4s's reports below
QWEN_SST2_WORDS="--only model=qwen2.5-coder-0.5b --only label_format=words --only n=4 --only task=sst2"
QWEN_SST2_DIGITS="--only model=qwen2.5-coder-0.5b --only label_format=digits --only n=4 --only task=sst2"
GEMMA_SST2_DIGITS="--only model=gemma3-270m --only label_format=digits --only n=4 --only task=sst2"
# 4v and 4w test 4n's stratified dev split on one more cell each, in their own stores, on the runs whose reference
# dev set is single-label (the only ones the split can change; 4v adds run 0 as a check that nothing else does):
# dev_split_pair NAME RUNS_DIR RUNS REFERENCE_STORE FILTERS... writes both splits' reports under each rule
dev_split_pair() {
  local name=$1 runs_dir=$2 runs=$3 ref=$4; shift 4
  [ -d $runs_dir/records ] || return 0
  copy_store $runs_dir $R/ablations/$name/store
  for rule in dev-loss dev-acc eval; do
    report $R/ablations/$name/grid-stratified-$rule $R/ablations/$name/store --only run=$runs --select-on $rule \
        --no-plots
    report $R/ablations/$name/grid-reference-$rule $ref "$@" --only run=$runs --select-on $rule --no-plots
  done
}
# 4v: Gemma-3 finsen words N = 4 (4m's cell, the study store)
dev_split_pair dev-split-finsen runs/ablation-devsplit-finsen 0,3 $R/study/store --only model=gemma3-270m \
    --only label_format=words --only n=4 --only task=finsen
if [ -d runs/ablation-relative/records ]; then
  # the relative IA2 loss beside the study's units of the same settings (the paper's loss): its own columns,
  # with paired tests against SFT only and against the paper's loss; runs 0-2, the runs the ablation has, so the
  # columns compare the same runs when the study's settings gain runs
  copy_store runs/ablation-relative $R/ablations/relative-loss/store
  report $R/ablations/relative-loss/report $R/study/store $R/ablations/relative-loss/store \
      --only model=gemma3-270m,qwen2.5-coder-0.5b --only label_format=words --only lr=1e-3 --only run=0,1,2
fi
if [ -d runs/ablation-capture/records ]; then
  # the residual capture point beside the study's units of the same settings (o_proj capture), as for the
  # relative loss; runs 0-2, the runs the ablation has
  copy_store runs/ablation-capture $R/ablations/residual-capture/store
  report $R/ablations/residual-capture/report $R/study/store $R/ablations/residual-capture/store \
      --only model=gemma3-270m --only task=sst2 --only label_format=words --only lr=1e-3 --only run=0,1,2
fi
# SmolLM2-135M sst2 digits and agnews words N = 4 (sections 2 and 3), each its own store since before runs/study
# existed; their reports keep to the lr 1e-3 they were written about while the learning-rate grid resumes into them
for s in sst2-n4 agnews-words-n4; do
  if [ -d runs/$s/records ]; then
    copy_store runs/$s $R/$s/store
    report $R/$s/report $R/$s/store --only lr=1e-3
  fi
done
# 4w: SmolLM2 agnews words N = 4 (4p's cell, the agnews store above; the trained methods, ICL was not re-run)
dev_split_pair dev-split-agnews runs/ablation-devsplit-agnews 1 $R/agnews-words-n4/store \
    --only method=sft,ia2,ia2-then-sft
# 4z: Qwen2.5-Coder sst2 words N = 4 (4q's cell, the study store), runs 0, 2 and 4 (the three that can differ)
dev_split_pair dev-split-qwen runs/ablation-devsplit-qwen 0,2,4 $R/study/store $QWEN_SST2_WORDS \
    --only method=sft,ia2,ia2-then-sft
# 4aa, 4ab and 4ac: the digit-label sst2 cells at N = 4, runs 0, 2 and 4: Qwen2.5-Coder (4u's cell, the study
# store), SmolLM2 (4r's cell, section 2's store) and Gemma-3 (4s's cell, the study store)
dev_split_pair dev-split-qwen-digits runs/ablation-devsplit-qwen-digits 0,2,4 $R/study/store $QWEN_SST2_DIGITS \
    --only method=sft,ia2,ia2-then-sft
dev_split_pair dev-split-smollm2-digits runs/ablation-devsplit-smollm2-digits 0,2,4 $R/sst2-n4/store \
    --only method=sft,ia2,ia2-then-sft
dev_split_pair dev-split-gemma3-digits runs/ablation-devsplit-gemma3-digits 0,2,4 $R/study/store $GEMMA_SST2_DIGITS \
    --only method=sft,ia2,ia2-then-sft
# The per-task paired tests REPRODUCTION quotes (4b, 4e, 4h, 4m, 4n, 4p-4u, 4x, 4y, 4ad): one combination's rows alone, under
# each rule
P=$R/per-task
rm -rf $P
for rule in dev-loss dev-acc eval; do
  for n in 4 8; do
    for task in sst2 finsen; do
      report $P/gemma3-words-n$n-$task-$rule $R/study/store --only model=gemma3-270m --only label_format=words \
          --only n=$n --only task=$task --select-on $rule --no-plots
    done
  done
done
# The other cells with the grid, under each rule here and at each fixed rate below: 4p, SmolLM2 agnews words N = 4;
# 4q, Qwen2.5-Coder sst2 words N = 4; 4r, SmolLM2's digit-label control (section 2's store); 4s, Gemma-3's;
# 4t, Qwen2.5-Coder finsen words N = 4; 4u, Qwen2.5-Coder sst2 digits N = 4 (the paper's format, ICL-responsive);
# 4x, SmolLM2 agnews words N = 8 (the study store); 4y, SmolLM2's digit-label control at N = 8 (the study store);
# 4ad, Qwen2.5-Coder sst2 digits N = 8 (the study store; under each rule only, while it has few runs)
QWEN_FINSEN_WORDS="--only model=qwen2.5-coder-0.5b --only label_format=words --only n=4 --only task=finsen"
SMOLLM2_AGNEWS_N8="--only model=smollm2-135m --only label_format=words --only n=8 --only task=agnews"
SMOLLM2_SST2_DIGITS_N8="--only model=smollm2-135m --only label_format=digits --only n=8 --only task=sst2"
QWEN_SST2_DIGITS_N8="--only model=qwen2.5-coder-0.5b --only label_format=digits --only n=8 --only task=sst2"
for rule in dev-loss dev-acc eval; do
  report $P/smollm2-words-n4-agnews-$rule $R/agnews-words-n4/store --select-on $rule --no-plots
  report $P/qwen-words-n4-sst2-$rule $R/study/store $QWEN_SST2_WORDS --select-on $rule --no-plots
  report $P/smollm2-digits-n4-sst2-$rule $R/sst2-n4/store --select-on $rule --no-plots
  report $P/gemma3-digits-n4-sst2-$rule $R/study/store $GEMMA_SST2_DIGITS --select-on $rule --no-plots
  report $P/qwen-words-n4-finsen-$rule $R/study/store $QWEN_FINSEN_WORDS --select-on $rule --no-plots
  report $P/qwen-digits-n4-sst2-$rule $R/study/store $QWEN_SST2_DIGITS --select-on $rule --no-plots
  report $P/smollm2-words-n8-agnews-$rule $R/study/store $SMOLLM2_AGNEWS_N8 --select-on $rule --no-plots
  report $P/smollm2-digits-n8-sst2-$rule $R/study/store $SMOLLM2_SST2_DIGITS_N8 --select-on $rule --no-plots
  report $P/qwen-digits-n8-sst2-$rule $R/study/store $QWEN_SST2_DIGITS_N8 --select-on $rule --no-plots
done
report $P/gemma3-words-n8-finsen-runs012 $R/study/store --only model=gemma3-270m --only label_format=words \
    --only n=8 --only task=finsen --only run=0,1,2 --no-plots  # 4h before runs 3-4
# No selection at all: IA2 -> SFT vs SFT only at each learning rate of the grid, over Gemma-3's four grid cells
# (4o), over SmolLM2's agnews cell at N = 4 and 8 (4p, 4x), over Qwen2.5-Coder's sst2 and finsen cells (4q, 4t) and over the sst2 digit
# cells (4r, 4s and 4y, the controls; 4u)
for lr in 1e-4 3e-4 1e-3; do
  report $R/per-lr/gemma3-words-lr$lr $R/study/store --only model=gemma3-270m --only label_format=words --only lr=$lr \
      --no-plots
  report $R/per-lr/smollm2-agnews-words-lr$lr $R/agnews-words-n4/store --only lr=$lr --no-plots
  report $R/per-lr/qwen-sst2-words-lr$lr $R/study/store $QWEN_SST2_WORDS --only lr=$lr --no-plots
  report $R/per-lr/smollm2-sst2-digits-lr$lr $R/sst2-n4/store --only lr=$lr --no-plots
  report $R/per-lr/gemma3-sst2-digits-lr$lr $R/study/store $GEMMA_SST2_DIGITS --only lr=$lr --no-plots
  report $R/per-lr/qwen-finsen-words-lr$lr $R/study/store $QWEN_FINSEN_WORDS --only lr=$lr --no-plots
  report $R/per-lr/qwen-sst2-digits-lr$lr $R/study/store $QWEN_SST2_DIGITS --only lr=$lr --no-plots
  report $R/per-lr/smollm2-agnews-words-n8-lr$lr $R/study/store $SMOLLM2_AGNEWS_N8 --only lr=$lr --no-plots
  report $R/per-lr/smollm2-sst2-digits-n8-lr$lr $R/study/store $SMOLLM2_SST2_DIGITS_N8 --only lr=$lr --no-plots
  # 4t with runs 1-2 only: without run 0 (its IA2 -> SFT SFT stage never fits its dev examples) and runs 3-4
  report $R/per-lr/qwen-finsen-words-runs12-lr$lr $R/study/store $QWEN_FINSEN_WORDS --only lr=$lr --only run=1,2 --no-plots
done
# 4e: Qwen2.5-Coder words N = 4 (sst2 and finsen) at lr 1e-3 and runs 0-2, what it was run at before sst2's grid
report $P/qwen-words-n4-lr1e-3 $R/study/store --only model=qwen2.5-coder-0.5b --only label_format=words \
    --only n=4 --only lr=1e-3 --only run=0,1,2 --no-plots
report $P/qwen-words-n4-sst2 $R/study/store $QWEN_SST2_WORDS --only lr=1e-3 --only run=0,1,2 --no-plots  # 4e's sst2 rows
# Section 4's Qwen2.5-Coder digit rows: lr 1e-3, the rate it was run at before its grid (4u)
report $P/qwen-digits-n4-sst2-lr1e-3 $R/study/store $QWEN_SST2_DIGITS --only lr=1e-3 --only run=0,1,2 --no-plots
# Every store of the study as one report (the per model and N summary of docs/REPRODUCTION.md).
report $R/overall $R/sst2-n4/store $R/agnews-words-n4/store $R/study/store
# ... and with the two other selection rules (the paper's is the evaluation set), for REPRODUCTION's per-rule totals
report $R/overall-devacc $R/sst2-n4/store $R/agnews-words-n4/store $R/study/store --select-on dev-acc --no-plots
report $R/overall-eval $R/sst2-n4/store $R/agnews-words-n4/store $R/study/store --select-on eval --no-plots
rm -rf $R/screen-store && mkdir -p $R/screen-store
cp -r runs/screen/{records,store.json,results.jsonl,units.log} $R/screen-store/
cp runs/screen/screening.md runs/screen/screening.csv $R/

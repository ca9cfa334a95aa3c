#!/bin/bash
# The inverse of refresh.sh for a fresh clone: copy each committed store back to the runs/ folder its sweeps write
# to, so `ia2 sweep ... --out runs/study` resumes (only missing units run) and refresh.sh finds every store again.
# Adapters and teacher-target caches are not committed: `ia2 analyze` keeps the committed LoRA overlap of units
# whose adapters are gone, and teacher targets are recomputed when a unit needs them. Refuses to overwrite runs/.
set -euo pipefail
cd "$(dirname "$0")/../.."
R=docs/results
restore() {  # restore COMMITTED_STORE RUNS_DIR
  if [ -e "$2" ]; then echo "restore.sh: $2 exists; move it away first (nothing was copied to it)" >&2; return 1; fi
  mkdir -p "$(dirname "$2")" && cp -r "$1" "$2" && echo "$1 -> $2"
}
restore $R/study/store runs/study
restore $R/sst2-n4/store runs/sst2-n4
restore $R/agnews-words-n4/store runs/agnews-words-n4
restore $R/ablations/ia2-epochs/store runs/ablation-epochs
restore $R/ablations/dev-split/store runs/ablation-devsplit
restore $R/ablations/dev-split-finsen/store runs/ablation-devsplit-finsen
restore $R/ablations/dev-split-agnews/store runs/ablation-devsplit-agnews
restore $R/ablations/dev-split-qwen/store runs/ablation-devsplit-qwen
restore $R/ablations/dev-split-qwen-digits/store runs/ablation-devsplit-qwen-digits
restore $R/ablations/dev-split-smollm2-digits/store runs/ablation-devsplit-smollm2-digits
restore $R/ablations/dev-split-gemma3-digits/store runs/ablation-devsplit-gemma3-digits
restore $R/ablations/relative-loss/store runs/ablation-relative
restore $R/ablations/residual-capture/store runs/ablation-capture
restore $R/screen-store runs/screen
cp $R/screening.md $R/screening.csv runs/screen/

#!/usr/bin/env bash
# A pre-registered toy study (model_zoo.md: the second and third runs): every run in the
# registered order, N at a time (default 2, one thread each), each trained, then evaluated by
# tools/test.py (final checkpoint: online:ema + online:base, sampling seeds 0 1; iterations 200
# and 400: seed 0). Finished runs (a test_iter_600/metrics.json) are skipped and interrupted
# ones resume from their newest complete checkpoint, so the script can be re-run after a stop.
#
#   bash tools/analysis/run_study.sh [ROOT=work_dirs/study2] [WORKERS=2] [ARCHIVE] [STUDY=3]
#
# STUDY picks the registered job list: 3 (studies 2 and 3: both regimes, then the ablations) or
# 4 (study 4, release-exact: the released regime, then the D2 / D3 decomposition).
#
# ARCHIVE (e.g. the main checkout's docs/study2_runs, written by archive_runs.py): runs finished
# there are skipped too, and so are the runs listed in ARCHIVE/FINISHED ("name seed" lines:
# reported before the archive existed), so a new machine continues where the last one stopped.
# The archive keeps metrics, not weights: a post-hoc run whose standard-RL source is archived
# trains that source again first (same command and seed; compare its metrics with the archived
# ones by hand: nothing here does).
# A run that fails is logged as FAILED with a ROOT/<name>/seed<N>.FAILED marker, and a post-hoc
# run whose source failed fails too instead of waiting for it; re-running retries both.
# Run the script from the frozen worktree of the protocol's commit (copy this file there if it
# is newer), so that the training code is the registered one.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=${1:-work_dirs/study2}
WORKERS=${2:-2}
ARCHIVE=${3:-}
STUDY=${4:-3}
ITERS=600
# paths are taken from the repository root (the cd above)
[[ $WORKERS =~ ^[1-9][0-9]*$ ]] || {
  echo "run_study.sh: WORKERS (2nd argument) must be a positive integer, got '$WORKERS'" >&2
  exit 2; }
[ -z "$ARCHIVE" ] || [ -d "$ARCHIVE" ] || {
  # a mistyped archive would silently train every archived run again (hours)
  echo "run_study.sh: ARCHIVE (3rd argument) '$ARCHIVE' is not a directory under $(pwd):" \
       "give the folder archive_runs.py writes (e.g. docs/study3_runs) or leave it out" >&2
  exit 2; }
[[ $STUDY == 3 || $STUDY == 4 ]] || {
  echo "run_study.sh: STUDY (4th argument) must be 3 or 4, got '$STUDY'" >&2; exit 2; }
mkdir -p "$ROOT"

jobs=()
if [ "$STUDY" == 4 ]; then
  # name config seed: the released regime (seeds 0, 1, 2), then the decomposition (RankE with
  # only D2 or only D3 reverted, seeds 0, 1, 2), then RankE with all three reverted (seed 0:
  # must give study 3's anchor_ema seed 0 again)
  for seed in 0 1 2; do
    jobs+=("grpo_toy configs/ranke/grpo_toy.py $seed"
           "anchor_ema configs/ablation/anchor_ema.py $seed"
           "decoder_recon_only configs/ablation/decoder_recon_only.py $seed"
           "posthoc_decoder configs/study/posthoc_decoder.py $seed")
  done
  for seed in 0 1 2; do
    jobs+=("anchor_ema_no_clamp configs/study/anchor_ema_no_clamp.py $seed"
           "anchor_ema_study3_disc configs/study/anchor_ema_study3_disc.py $seed")
  done
  jobs+=("anchor_ema_study3 configs/study/anchor_ema_study3.py 0")
fi
# name config seed: released regime (seeds 0, 1, 2), then drift-prone, then the ablations
for regime in "" _drift; do
  [ "$STUDY" == 3 ] || break
  for seed in 0 1 2; do
    if [ -z "$regime" ]; then
      jobs+=("grpo_toy configs/ranke/grpo_toy.py $seed"
             "anchor_ema configs/ablation/anchor_ema.py $seed"
             "decoder_recon_only configs/ablation/decoder_recon_only.py $seed")
    else
      for name in grpo_toy anchor_ema decoder_recon_only; do
        jobs+=("${name}_drift configs/study/${name}_drift.py $seed")
      done
    fi
    jobs+=("posthoc_decoder$regime configs/study/posthoc_decoder$regime.py $seed")
  done
done
for cfg in anchor_kl anchor_l2 anchor_none loss_listwise loss_pairwise rank_uniform decoder_only \
           schedule_alternate disc_sees_policy; do
  [ "$STUDY" == 3 ] || break
  jobs+=("$cfg configs/ablation/$cfg.py 0")
done

archived() {  # name seed: finished on an earlier machine (ARCHIVE keeps metrics, not weights)
  [ -n "$ARCHIVE" ] || return 1
  [ -f "$ARCHIVE/$1/seed$2/test_iter_$ITERS/metrics.json" ] && return 0
  # runs reported in model_zoo.md before the archive existed (their work dirs are gone)
  grep -qx "$1 $2" "$ARCHIVE/FINISHED" 2>/dev/null
}

run_job() {  # name config seed [retrain]: retrain = train it here even if archived
  local name=$1 config=$2 seed=$3 retrain=${4:-} dir="$ROOT/$1/seed$3" extra=()
  mkdir -p "$ROOT/$name"
  [ -f "$dir/test_iter_$ITERS/metrics.json" ] && return 0
  rm -f "$dir.FAILED"  # a failure of an earlier start; this start tries again
  [ -z "$retrain" ] && archived "$name" "$seed" && return 0
  if [[ $name == posthoc_decoder* ]]; then  # the same seed's finished standard-RL run
    local source_name="grpo_toy${name#posthoc_decoder}"
    local source="$ROOT/$source_name/seed$seed/iter_$ITERS.pth"
    if [ ! -f "$source" ] && archived "$source_name" "$seed"; then
      # its weights left with the old machine: train it again here (same command, same seed;
      # the archived metrics then check that it came out the same)
      echo "$(date +%H:%M:%S) $source_name seed $seed is archived without its weights:" \
           "training it again as the source of $name"
      local job
      for job in "${jobs[@]}"; do
        [[ $job == "$source_name "*" $seed" ]] && { run_job $job retrain || return 1; }
      done
    fi
    until [ -f "$source" ] && [ -f "$(dirname "$source")/test_iter_$ITERS/metrics.json" ]; do
      # a source that failed (in another worker) never appears: fail too, instead of waiting
      [ -f "$(dirname "$source").FAILED" ] && {
        echo "FAILED $name seed $seed: its source $source_name seed $seed failed" \
             "(see $(dirname "$source").train.log / .test.log)"; touch "$dir.FAILED"; return 1; }
      sleep 30
    done
    extra=("load_from=$source")
  fi
  local resume=()
  ls "$dir"/iter_*.pth >/dev/null 2>&1 && resume=(--resume auto)
  echo "$(date +%H:%M:%S) start $name seed $seed"
  python tools/train.py "$config" --seed "$seed" --work-dir "$dir" "${resume[@]}" \
    --cfg-options train_cfg.max_iters=$ITERS train_cfg.val_begin=1000000 \
    default_hooks.checkpoint.interval=200 default_hooks.checkpoint.max_keep_ckpts=3 \
    "${extra[@]}" > "$dir.train.log" 2>&1 || {
      echo "FAILED $name seed $seed (see $dir.train.log)"; touch "$dir.FAILED"; return 1; }
  local cfg_dump="$dir/$(basename "$config")"
  python tools/test.py "$cfg_dump" "$dir/iter_$ITERS.pth" --combos online:ema online:base \
    --seeds 0 1 --no-progress > "$dir.test.log" 2>&1 || {
      echo "FAILED test $name seed $seed (see $dir.test.log)"; touch "$dir.FAILED"; return 1; }
  for it in 200 400; do
    python tools/test.py "$cfg_dump" "$dir/iter_$it.pth" --combos online:ema online:base \
      --seeds 0 --no-progress >> "$dir.test.log" 2>&1
  done
  echo "$(date +%H:%M:%S) done $name seed $seed"
}

# a shared counter hands out the jobs in order
counter="$ROOT/.next_job"
echo 0 > "$counter"
worker() {
  while true; do
    local i
    i=$(flock "$counter" bash -c 'i=$(cat "$0"); echo $((i + 1)) > "$0"; echo $i' "$counter")
    [ "$i" -ge "${#jobs[@]}" ] && break
    run_job ${jobs[$i]}
  done
}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
[ -d "$ROOT/base" ] || { [ -n "$ARCHIVE" ] && [ -f "$ARCHIVE/base/metrics.json" ]; } || python tools/test.py configs/ranke/ranke_toy.py --base --seeds 0 1 2 \
  --out-dir "$ROOT/base" --no-progress > "$ROOT/base.test.log" 2>&1
for w in $(seq "$WORKERS"); do worker & done
wait

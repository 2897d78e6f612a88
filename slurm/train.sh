#!/usr/bin/env bash
# Train on one node with all of its GPUs (MirroredStrategy); resume after requeue.
#
#   mkdir -p logs
#   TRAIN_SITE=br35h=/data/br35h VAL_SITE=nav=/data/nav TEST_SITES=mos=/data/mos \
#       sbatch slurm/train.sh --epochs 20          # extra arguments go to `train`
#   sbatch --gres=none --cpus-per-task=8 --mem=16G slurm/train.sh       # a CPU-only node
#
# Five minutes before the time limit SLURM sends USR1 to this shell, which passes it to the
# training process; that process saves its state and exits with status 3, and this shell
# requeues the job. The requeued job (same job id, so the same OUTPUT) resumes at the step it
# reached, in the same MLflow run. Settings and variables: slurm/README.md.
#
#SBATCH --job-name=brainmri
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gres=gpu:4
#SBATCH --cpus-per-task=16
#SBATCH --mem=64G
#SBATCH --time=08:00:00
#SBATCH --output=logs/brainmri-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@300

EXIT_REQUEUE=3
job_id="${SLURM_JOB_ID:-local}"
submit_dir="${SLURM_SUBMIT_DIR:-$PWD}"

log() {
    echo "[$(date '+%F %T')] train.sh: $*" >&2
}

fail() {
    log "error: $*"
    exit 2
}

# ---- software: modules, then the virtualenv -------------------------------------------------
if [ -n "${BRAINMRI_MODULES:-}" ]; then
    if ! type module >/dev/null 2>&1; then
        for init in /etc/profile.d/lmod.sh /etc/profile.d/modules.sh; do
            [ -f "$init" ] && . "$init"
        done
    fi
    module load $BRAINMRI_MODULES || fail "module load $BRAINMRI_MODULES failed"
fi
venv="${BRAINMRI_VENV-$submit_dir/.venv}"
if [ -n "$venv" ]; then
    if [ -f "$venv/bin/activate" ]; then
        . "$venv/bin/activate"
    elif [ -n "${BRAINMRI_VENV:-}" ]; then
        fail "BRAINMRI_VENV=$BRAINMRI_VENV has no bin/activate"
    fi
fi
command -v python >/dev/null 2>&1 || fail "no python on PATH (set BRAINMRI_VENV or BRAINMRI_MODULES)"

# ---- the run --------------------------------------------------------------------------------
TRAIN_SITE="${TRAIN_SITE:-br35h=data/br35h}"
VAL_SITE="${VAL_SITE:-nav=data/nav}"
TEST_SITES="${TEST_SITES:-mos=data/mos}"
OUTPUT="${OUTPUT:-runs/brainmri-$job_id}"
MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-sqlite:///$submit_dir/mlflow.db}"
WEIGHTS="${WEIGHTS:-imagenet}"
EXPERIMENT="${EXPERIMENT:-brainmri}"
BRAINMRI_MAX_REQUEUES="${BRAINMRI_MAX_REQUEUES:-20}"
export PYTHONUNBUFFERED=1
if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$SLURM_CPUS_PER_TASK}"
    export TF_NUM_INTRAOP_THREADS="${TF_NUM_INTRAOP_THREADS:-$SLURM_CPUS_PER_TASK}"
fi

test_arguments=()
for site in $TEST_SITES; do
    test_arguments+=(--test-site "$site")
done
arguments=(train --train-site "$TRAIN_SITE" --val-site "$VAL_SITE" "${test_arguments[@]}"
           --output "$OUTPUT" --weights "$WEIGHTS" --tracking-uri "$MLFLOW_TRACKING_URI"
           --experiment "$EXPERIMENT" --run-name "${SLURM_JOB_NAME:-brainmri}-$job_id" "$@")

log "job $job_id on $(hostname), restart ${SLURM_RESTART_COUNT:-0}, GPUs ${CUDA_VISIBLE_DEVICES:-none}, $(command -v python)"
log "python -m train_distributed ${arguments[*]}"

# ---- run, pass warning signals on, requeue on exit status 3 ---------------------------------
# Bash runs a trap only between commands, so python runs in the background and `wait` is
# repeated: a trapped signal interrupts `wait` with a status above 128 while python still runs.
python_pid=""
forwarded=""
forward() {
    forwarded="$1"
    log "received SIG$1; passing it to the training process"
    [ -n "$python_pid" ] && kill -s "$1" "$python_pid" 2>/dev/null
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM

python -m train_distributed "${arguments[@]}" &
python_pid=$!
while :; do
    wait "$python_pid"
    status=$?
    if [ "$status" -le 128 ] || ! kill -0 "$python_pid" 2>/dev/null; then
        break
    fi
done
log "training process exited with status $status"

# Status 3: state saved, run me again. A signal that arrived before python installed its
# handler kills it (status 128 + signal); the last saved epoch is on disk, so requeue too.
if [ "$status" -eq "$EXIT_REQUEUE" ] || { [ -n "$forwarded" ] && [ "$status" -gt 128 ]; }; then
    if [ -z "${SLURM_JOB_ID:-}" ]; then
        log "not running under SLURM: run the same command again to resume"
        exit "$EXIT_REQUEUE"
    fi
    if [ "${SLURM_RESTART_COUNT:-0}" -ge "$BRAINMRI_MAX_REQUEUES" ]; then
        log "already restarted ${SLURM_RESTART_COUNT} times (BRAINMRI_MAX_REQUEUES): not requeueing"
        exit "$EXIT_REQUEUE"
    fi
    log "requeueing job $SLURM_JOB_ID; it resumes from $OUTPUT"
    scontrol requeue "$SLURM_JOB_ID" || exit "$EXIT_REQUEUE"
    exit 0
fi
exit "$status"

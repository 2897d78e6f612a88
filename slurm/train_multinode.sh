#!/usr/bin/env bash
# Train on several nodes: one task (one python) per node, MultiWorkerMirroredStrategy over all
# of their GPUs; resume after requeue.
#
#   mkdir -p logs
#   TRAIN_SITE=br35h=/data/br35h VAL_SITE=nav=/data/nav TEST_SITES=mos=/data/mos \
#       sbatch --nodes=4 slurm/train_multinode.sh --epochs 20
#
# `srun` starts one training process per task; each finds its peers through SLURM's
# variables (SlurmClusterResolver) on ports BRAINMRI_PORT_BASE, +1, ... per node. OUTPUT
# must be on a filesystem every node sees; only the first task writes files and logs to
# MLflow. Signals and requeue work as in train.sh. Settings and variables: slurm/README.md.
#
#SBATCH --job-name=brainmri-mn
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
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
    echo "[$(date '+%F %T')] train_multinode.sh: $*" >&2
}

fail() {
    log "error: $*"
    exit 2
}

[ -n "${SLURM_JOB_ID:-}" ] || fail "submit this script with sbatch (it needs srun)"

# ---- software: modules, then the virtualenv (srun passes the environment to every task) -----
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
# A port range per job (below the usual ephemeral ports), so jobs sharing a node do not collide.
export BRAINMRI_PORT_BASE="${BRAINMRI_PORT_BASE:-$((15000 + SLURM_JOB_ID % 15000))}"
export PYTHONUNBUFFERED=1
cpus_per_task="${SLURM_CPUS_PER_TASK:-1}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$cpus_per_task}"
export TF_NUM_INTRAOP_THREADS="${TF_NUM_INTRAOP_THREADS:-$cpus_per_task}"

test_arguments=()
for site in $TEST_SITES; do
    test_arguments+=(--test-site "$site")
done
arguments=(train --train-site "$TRAIN_SITE" --val-site "$VAL_SITE" "${test_arguments[@]}"
           --output "$OUTPUT" --weights "$WEIGHTS" --tracking-uri "$MLFLOW_TRACKING_URI"
           --experiment "$EXPERIMENT" --run-name "${SLURM_JOB_NAME:-brainmri}-$job_id" "$@")

log "job $job_id on ${SLURM_JOB_NODELIST:-?} (${SLURM_NTASKS:-?} tasks), restart ${SLURM_RESTART_COUNT:-0}, ports from $BRAINMRI_PORT_BASE, $(command -v python)"
log "srun python -m train_distributed ${arguments[*]}"

# ---- run, pass warning signals on, requeue on exit status 3 ---------------------------------
# srun passes USR1 and TERM on to every task. Bash runs a trap only between commands, so srun
# runs in the background and `wait` is repeated while srun still runs.
srun_pid=""
forwarded=""
forward() {
    forwarded="$1"
    log "received SIG$1; passing it to the training processes"
    [ -n "$srun_pid" ] && kill -s "$1" "$srun_pid" 2>/dev/null
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM

# --cpus-per-task again: srun of SLURM 22.05 does not take it from the job.
srun --kill-on-bad-exit=1 --cpus-per-task="$cpus_per_task" python -m train_distributed "${arguments[@]}" &
srun_pid=$!
while :; do
    wait "$srun_pid"
    status=$?
    if [ "$status" -le 128 ] || ! kill -0 "$srun_pid" 2>/dev/null; then
        break
    fi
done
log "training processes exited with status $status"

# Status 3: state saved, run me again (srun reports the highest status of its tasks).
if [ "$status" -eq "$EXIT_REQUEUE" ] || { [ -n "$forwarded" ] && [ "$status" -gt 128 ]; }; then
    if [ "${SLURM_RESTART_COUNT:-0}" -ge "$BRAINMRI_MAX_REQUEUES" ]; then
        log "already restarted ${SLURM_RESTART_COUNT} times (BRAINMRI_MAX_REQUEUES): not requeueing"
        exit "$EXIT_REQUEUE"
    fi
    log "requeueing job $SLURM_JOB_ID; it resumes from $OUTPUT"
    scontrol requeue "$SLURM_JOB_ID" || exit "$EXIT_REQUEUE"
    exit 0
fi
exit "$status"

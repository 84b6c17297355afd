#!/usr/bin/env bash
# Submit and manage reaemb jobs on a running Ray cluster (see docs/CLUSTER.md).
#
#   cluster/submit.sh submit [CONFIG] [key.sub=value ...]   submit `reaemb run`, print the job id
#   cluster/submit.sh status JOB_ID                          PENDING / RUNNING / SUCCEEDED / FAILED / STOPPED
#   cluster/submit.sh logs JOB_ID                            follow the driver log
#   cluster/submit.sh stop JOB_ID                            stop the job (actors are torn down with it)
#   cluster/submit.sh list                                   every job on the cluster
#
# RAY_ADDRESS is the dashboard URL: after `ray dashboard cluster/aws.yaml` (an SSH tunnel; the dashboard listens
# on the head's loopback) or `kubectl port-forward svc/reaemb-head-svc 8265:8265` it is http://127.0.0.1:8265
# (the default here). A cluster with token authentication (the KubeRay manifests) needs RAY_AUTH_TOKEN
# exported first (docs/CLUSTER.md says where it is).
# output_dir must be storage every node reaches (s3://, gs://, or file:// on a shared mount), not a local path.
set -euo pipefail
export RAY_ADDRESS="${RAY_ADDRESS:-http://127.0.0.1:8265}"
cd "$(dirname "$0")/.."  # the repository root is the job's working dir

cmd="${1:-}"; shift || true
case "$cmd" in
  submit)
    config="${1:-configs/paper_gpu.yaml}"; shift || true
    # --working-dir uploads this tree (minus .gitignore'd outputs); the job runs inside it on the head.
    # --runtime-env-json adds what the workers need beyond the working dir (reaemb_ray.runtime.init_ray adds
    # no runtime env of its own when it joins a cluster, so the two never clash).
    ray job submit --no-wait \
      --working-dir . \
      --runtime-env-json '{"excludes": ["outputs/", "*.gguf", "*.safetensors", ".git/"], "env_vars": {"PYTHONWARNINGS": "ignore::DeprecationWarning", "TOKENIZERS_PARALLELISM": "false"}}' \
      --submission-id "reaemb-$(date +%Y%m%d-%H%M%S)-$RANDOM" \
      -- reaemb run --config "$config" "$@"
    ;;
  status) ray job status "$1" ;;
  logs)   ray job logs --follow "$1" ;;
  stop)   ray job stop "$1" ;;
  list)   ray job list ;;
  *)
    sed -n '2,14p' "$0"
    exit 2
    ;;
esac

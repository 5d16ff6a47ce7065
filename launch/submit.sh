#!/usr/bin/env bash
# Submit a dist_unlearn job to a running Ray cluster with `ray job submit`.
#
#   launch/submit.sh [options] --config FILE [--workers N] [--out DIR]
#   launch/submit.sh [options] -- SUBCOMMAND [ARGS...]      (any `dist-unlearn` subcommand, e.g. -- bench)
#
# The first form runs  python -m dist_unlearn run --config FILE [--workers N] [--out DIR]  on the cluster;
# the second runs  python -m dist_unlearn SUBCOMMAND ARGS...  instead. The current directory is uploaded as
# the job's working directory (Ray puts it first on PYTHONPATH, so the checked-out code and configs are what
# runs; .gitignore'd paths, .git and .venv are not uploaded).
#
# Options:
#   --address URL        job server (the head's dashboard), default $RAY_ADDRESS or http://127.0.0.1:8265
#   --working-dir DIR    directory to upload, default .
#   --python EXE         interpreter on the cluster, default python
#   --env KEY=VALUE      environment variable for the job and its actors (repeatable)
#   --submission-id ID   name the job (default: Ray generates one)
#   --no-wait            return after submitting instead of streaming the logs until the job ends
#   --dry-run            print the ray command instead of running it
#   -h, --help           this text
#
# Exit status: that of `ray job submit` (0 when the job succeeded, 1 when it failed), 2 for a usage error.
# Follow a --no-wait job with: ray job logs --address URL --follow ID ; stop it with: ray job stop ID.
set -euo pipefail

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "submit.sh: $*" >&2; echo "Run launch/submit.sh --help for usage." >&2; exit 2; }

address="${RAY_ADDRESS:-http://127.0.0.1:8265}"
working_dir="."
python="python"
config=""
workers=""
out=""
submission_id=""
no_wait=0
dry_run=0
env_pairs=()
passthrough=()

while [[ $# -gt 0 ]]; do
  case "$1" in
    --address) [[ $# -ge 2 ]] || die "--address needs a URL"; address="$2"; shift 2 ;;
    --working-dir) [[ $# -ge 2 ]] || die "--working-dir needs a directory"; working_dir="$2"; shift 2 ;;
    --python) [[ $# -ge 2 ]] || die "--python needs an executable"; python="$2"; shift 2 ;;
    --env) [[ $# -ge 2 && "$2" == *=* ]] || die "--env needs KEY=VALUE"; env_pairs+=("$2"); shift 2 ;;
    --submission-id) [[ $# -ge 2 ]] || die "--submission-id needs an id"; submission_id="$2"; shift 2 ;;
    --config) [[ $# -ge 2 ]] || die "--config needs a file"; config="$2"; shift 2 ;;
    --workers) [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]*$ ]] || die "--workers needs a positive integer"; workers="$2"; shift 2 ;;
    --out) [[ $# -ge 2 ]] || die "--out needs a directory"; out="$2"; shift 2 ;;
    --no-wait) no_wait=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; passthrough=("$@"); break ;;
    *) die "unknown option '$1'" ;;
  esac
done

[[ -d "$working_dir" ]] || die "working directory '$working_dir' does not exist"

if [[ ${#passthrough[@]} -gt 0 ]]; then
  [[ -z "$config$workers$out" ]] || die "--config/--workers/--out build a 'run' command; give them after -- instead"
  job=("$python" -m dist_unlearn "${passthrough[@]}")
else
  [[ -n "$config" ]] || die "give --config FILE (a YAML under configs/), or a subcommand after --"
  [[ -f "$working_dir/$config" ]] || die "config '$config' is not a file under the working directory '$working_dir'"
  job=("$python" -m dist_unlearn run --config "$config")
  [[ -z "$workers" ]] || job+=(--workers "$workers")
  [[ -z "$out" ]] || job+=(--out "$out")
fi

# runtime_env: files not to upload, plus the job's environment variables.
runtime_env_json=$(python3 - "${env_pairs[@]+"${env_pairs[@]}"}" <<'PY'
import json, sys
env = dict(pair.split("=", 1) for pair in sys.argv[1:])
env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
env.setdefault("TOKENIZERS_PARALLELISM", "false")
excludes = [".git", ".venv", "outputs", "runs", ".whl", ".gl", "**/__pycache__", ".pytest_cache", ".hypothesis"]
print(json.dumps({"env_vars": env, "excludes": excludes}, separators=(",", ":")))
PY
)

cmd=(ray job submit --address "$address" --working-dir "$working_dir" --runtime-env-json "$runtime_env_json")
[[ -z "$submission_id" ]] || cmd+=(--submission-id "$submission_id")
[[ $no_wait -eq 0 ]] || cmd+=(--no-wait)
cmd+=(-- "${job[@]}")

if [[ $dry_run -eq 1 ]]; then
  python3 -c 'import shlex, sys; print(shlex.join(sys.argv[1:]))' "${cmd[@]}"
  exit 0
fi
command -v ray >/dev/null || die "'ray' is not on PATH (pip install 'ray[default]', or activate the venv)"
exec "${cmd[@]}"

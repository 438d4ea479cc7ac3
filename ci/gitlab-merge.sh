#!/bin/sh
# GitLab's merge job: every shard's artifacts/ into one JUnit, summary.md and report.html,
# with diff.md against the baseline: the lab-merge artifacts of the default branch's last
# successful pipeline (a night with a failure fails the pipeline, so the baseline stays the
# last good night), fetched through the job artifacts API by ref (it searches child pipelines
# too) with the job token, or LAB_BASELINE_TOKEN (a masked project access token, read_api)
# where the instance does not accept it.  LAB_BASELINE_DIR, where set, is such an artifact
# directory already at hand (make ci-local keeps the last good local night's there).
# No baseline yet (the first night, expired artifacts): the merge runs without a diff.
set -eu
export PIP_CACHE_DIR="$PWD/.cache/pip"  # restored and saved by the CI engine
sh ci/need-make.sh
make ci-merge-setup
if [ -n "${LAB_BASELINE_DIR:-}" ]; then
  if [ -d "$LAB_BASELINE_DIR/artifacts" ]; then
    mkdir -p baseline && cp -a "$LAB_BASELINE_DIR/artifacts" baseline/
  else
    echo "no baseline: $LAB_BASELINE_DIR has no artifacts/ (no good night yet)"
  fi
elif [ -n "${CI_API_V4_URL:-}" ]; then
  if [ -n "${LAB_BASELINE_TOKEN:-}" ]; then auth="PRIVATE-TOKEN: $LAB_BASELINE_TOKEN"; else auth="JOB-TOKEN: ${CI_JOB_TOKEN:-}"; fi
  url="$CI_API_V4_URL/projects/$CI_PROJECT_ID/jobs/artifacts/$CI_DEFAULT_BRANCH/download?job=lab-merge"
  if curl --fail --silent --show-error --location --max-time 300 --header "$auth" --output baseline.zip "$url"; then
    python3 -m zipfile -e baseline.zip baseline
  else
    echo "no baseline: no successful nightly on $CI_DEFAULT_BRANCH with lab-merge artifacts"
  fi
fi
if [ -d baseline/artifacts ]; then
  .venv/bin/labctl report merge artifacts --out merged --baseline baseline/artifacts
else
  .venv/bin/labctl report merge artifacts --out merged
fi
